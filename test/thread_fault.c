// SPDX-License-Identifier: MIT
/*
 * Faults served in the faulting thread (uhmm_set_fault_mode(UHMM_FAULTS_IN_THREAD)):
 * each test chooses the mode before its mm exists, so they run in every
 * harness mode (unprivileged and fallback included). The whole suite runs
 * this way too, in the harness's "thread" mode.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "harness.h"

static struct uhmm_mm *mm_in_thread_mode(void)
{
	struct uhmm_mm *mm;

	ASSERT_OK(uhmm_set_fault_mode(UHMM_FAULTS_IN_THREAD));
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_TRUE(faults_in_thread());
	return mm;
}

/* ---- a driver of its own: one device page in memory of its own, copied back ---- */

static char dev_mem[PAGE] __attribute__((aligned(4096)));
static int dev_owner;
static _Atomic pid_t served_by;	/* the thread migrate_to_ram() ran on */

static void dev_free(struct uhmm_page *page) { (void)page; }

static int dev_to_ram(struct uhmm_vm_fault *vmf)
{
	uint64_t src, dst = 0;
	struct uhmm_migrate_vma m = { .mm = vmf->mm, .src = &src, .dst = &dst, .start = vmf->address,
				      .end = vmf->address + PAGE, .pgmap_owner = &dev_owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page };
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	served_by = (pid_t)syscall(SYS_gettid);
	if (src & UHMM_MIGRATE_PFN_MIGRATE) {
		void *sys = uhmm_migrate_alloc_system_page(&dst);

		if (sys)
			memcpy(sys, dev_mem, PAGE);
	}
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}

static const struct uhmm_pagemap_ops dev_ops = { .page_free = dev_free, .migrate_to_ram = dev_to_ram };

/* The page at @p to the device (its data copied to dev_mem). */
static void to_device(struct uhmm_mm *mm, struct uhmm_pagemap *pg, int *p)
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = { .mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p,
				      .end = (uintptr_t)p + PAGE, .pgmap_owner = &dev_owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM };
	struct uhmm_page *page = uhmm_pagemap_page(pg, 0);

	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 1);
	ASSERT_OK(uhmm_page_init(page));
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, dev_mem, PAGE, 0), PAGE);
	dst = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_TRUE(src & UHMM_MIGRATE_PFN_MIGRATE);
}

static long voluntary_switches(void)
{
	struct rusage ru;

	ASSERT_OK(getrusage(RUSAGE_THREAD, &ru));
	return ru.ru_nvcsw;
}

/*
 * A touch of a device page runs the driver's migrate_to_ram() on the
 * touching thread, and that thread never sleeps for it: no voluntary
 * context switch (a fault the service threads serve makes at least one,
 * the faulting thread's wait in the kernel). The data the device held is
 * what the CPU reads.
 */
TEST(fault_in_thread_runs_migrate_to_ram_on_the_faulting_thread)
{
	struct uhmm_mm *mm = mm_in_thread_mode();
	int *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_pagemap *pg;
	struct uhmm_pagemap_stats st;
	struct uhmm_stats s0, s1;
	pid_t me = (pid_t)syscall(SYS_gettid);
	int slept = 0;

	ASSERT_OK(uhmm_pagemap_add(mm, 1, &dev_owner, &dev_ops, NULL, &pg));
	for (int round = 0; round < 16; round++) {
		long before;

		fill_ints(p, PAGE, 1);
		to_device(mm, pg, p);
		((int *)dev_mem)[0] = -round - 1;	/* the device writes meanwhile */
		served_by = 0;
		ASSERT_OK(uhmm_mm_sync(mm));	/* the service threads are done with the migration's events */
		ASSERT_EQ(uhmm_stats(&s0, sizeof(s0)), sizeof(s0));
		before = voluntary_switches();
		ASSERT_EQ(((volatile int *)p)[0], -round - 1);
		slept += voluntary_switches() != before;
		ASSERT_EQ(uhmm_stats(&s1, sizeof(s1)), sizeof(s1));
		ASSERT_EQ(served_by, me);
		ASSERT_EQ(s1.faults - s0.faults, 1);
		check_ints_from(p, 1, PAGE - sizeof(int), 1);
	}
	/*
	 * Served by the service threads, every round sleeps (16 of 16). Here a
	 * preemption is involuntary and does not count; what could is a lock a
	 * service thread still held (the sync above leaves them idle) or the
	 * kernel sleeping in its own page allocation: CI under load once saw 1.
	 */
	ASSERT_LE(slept, 2);
	ASSERT_OK(uhmm_pagemap_stats(pg, &st));
	ASSERT_EQ(st.mapped, 0);
	ASSERT_OK(uhmm_pagemap_remove(pg));
	uhmm_mm_put(mm);
}

/*
 * The price of the mode: a system call that touches a device page cannot
 * wait for it, and fails with EFAULT, writing nothing; once the thread
 * touches the page itself, the call works.
 */
TEST(fault_in_thread_system_call_on_a_device_page_gets_efault)
{
	struct uhmm_mm *mm = mm_in_thread_mode();
	int *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int fds[2], buf[PAGE / sizeof(int)];
	struct uhmm_pagemap *pg;

	ASSERT_OK(pipe(fds));
	ASSERT_OK(uhmm_pagemap_add(mm, 1, &dev_owner, &dev_ops, NULL, &pg));
	fill_ints(p, PAGE, 1);
	to_device(mm, pg, p);
	ASSERT_EQ(write(fds[1], p, PAGE), -1);	/* the kernel reads a device page */
	ASSERT_EQ(errno, EFAULT);
	ASSERT_OK(fcntl(fds[0], F_SETFL, O_NONBLOCK));
	ASSERT_EQ(read(fds[0], buf, PAGE), -1);	/* nothing went into the pipe */
	ASSERT_EQ(errno, EAGAIN);
	ASSERT_EQ(((volatile int *)p)[0], 0);	/* the CPU's own touch brings it back */
	ASSERT_EQ(write(fds[1], p, PAGE), (ssize_t)PAGE);
	ASSERT_EQ(read(fds[0], buf, PAGE), (ssize_t)PAGE);
	check_ints(buf, PAGE, 1);
	close(fds[0]);
	close(fds[1]);
	ASSERT_OK(uhmm_pagemap_remove(pg));
	uhmm_mm_put(mm);
}

static sigjmp_buf prog_jmp;
static volatile int prog_bus;

static void prog_sigbus(int sig)
{
	(void)sig;
	prog_bus++;
	siglongjmp(prog_jmp, 1);
}

/*
 * A SIGBUS that is not a fault uhmm serves (here: past the end of a file
 * mapping, BUS_ADRERR like uhmm's own) goes to the handler the program had
 * installed before uhmm's; uhmm_handle_sigbus() says it is not uhmm's. The
 * program's handler is back once the mm is gone.
 */
TEST(fault_in_thread_hands_other_sigbus_to_the_programs_handler)
{
	struct sigaction prog = { .sa_handler = prog_sigbus }, now;
	struct uhmm_mm *mm;
	int fd = memfd_create("uhmm-empty", MFD_CLOEXEC);
	volatile char *past_end;

	ASSERT_GE(fd, 0);
	past_end = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);	/* an empty file: every page past its end */
	ASSERT_TRUE(past_end != MAP_FAILED);
	ASSERT_OK(sigaction(SIGBUS, &prog, NULL));
	mm = mm_in_thread_mode();
	ASSERT_OK(sigaction(SIGBUS, NULL, &now));
	ASSERT_TRUE((now.sa_flags & SA_SIGINFO) && now.sa_handler != prog_sigbus);	/* uhmm's */
	if (sigsetjmp(prog_jmp, 1) == 0)
		(void)past_end[0];
	ASSERT_EQ(prog_bus, 1);

	siginfo_t si = { .si_signo = SIGBUS, .si_code = BUS_ADRERR, .si_addr = (void *)past_end };
	ucontext_t uc;

	memset(&uc, 0, sizeof(uc));
	ASSERT_EQ(uhmm_handle_sigbus(&si, &uc), 0);
	ASSERT_EQ(uhmm_handle_sigbus(NULL, &uc), 0);
	uhmm_mm_put(mm);
	ASSERT_OK(sigaction(SIGBUS, NULL, &now));
	ASSERT_TRUE(now.sa_handler == prog_sigbus);	/* given back */
	ASSERT_OK(munmap((void *)past_end, PAGE));
	close(fd);
}

/* The mode is chosen before the mm exists; an unknown one is refused. */
TEST(set_fault_mode_before_the_mm_exists)
{
	struct uhmm_mm *mm;
	enum uhmm_fault_mode mode, other;

	ASSERT_EQ(uhmm_set_fault_mode((enum uhmm_fault_mode)2), -EINVAL);
	ASSERT_EQ(uhmm_set_fault_mode((enum uhmm_fault_mode)-1), -EINVAL);
	ASSERT_OK(uhmm_mm_get(&mm));
	mode = faults_in_thread() ? UHMM_FAULTS_IN_THREAD : UHMM_FAULTS_SERVICE;
	other = mode == UHMM_FAULTS_IN_THREAD ? UHMM_FAULTS_SERVICE : UHMM_FAULTS_IN_THREAD;
	ASSERT_EQ(mode == UHMM_FAULTS_IN_THREAD, !strcmp(test_mode(), "thread"));	/* UHMM_FAULTS=thread there */
	ASSERT_EQ(uhmm_set_fault_mode(other), -EBUSY);
	ASSERT_OK(uhmm_set_fault_mode(mode));
	uhmm_mm_put(mm);
	ASSERT_OK(uhmm_set_fault_mode(other));	/* the next mm gets it */
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(faults_in_thread(), other == UHMM_FAULTS_IN_THREAD);
	uhmm_mm_put(mm);
}
