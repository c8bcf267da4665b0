// SPDX-License-Identifier: MIT
/*
 * CPU faults served by the faulting thread itself (UHMM_FAULTS_IN_THREAD:
 * uhmm_set_fault_mode(), or UHMM_FAULTS=thread in the environment).
 *
 * Why: a fault the service threads serve costs two wake-ups, the service
 * thread's and then the faulting thread's, and the kernel wakes every
 * thread polling the userfaultfd, on every CPU (docs/performance.md). With
 * UFFD_FEATURE_SIGBUS the kernel queues nothing: the faulting thread gets
 * SIGBUS (BUS_ADRERR, at the address) at once, and the handler here serves
 * the fault on that thread, as the service thread would (devpriv.c:
 * uhmm_fault_in_thread()). The driver's migrate_to_ram() runs on the
 * faulting thread, as the kernel runs it in the faulting task; when the
 * handler returns, the access runs again. Nobody sleeps, nobody is woken.
 *
 * What it changes: the feature is the userfaultfd's, for every fault, so a
 * kernel-mode access (a system call's copy) to a device page fails with
 * EFAULT instead of waiting, as in user-mode-only mode. The service threads
 * stay: they read the events (REMOVE, UNMAP, REMAP), which are no faults.
 *
 * The handler's rules (docs/architecture.md, "Faults in the faulting
 * thread"):
 *  - it serves a SIGBUS only if it is BUS_ADRERR in a range uhmm registered;
 *    any other (a poisoned page's BUS_MCEERR_AR, a file mapping's end, a
 *    kill()) goes to the handler installed before uhmm's, or to the default
 *    action, which ends the process as it would have without uhmm;
 *  - it is installed with SA_NODEFER: a driver's migrate_to_ram() that
 *    touches another device page faults again, and is served again;
 *  - it runs uhmm's own fault path, which takes uhmm's mutexes and
 *    allocates from uhmm's own memory (kmem.c), never malloc(): the thread
 *    it interrupts was touching the program's memory, where uhmm never
 *    holds one of them; a driver's migrate_to_ram() must keep to the same
 *    (it interrupts whatever lock the faulting code holds);
 *  - a page a migration holds: it waits for the claim's release (10 ms at
 *    most) and returns; the access faults again;
 *  - a fault that finds nothing to do, again and again at one address
 *    (SPIN_LIMIT times and for SPIN_NS at least: a race that a moment
 *    settles, such as an mremap() whose event is still unread, does not
 *    count), is not uhmm's to serve: it is handed on, and ends the process
 *    rather than spin for ever.
 */
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "internal.h"

#define SPIN_LIMIT 10000	/* faults at one address in a row, each with nothing to do, */
#define SPIN_NS 1000000000ULL	/* ... for this long at least */

static struct sigaction prev_action;	/* what uhmm's handler replaced */
static atomic_int installs;		/* mms that installed it (a fork child's makes a second) */
static __thread uint64_t spin_addr, spin_since;
static __thread unsigned int spins;

/* Was the access a write? x86-64 says so in the page-fault error code; elsewhere, assume it was. */
static bool fault_was_write(const void *uc)
{
#if defined(__x86_64__)
	return (((const ucontext_t *)uc)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
	(void)uc;
	return true;
#endif
}

/*
 * Hand the signal to the handler uhmm's replaced. The default action
 * (or SIG_IGN, which the kernel does not honour for a fault): reset it and
 * return, so that the access faults again and ends the process at the
 * faulting instruction; a signal that was sent, not caused, is raised
 * again instead.
 */
static void chain(int sig, siginfo_t *si, void *uc)
{
	if (prev_action.sa_flags & SA_SIGINFO) {
		prev_action.sa_sigaction(sig, si, uc);
		return;
	}
	if (prev_action.sa_handler != SIG_DFL && prev_action.sa_handler != SIG_IGN) {
		prev_action.sa_handler(sig);
		return;
	}
	signal(SIGBUS, SIG_DFL);
	if (si->si_code <= 0)	/* SI_USER, SI_TKILL, SI_QUEUE: sent */
		raise(SIGBUS);
}

/* Serve a fault at @addr in this thread: true if uhmm served it (or will on the retry). */
static bool serve(uint64_t addr, bool write)
{
	uint64_t page = uhmm_align_down(addr, UHMM_PAGE_SIZE);
	struct uhmm_mm *mm = uhmm_mm_tryget();
	uint64_t t0 = uhmm_now_ns(), t1;
	pid_t tid;
	int ret;

	if (!mm)
		return false;
	if (!mm->faults_in_thread || uhmm_in_service_thread()) {
		uhmm_mm_put(mm);
		return false;
	}
	tid = (pid_t)syscall(SYS_gettid);
	ret = uhmm_fault_in_thread(mm, page, write, tid);
	if (ret == -EBUSY)
		uhmm_dp_wait_unclaimed(mm, page);
	t1 = uhmm_now_ns();
	if (ret != -ENOENT) {	/* counted as the service thread counts the faults it serves */
		uhmm_stat_add(UHMM_STAT(faults), 1);
		uhmm_stat_add(UHMM_STAT(fault_ns), t1 - t0);
		if (uhmm_tracing())
			uhmm_trace_span("fault", "fault", t0, t1,
					"\"addr\":\"%#llx\",\"kind\":\"in-thread\",\"thread\":%d",
					(unsigned long long)addr, (int)tid);
	}
	uhmm_mm_put(mm);
	if (ret == -ENOENT)
		return false;
	if (ret != -EAGAIN || page != spin_addr) {
		spin_addr = ret == -EAGAIN ? page : 0;
		spin_since = t1;
		spins = 0;
		return true;
	}
	sched_yield();	/* whatever changes the page meanwhile runs first */
	if (++spins < SPIN_LIMIT || t1 - spin_since < SPIN_NS)
		return true;
	uhmm_log(UHMM_LOG_ERR, "uhmm: a fault at %#llx came back %u times with nothing to serve: not uhmm's",
		 (unsigned long long)addr, spins);
	spins = 0;
	return false;
}

UHMM_EXPORT int uhmm_handle_sigbus(const siginfo_t *si, void *ucontext)
{
	int saved_errno = errno;
	bool served = si && ucontext && si->si_signo == SIGBUS && si->si_code == BUS_ADRERR &&
		      serve((uintptr_t)si->si_addr, fault_was_write(ucontext));

	errno = saved_errno;
	return served;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	if (!uhmm_handle_sigbus(si, uc))
		chain(sig, si, uc);
}

/*
 * Install the handler before the mm registers anything. A fork child that
 * makes an mm of its own finds it installed already (dispositions survive
 * fork()): what it replaced stays the program's.
 */
void uhmm_thread_faults_start(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK };
	struct sigaction cur;

	sigemptyset(&sa.sa_mask);
	if (atomic_fetch_add(&installs, 1) == 0 && !(sigaction(SIGBUS, NULL, &cur) == 0 &&
						     (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus))
		sigaction(SIGBUS, &sa, &prev_action);
}

/* The mm is gone (nothing registered): give the program its handler back, if uhmm's is still in place. */
void uhmm_thread_faults_stop(void)
{
	struct sigaction cur;

	if (atomic_fetch_sub(&installs, 1) != 1)
		return;
	if (sigaction(SIGBUS, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)
		sigaction(SIGBUS, &prev_action, NULL);
}
