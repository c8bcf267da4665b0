// SPDX-License-Identifier: MIT
/*
 * The service threads (the shape of QEMU's postcopy and CRIU's lazy-pages
 * handlers, with the reader and the worker made roles that threads take
 * in turn, a leader/followers pool):
 *
 *  - reading: any service thread that wakes reads the userfaultfd into the
 *    queue; while reading it never allocates from the program, frees, or
 *    takes a lock other than mm->lock;
 *  - the worker role: one thread at a time dispatches the queue in order:
 *    events to the interval notifiers (driver callbacks), faults to their
 *    handlers. A thread that queued messages and finds no worker takes the
 *    role itself, so a fault is served by the thread that read it.
 *
 * Why roles: a thread that raises an event on a registered range (madvise,
 * munmap, a free() that trims a heap, a thread stack released at exit)
 * blocks until the event is *read*. The worker runs driver code and frees
 * memory, so it may raise events; with two threads or more, one that holds
 * no worker role always reads, and unblocks it.
 *
 * Why one per CPU, pinned: a fault wakes every service thread polling; the
 * one pinned to the faulting CPU runs there as soon as the faulting thread
 * sleeps (no inter-processor wake-up, which costs tens of microseconds on a
 * VM), serves the fault and wakes the faulting thread on the same CPU. The
 * others find nothing to read. With more CPUs than UHMM_SERVICE_MAX the
 * threads are not pinned (UHMM_SERVICE_THREADS and UHMM_SERVICE_PIN=0
 * choose otherwise).
 *
 * Synchronisation with the rest of uhmm (mm->lock): @reading is set while
 * a thread is in read() (one at a time: the queue keeps the kernel's
 * order); the kernel wakes the thread that caused an event
 * during that read(); @ev_queued counts messages queued, @ev_done those
 * handled. uhmm_service_sync() waits until every message read so far is
 * handled, so a thread that saw munmap() return and then syncs knows its
 * event was handled.
 */
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

#define QUEUE_MSGS 4096			/* grows by doubling when full */
#define STACK_SIZE (1UL << 20)
#define GUARD_SIZE UHMM_PAGE_SIZE

static __thread bool in_service;

bool uhmm_in_service_thread(void)
{
	return in_service;
}

/* ---- memory the service threads use: uhmm's own (kmem.c), never the program's ---- */

/* A stack with a guard page at its low end; uhmm_kfree() gives the block fresh memory. */
static void *stack_alloc(void)
{
	char *p = uhmm_kmalloc(STACK_SIZE);

	if (p && syscall(SYS_mprotect, p, GUARD_SIZE, PROT_NONE)) {
		uhmm_kfree(p);
		return NULL;
	}
	return p;
}

/* Double the queue. Called by a reading thread with mm->lock held. */
static int queue_grow(struct uhmm_mm *mm)
{
	size_t cap = mm->q_cap * 2;
	struct uffd_msg *q = uhmm_kmalloc(cap * sizeof(*q));

	if (!q)
		return -ENOMEM;
	for (size_t i = 0; i < mm->q_len; i++)
		q[i] = mm->q[(mm->q_head + i) % mm->q_cap];
	uhmm_kfree(mm->q);
	mm->q = q;
	mm->q_cap = cap;
	mm->q_head = 0;
	return 0;
}

static void enqueue(struct uhmm_mm *mm, const struct uffd_msg *msgs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (mm->q_len == mm->q_cap && queue_grow(mm)) {
			uhmm_log(UHMM_LOG_ERR, "uhmm: event queue full and cannot grow: event lost");
			continue;
		}
		mm->q[(mm->q_head + mm->q_len) % mm->q_cap] = msgs[i];
		mm->q_len++;
		mm->ev_queued++;
	}
}

/* ---- reading ---- */

enum wake_reason { WAKE_MSGS, WAKE_KICK, WAKE_IDLE, WAKE_STOP, WAKE_ERR };

/*
 * Wait for messages, a kick (work queued while the worker role was paused)
 * or the stop signal; with deferred faults, no longer than a millisecond.
 * On the stop signal the threads keep reading until the userfaultfd is
 * empty: a thread may still be waiting for its event to be read.
 */
static enum wake_reason service_poll(struct uhmm_mm *mm)
{
	struct pollfd p[3] = { { .fd = mm->uffd, .events = POLLIN },
			       { .fd = mm->stop_efd, .events = POLLIN },
			       { .fd = mm->kick_efd, .events = POLLIN } };
	uint64_t kicks;
	int timeout, n;

	pthread_mutex_lock(&mm->lock);
	timeout = mm->n_deferred ? 1 : -1;
	pthread_mutex_unlock(&mm->lock);
	while ((n = poll(p, 3, timeout)) < 0)
		if (errno != EINTR)
			return WAKE_ERR;
	if (!n)
		return WAKE_IDLE;
	if (p[0].revents & (POLLERR | POLLNVAL))
		return WAKE_ERR;
	if ((p[2].revents & POLLIN) && read(mm->kick_efd, &kicks, sizeof(kicks)) < 0)
		kicks = 0;	/* another thread took the kick: either may run the worker role */
	if (p[0].revents & POLLIN)
		return WAKE_MSGS;
	return p[1].revents ? WAKE_STOP : WAKE_KICK;
}

/*
 * Read a batch into the queue, or return -EBUSY at once if another thread
 * is reading: it takes what this one was woken for, and waiting for it
 * (a futex wake-up across CPUs) would cost the fault path more than going
 * back to poll() (which returns at once until that read has emptied the
 * userfaultfd). One thread reads at a time and queues before the next
 * reads: two reads queued in the other order would dispatch a fault before
 * the REMOVE event the kernel raised ahead of it (a write after a free
 * lost: make check saw it). Returns with mm->lock held unless -EBUSY.
 */
static int service_read(struct uhmm_mm *mm)
{
	struct uffd_msg msgs[64];
	ssize_t n;
	int err;

	if (atomic_exchange(&mm->read_claim, true))
		return -EBUSY;
	pthread_mutex_lock(&mm->lock);
	mm->reading = true;
	pthread_mutex_unlock(&mm->lock);
	n = read(mm->uffd, msgs, sizeof(msgs));	/* O_NONBLOCK: the others woken find nothing */
	err = n < 0 && errno != EAGAIN && errno != EINTR ? -errno : 0;
	pthread_mutex_lock(&mm->lock);
	if (n > 0)
		enqueue(mm, msgs, (size_t)n / sizeof(msgs[0]));
	mm->reading = false;
	atomic_store(&mm->read_claim, false);
	pthread_cond_broadcast(&mm->cond);
	return err;
}

/* ---- the worker role ---- */

/* The program's pages of [start, end) are gone: devices drop them, device pages are freed. */
static void drop_pages(struct uhmm_mm *mm, uint64_t start, uint64_t end, enum uhmm_notifier_event event)
{
	uhmm_invalidate(mm, start, end, event, NULL);
	uhmm_dp_drop_range(mm, start, end);
	uhmm_poisoned_drop(mm, start, end);	/* the zap took the markers too */
	if (uhmm_tracing())
		uhmm_trace_residency(start, (end - start) >> UHMM_PAGE_SHIFT, "freed", NULL);
}

/*
 * madvise(DONTNEED/FREE/REMOVE): devices drop their mappings, then the
 * device pages of the range are released (their data went with the zap).
 * A zap uhmm made itself (committing a migration) is not the program's.
 */
static void handle_remove(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t start = m->arg.remove.start, end = m->arg.remove.end;

	bool self = uhmm_mm_is_self_zap(mm, start, end);

	if (uhmm_tracing())	/* the event arrives after the fact: when, and whether it was ours */
		uhmm_trace_span("remove_event", "invalidate", uhmm_now_ns(), uhmm_now_ns(),
				"\"start\":\"%#llx\",\"end\":\"%#llx\",\"self_zap\":%d", (unsigned long long)start,
				(unsigned long long)end, self);
	if (self)
		return;
	drop_pages(mm, start, end, UHMM_NOTIFY_CLEAR);
}

static void handle_unmap(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t start = m->arg.remove.start, end = m->arg.remove.end;

	uhmm_mm_forget(mm, start, end);
	drop_pages(mm, start, end, UHMM_NOTIFY_UNMAP);
}

/* mremap() moved a registered range: the registration moved with it. */
static void handle_remap(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t from = m->arg.remap.from, to = m->arg.remap.to, len = m->arg.remap.len;

	bool trapping = uhmm_mm_is_missing(mm, from);

	uhmm_mm_forget(mm, from, from + len);
	pthread_mutex_lock(&mm->lock);
	uhmm_spanset_add(&mm->registered, to, to + len);
	if (trapping)
		uhmm_spanset_add(&mm->missing, to, to + len);
	pthread_mutex_unlock(&mm->lock);
	uhmm_invalidate(mm, from, from + len, UHMM_NOTIFY_UNMAP, NULL);
	uhmm_dp_move_range(mm, from, to, len);	/* device pages move with the mapping */
	uhmm_poisoned_move(mm, from, to, len);	/* and so do poison markers */
}

/* A page fault: a write to a page a migration protects, or a missing page of a trapping span. */
static void handle_fault(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t t0 = uhmm_now_ns(), t1;
	bool wp = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;

	if (wp)
		uhmm_fault_wp(mm, m->arg.pagefault.address);
	else
		uhmm_fault_missing(mm, m->arg.pagefault.address, (unsigned int)m->arg.pagefault.flags,
				   (pid_t)m->arg.pagefault.feat.ptid);
	t1 = uhmm_now_ns();
	uhmm_stat_add(UHMM_STAT(faults), 1);
	uhmm_stat_add(UHMM_STAT(fault_ns), t1 - t0);
	if (uhmm_tracing())
		uhmm_trace_span("fault", "fault", t0, t1, "\"addr\":\"%#llx\",\"kind\":\"%s\",\"thread\":%d",
				(unsigned long long)m->arg.pagefault.address, wp ? "write-protect" : "missing",
				(int)m->arg.pagefault.feat.ptid);
}

static void worker_dispatch(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	(void)uhmm_inject(UHMM_INJECT_SERVICE_DELAY);	/* a slow service thread, when asked */
	uhmm_stat_add(UHMM_STAT(events), 1);
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		handle_fault(mm, m);
		break;
	case UFFD_EVENT_REMOVE:
		handle_remove(mm, m);
		break;
	case UFFD_EVENT_UNMAP:
		handle_unmap(mm, m);
		break;
	case UFFD_EVENT_REMAP:
		handle_remap(mm, m);
		break;
	default:
		uhmm_log(UHMM_LOG_WARN, "uhmm: unexpected userfaultfd event %u", m->event);
		break;
	}
}

/* A fault left waiting on a busy page: woken again after a millisecond without messages. */
void uhmm_service_defer(struct uhmm_mm *mm, uint64_t addr)
{
	pthread_mutex_lock(&mm->lock);
	if (mm->n_deferred == mm->cap_deferred) {
		size_t cap = mm->cap_deferred ? 2 * mm->cap_deferred : 16;
		uint64_t *d = uhmm_krealloc(mm->deferred, cap * sizeof(*d));

		if (!d)
			goto out;	/* the holder's own wake-up remains */
		mm->deferred = d;
		mm->cap_deferred = cap;
	}
	mm->deferred[mm->n_deferred++] = addr;
out:
	pthread_mutex_unlock(&mm->lock);
}

/*
 * Wake the deferred faults (the worker role, mm->lock held, dropped
 * meanwhile). Only the worker role empties the list, so the addresses
 * taken stay valid while the lock is dropped; deferrals meanwhile append.
 */
static void worker_rewake(struct uhmm_mm *mm)
{
	size_t n = mm->n_deferred;

	for (size_t i = 0; i < n; i++) {	/* a fault still blocked comes back as a new event */
		uint64_t addr = mm->deferred[i];

		pthread_mutex_unlock(&mm->lock);
		uhmm_wake(mm, addr, addr + UHMM_PAGE_SIZE);
		pthread_mutex_lock(&mm->lock);
	}
	memmove(mm->deferred, mm->deferred + n, (mm->n_deferred - n) * sizeof(*mm->deferred));
	mm->n_deferred -= n;
}

static bool worker_has_work(const struct uhmm_mm *mm)
{
	return mm->q_len && (!mm->paused || mm->stopping);
}

/*
 * Take the worker role if nobody holds it and there is work, dispatch the
 * queue until it is empty (or fork() pauses the role), give the role back.
 * Called and returns with mm->lock held; anything queued while the role is
 * held is dispatched before it is given back (both under mm->lock), so a
 * message is never left queued with no worker.
 */
static void worker_run(struct uhmm_mm *mm, bool rewake)
{
	if (mm->worker_active || (!worker_has_work(mm) && !(rewake && mm->n_deferred)))
		return;
	mm->worker_active = true;
	if (rewake && !mm->paused)
		worker_rewake(mm);
	while (worker_has_work(mm)) {
		struct uffd_msg m = mm->q[mm->q_head];

		mm->q_head = (mm->q_head + 1) % mm->q_cap;
		mm->q_len--;
		mm->worker_busy = true;
		pthread_mutex_unlock(&mm->lock);

		worker_dispatch(mm, &m);

		pthread_mutex_lock(&mm->lock);
		mm->worker_busy = false;
		mm->ev_done++;
		pthread_cond_broadcast(&mm->cond);
	}
	mm->worker_active = false;
}

static void *service_main(void *arg)
{
	struct uhmm_mm *mm = arg;
	enum wake_reason why;

	in_service = true;
	do {
		int err = 0;

		why = service_poll(mm);
		if (why == WAKE_MSGS) {
			err = service_read(mm);
			if (err == -EBUSY)
				continue;
		} else {
			pthread_mutex_lock(&mm->lock);
		}
		if (why == WAKE_ERR || err) {
			mm->stopping = true;	/* the userfaultfd is unusable: release every waiter */
			pthread_cond_broadcast(&mm->cond);
		}
		worker_run(mm, why == WAKE_IDLE);
		pthread_mutex_unlock(&mm->lock);
		if (err)
			why = WAKE_ERR;
	} while (why != WAKE_STOP && why != WAKE_ERR);
	return NULL;
}

/*
 * The count of messages queued once the read in progress (if any) is
 * queued: an event whose raiser has returned has an index below it.
 */
uint64_t uhmm_service_read_mark(struct uhmm_mm *mm)
{
	uint64_t mark;

	pthread_mutex_lock(&mm->lock);
	while (mm->reading && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	mark = mm->ev_queued;
	pthread_mutex_unlock(&mm->lock);
	return mark;
}

void uhmm_service_sync(struct uhmm_mm *mm)
{
	uint64_t target;

	if (in_service)
		return;
	pthread_mutex_lock(&mm->lock);
	while (mm->reading && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	target = mm->ev_queued;
	while (mm->ev_done < target && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	pthread_mutex_unlock(&mm->lock);
}

/*
 * Hold the worker role between two messages (fork(): no uhmm thread may be
 * inside malloc or a driver callback when the address space is copied; the
 * threads go on reading, so no thread raising an event is left blocked).
 */
void uhmm_service_pause(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->lock);
	mm->paused = true;
	while (mm->worker_busy && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	pthread_mutex_unlock(&mm->lock);
}

/* Messages queued while paused wait for no new one: kick a thread to take the role. */
void uhmm_service_resume(struct uhmm_mm *mm)
{
	uint64_t one = 1;

	pthread_mutex_lock(&mm->lock);
	mm->paused = false;
	if ((mm->q_len || mm->n_deferred) && !mm->worker_active &&
	    write(mm->kick_efd, &one, sizeof(one)) != sizeof(one))
		uhmm_log(UHMM_LOG_ERR, "uhmm: cannot kick the service threads");
	pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
}

/* ---- start and stop ---- */

/*
 * How many service threads, and whether each is pinned to a CPU of its
 * own: one per CPU this thread may run on, pinned, up to UHMM_SERVICE_MAX;
 * two unpinned beyond. Never fewer than two (one must be free to read).
 */
static unsigned int service_plan(cpu_set_t *cpus, bool *pinned)
{
	const char *env = getenv("UHMM_SERVICE_THREADS");
	const char *pin = getenv("UHMM_SERVICE_PIN");
	int ncpu = sched_getaffinity(0, sizeof(*cpus), cpus) ? 0 : CPU_COUNT(cpus);
	long n = ncpu >= 2 && ncpu <= UHMM_SERVICE_MAX ? ncpu : 2;

	if (env && *env) {
		char *end;
		long v = strtol(env, &end, 10);

		if (!*end && v >= 2 && v <= UHMM_SERVICE_MAX)
			n = v;
	}
	*pinned = n == ncpu && !(pin && !strcmp(pin, "0"));
	return (unsigned int)n;
}

/* The @nth CPU of @cpus. */
static int nth_cpu(const cpu_set_t *cpus, unsigned int nth)
{
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, cpus) && nth-- == 0)
			return c;
	return -1;
}

static int start_thread(struct uhmm_mm *mm, unsigned int slot, const cpu_set_t *cpus)
{
	pthread_attr_t attr;
	char *stack = stack_alloc();
	int ret;

	if (!stack)
		return -ENOMEM;
	mm->stacks[slot] = stack;
	pthread_attr_init(&attr);
	pthread_attr_setstack(&attr, stack + GUARD_SIZE, STACK_SIZE - GUARD_SIZE);
	if (cpus) {
		cpu_set_t one;

		CPU_ZERO(&one);
		CPU_SET(nth_cpu(cpus, slot), &one);
		pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
	}
	ret = -pthread_create(&mm->svc[slot], &attr, service_main, mm);
	pthread_attr_destroy(&attr);
	if (ret) {
		uhmm_kfree(stack);
		mm->stacks[slot] = NULL;
	} else {	/* for ps, top and gdb: "uhmm-svc0" serves CPU 0 when pinned */
		char name[16];

		snprintf(name, sizeof(name), "uhmm-svc%d", cpus ? nth_cpu(cpus, slot) : (int)slot);
		pthread_setname_np(mm->svc[slot], name);
	}
	return ret;
}

int uhmm_service_start(struct uhmm_mm *mm)
{
	sigset_t all, old;
	cpu_set_t cpus;
	unsigned int n = service_plan(&cpus, &mm->svc_pinned);
	int ret = 0;

	uhmm_staging_service_slab(false);
	mm->kick_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (mm->kick_efd < 0)
		return -errno;
	mm->q_cap = QUEUE_MSGS;
	mm->q = uhmm_kmalloc(mm->q_cap * sizeof(*mm->q));
	if (!mm->q) {
		uhmm_service_stop(mm);
		return -ENOMEM;
	}

	/* The threads must never take the application's signals. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (unsigned int i = 0; i < n && !ret; i++) {
		ret = start_thread(mm, i, mm->svc_pinned ? &cpus : NULL);
		if (ret == -EINVAL && mm->svc_pinned)	/* the CPU went offline meanwhile */
			ret = start_thread(mm, i, NULL);
		if (!ret)
			mm->n_svc++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		uhmm_service_stop(mm);
	return ret;
}

void uhmm_service_stop(struct uhmm_mm *mm)
{
	uint64_t one = 1;

	pthread_mutex_lock(&mm->lock);
	mm->stopping = true;	/* the queue is dispatched even if paused */
	pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
	if (mm->n_svc && write(mm->stop_efd, &one, sizeof(one)) != sizeof(one))
		uhmm_log(UHMM_LOG_ERR, "uhmm: cannot signal the service threads");
	for (unsigned int i = 0; i < mm->n_svc; i++)
		pthread_join(mm->svc[i], NULL);
	mm->n_svc = 0;
	uhmm_staging_service_slab(true);
	for (unsigned int i = 0; i < UHMM_SERVICE_MAX; i++) {
		uhmm_kfree(mm->stacks[i]);
		mm->stacks[i] = NULL;
	}
	uhmm_kfree(mm->q);
	mm->q = NULL;
	if (mm->kick_efd >= 0)
		close(mm->kick_efd);
	mm->kick_efd = -1;
}
