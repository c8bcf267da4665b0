// SPDX-License-Identifier: MIT
/*
 * Fault injection (uhmm_fault_inject()): each injected failure is either
 * absorbed (retried, or the page stays where it was) or surfaces as the
 * documented errno or SIGBUS, and the data is checked afterwards. The
 * outcomes are the table of uhmm_fault_inject(3).
 */
#include <pthread.h>
#include <stdatomic.h>

#include "harness.h"

#define NPG 32

static struct uhmm_stats stats_now(void)
{
	struct uhmm_stats s;

	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), sizeof(s));
	return s;
}

static uint64_t injected(void)
{
	return stats_now().faults_injected;
}

/*
 * A device that copies data and never moves pages: the UFFDIO_COPY
 * injections below test uhmm's copying install, which the reference
 * device's zero-copy moves otherwise bypass (uhmm_pagemap_set_host_memory()).
 */
static struct uhmm_dmirror *copying_dmirror(void)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_FLAGS, NULL, NULL, UHMM_DMIRROR_FLAG_COPY, &c));
	return d;
}

static int *filled(size_t npages)
{
	int *p = map_anon(npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	fill_ints(p, npages * PAGE, 1);
	return p;
}

/* How many of @n pages at @p the device sees as @want (a snapshot faults nothing). */
static uint64_t count_snap(struct uhmm_dmirror *d, void *p, uint64_t n, uint8_t want)
{
	struct uhmm_dmirror_cmd c;
	uint8_t snap[NPG];
	uint64_t k = 0;

	ASSERT_LE(n, NPG);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, snap, n, &c));
	for (uint64_t i = 0; i < n; i++)
		k += snap[i] == want;
	return k;
}

#define ON_DEVICE (UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE)

/*
 * Move @n pages at @p to device @d; returns how many are on it after.
 * MIGRATE_TO_DEV reads them back from device memory: -ENOENT when some
 * page stayed behind (CONFORMANCE.md).
 */
static uint64_t to_device(struct uhmm_dmirror *d, int *p, uint64_t n)
{
	struct uhmm_dmirror_cmd c;
	int *buf = malloc(n * PAGE);
	int ret = dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, n, &c);
	uint64_t moved = count_snap(d, p, n, ON_DEVICE);

	if (ret == 0) {
		ASSERT_EQ(c.cpages, n);
		check_ints(buf, n * PAGE, 1);	/* what the device read back is the data */
	} else {
		ASSERT_EQ(ret, -ENOENT);
		ASSERT_LT(moved, n);
	}
	free(buf);
	return moved;
}

/* The device reads the data right, wherever the pages are. */
static void device_reads_data(struct uhmm_dmirror *d, int *p, uint64_t n)
{
	struct uhmm_dmirror_cmd c;
	int *buf = malloc(n * PAGE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, n, &c));
	check_ints(buf, n * PAGE, 1);
	free(buf);
}

TEST(inject_spec_is_checked)
{
	static const char *const bad[] = {
		"bogus:EIO", "uffd_copy", "uffd_copy:", "uffd_copy:EWHAT", "uffd_copy:EIO:0",
		"uffd_copy:EIO:1:2:3", "uffd_copy:EIO,uffd_copy:EAGAIN", "service_delay:EIO",
		"uffd_copy:-5", "uffd_copy:5000", "uffd_copy:EIO:x", ",", "uffd_copy:EIO,,uffd_move:EIO",
		"service_delay:99999999",
	};
	struct uhmm_dmirror *d = copying_dmirror();
	struct uhmm_dmirror_cmd c;
	int *p = filled(4);
	uint64_t before;

	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_OK(uhmm_fault_inject(""));
	ASSERT_OK(uhmm_fault_inject("uffd_copy:EAGAIN:1:2,service_delay:10:3"));
	ASSERT_OK(uhmm_fault_inject("uffd_copy:EAGAIN:1:2"));
	ASSERT_EQ(to_device(d, p, 4), 4);	/* no UFFDIO_COPY that way */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (uhmm_fault_inject(bad[i]) != -EINVAL)
			test_fail(__FILE__, __LINE__, "\"%s\" accepted", bad[i]);
	/* A rejected spec left the rule as it was: exactly two EAGAINs, retried. */
	before = injected();
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, 4, &c));
	ASSERT_EQ(c.cpages, 4);
	ASSERT_EQ(injected() - before, 2);
	check_ints(p, 4 * PAGE, 1);
	ASSERT_OK(uhmm_fault_inject(NULL));
	uhmm_dmirror_close(d);
}

/* UFFDIO_COPY saying EAGAIN (the mm changed under it) is retried: nothing is lost. */
TEST(inject_uffd_copy_eagain_is_retried)
{
	struct uhmm_dmirror *d = copying_dmirror();
	struct uhmm_dmirror_cmd c;
	int *p = filled(NPG);
	uint64_t before, before_poisons = stats_now().poisons;

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	before = injected();
	ASSERT_OK(uhmm_fault_inject("uffd_copy:EAGAIN:1:20"));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, NPG, &c));
	ASSERT_EQ(c.cpages, NPG);
	ASSERT_EQ(injected() - before, 20);
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), 0);
	check_ints(p, NPG * PAGE, 1);

	/* And on the CPU fault path. */
	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject("uffd_copy:EAGAIN:2"));
	check_ints(p, NPG * PAGE, 1);
	ASSERT_EQ(stats_now().poisons, before_poisons);
	ASSERT_OK(uhmm_fault_inject(NULL));
	uhmm_dmirror_close(d);
}

/*
 * UFFDIO_COPY failing for good (ENOMEM: no memory; EEXIST: a page is
 * already there) while migrating back: the pages stay on the device, the
 * migration reports them not moved, and they come back once it can.
 */
static void copy_failure_keeps_pages(const char *spec)
{
	struct uhmm_dmirror *d = copying_dmirror();
	struct uhmm_dmirror_cmd c;
	int *p = filled(NPG);
	uint64_t poisons = stats_now().poisons;

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject(spec));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, NPG, &c));
	ASSERT_EQ(c.cpages, 0);
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), NPG);
	device_reads_data(d, p, NPG);
	ASSERT_OK(uhmm_fault_inject(NULL));
	check_ints(p, NPG * PAGE, 1);
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), 0);
	ASSERT_EQ(stats_now().poisons, poisons);
	uhmm_dmirror_close(d);
}

TEST(inject_uffd_copy_enomem_keeps_pages_on_device) { copy_failure_keeps_pages("uffd_copy:ENOMEM"); }
TEST(inject_uffd_copy_eexist_keeps_pages_on_device) { copy_failure_keeps_pages("uffd_copy:EEXIST"); }

/* A CPU fault whose install fails a few times is tried again: absorbed. */
TEST(inject_uffd_copy_enomem_on_fault_is_retried)
{
	struct uhmm_dmirror *d = copying_dmirror();
	int *p = filled(NPG);
	uint64_t poisons = stats_now().poisons;

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject("uffd_copy:ENOMEM:1:3"));
	check_ints(p, NPG * PAGE, 1);
	ASSERT_EQ(stats_now().poisons, poisons);
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), 0);
	ASSERT_OK(uhmm_fault_inject(NULL));
	uhmm_dmirror_close(d);
}

/*
 * A CPU fault whose install never succeeds: the faulting page is poisoned
 * (SIGBUS, never zeros); the other pages stay on the device and come back
 * intact once installs work again.
 */
TEST(inject_uffd_copy_enomem_for_good_poisons_the_faulting_page)
{
	struct uhmm_dmirror *d = copying_dmirror();
	struct uhmm_pagemap_stats st;
	int *p = filled(NPG);

	uint64_t poisons = stats_now().poisons;

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject("uffd_copy:ENOMEM"));
	ASSERT_TRUE(read_sigbus(p));
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_TRUE(read_sigbus(p));	/* poisoned stays poisoned */
	check_ints_from(p, PAGE / sizeof(int), (NPG - 1) * PAGE, 1);
	ASSERT_EQ(stats_now().poisons - poisons, 1);
	ASSERT_OK(uhmm_dmirror_memstats(d, &st));
	ASSERT_EQ(st.poisoned, 1);
	ASSERT_EQ(st.allocated, 0);
	uhmm_dmirror_close(d);
}

/*
 * A device write to a hole of memory uhmm traps (it migrated there before)
 * needs a zeroed page installed: if that fails, the WRITE fails with the
 * errno and the memory is untouched.
 */
TEST(inject_uffd_copy_enomem_fails_a_device_write_cleanly)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *p = filled(NPG), src[PAGE / sizeof(int)];

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	check_ints(p, NPG * PAGE, 1);	/* back in system memory; the span still traps */
	ASSERT_OK(madvise(p + 4 * PAGE / sizeof(int), PAGE, MADV_DONTNEED));
	for (size_t i = 0; i < PAGE / sizeof(int); i++)
		src[i] = -1;
	ASSERT_OK(uhmm_fault_inject("uffd_copy:ENOMEM"));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, p + 4 * PAGE / sizeof(int), src, 1, &c), -ENOMEM);
	ASSERT_OK(uhmm_fault_inject(NULL));
	for (size_t i = 4 * PAGE / sizeof(int); i < 5 * PAGE / sizeof(int); i++)
		ASSERT_EQ(p[i], 0);
	check_ints(p, 4 * PAGE, 1);
	check_ints_from(p, 5 * PAGE / sizeof(int), (NPG - 5) * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, p + 4 * PAGE / sizeof(int), src, 1, &c));
	ASSERT_EQ(p[4 * PAGE / sizeof(int)], -1);
	uhmm_dmirror_close(d);
}

/*
 * UFFDIO_MOVE (taking pages from the CPU without an event) failing with
 * any errno: the zap falls back to MADV_DONTNEED; the migration completes.
 */
static void move_failure_falls_back(const char *spec)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled(NPG);
	struct uhmm_stats s0 = stats_now(), s1;

	ASSERT_OK(uhmm_fault_inject(spec));
	ASSERT_EQ(to_device(d, p, NPG), NPG);
	s1 = stats_now();
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), NPG);
	device_reads_data(d, p, NPG);
	/* Fallback mode never uses UFFDIO_MOVE: nothing to inject there. */
	if (s1.faults_injected > s0.faults_injected)
		ASSERT_EQ(s1.zaps_madvised - s0.zaps_madvised, NPG);
	else
		ASSERT_EQ(strcmp(test_mode(), "fallback"), 0);
	check_ints(p, NPG * PAGE, 1);
	uhmm_dmirror_close(d);
}

TEST(inject_uffd_move_eagain_falls_back) { move_failure_falls_back("uffd_move:EAGAIN"); }
TEST(inject_uffd_move_eexist_falls_back) { move_failure_falls_back("uffd_move:EEXIST"); }
TEST(inject_uffd_move_enomem_falls_back) { move_failure_falls_back("uffd_move:ENOMEM"); }

/*
 * UFFDIO_MOVE failing both ways on the zero-copy path (the reference
 * device's memory is host memory): to the device, the pages are copied in
 * and zapped instead; back, they are copied out of device memory. Nothing
 * is lost, every page migrates.
 */
TEST(inject_uffd_move_zero_copy_falls_back_to_copies)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *p = filled(NPG);
	struct uhmm_stats s0 = stats_now(), s1;

	ASSERT_OK(uhmm_fault_inject("uffd_move:ENOMEM"));
	ASSERT_EQ(to_device(d, p, NPG), NPG);
	device_reads_data(d, p, NPG);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, NPG, &c));
	ASSERT_EQ(c.cpages, NPG);
	s1 = stats_now();
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_EQ(s1.pages_moved, s0.pages_moved);	/* nothing moved: all copied */
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), 0);
	check_ints(p, NPG * PAGE, 1);
	uhmm_dmirror_close(d);
}

/*
 * A zero-copy migration whose move fails copies the page into device
 * memory and zaps it instead. The page was left writable by setup (that is
 * the point of zero copy), so it is write-protected before the copy: a CPU
 * write between the copy and the zap then waits, and lands on the page
 * once it has migrated (it faults it back). Unprotected, that write went
 * into the page the zap then discarded: lost, the device's copy older.
 * copy_zap_delay holds the migration between the copy and the zap while
 * another thread writes.
 */
struct late_writer {
	int *p;
	uint64_t before;
	atomic_bool migrated;
	bool wrote_in_window;
};

static void *write_in_copy_window(void *arg)
{
	struct late_writer *w = arg;

	/* uffd_move fires once, then copy_zap_delay: the migration sleeps between copy and zap */
	while (injected() < w->before + 2 && !atomic_load(&w->migrated))
		usleep(200);
	w->wrote_in_window = !atomic_load(&w->migrated);
	((volatile int *)w->p)[0] = -7;
	return NULL;
}

TEST(inject_write_between_fallback_copy_and_zap_is_kept)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct late_writer w = { .p = filled(1), .before = injected() };
	struct uhmm_dmirror_cmd c;
	int buf[PAGE / sizeof(int)];
	pthread_t t;
	int ret;

	ASSERT_OK(uhmm_fault_inject("uffd_move:ENOMEM:1:1,copy_zap_delay:100000:1:1"));
	ASSERT_OK(pthread_create(&t, NULL, write_in_copy_window, &w));
	ret = dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, w.p, buf, 1, &c);
	atomic_store(&w.migrated, true);
	pthread_join(t, NULL);
	ASSERT_OK(uhmm_fault_inject(NULL));
	/* the write faulted the page back before the command read it from the device: -ENOENT */
	ASSERT_TRUE(ret == 0 || ret == -ENOENT);
	if (!w.wrote_in_window)	/* the fallback mode copies from the start: no move to fail */
		ASSERT_EQ(strcmp(test_mode(), "fallback"), 0);
	ASSERT_EQ(w.p[0], -7);	/* the write in the window is there */
	check_ints_from(w.p, 1, PAGE - sizeof(int), 1);
	uhmm_dmirror_close(d);
}

/* Device memory running out: the pages it could not take stay in system memory. */
TEST(inject_device_alloc_failure_leaves_pages_in_system)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled(NPG);

	ASSERT_OK(uhmm_fault_inject("device_alloc:ENOMEM:2"));
	ASSERT_EQ(to_device(d, p, NPG), NPG / 2);
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), NPG / 2);
	ASSERT_EQ(count_snap(d, p, NPG, UHMM_DMIRROR_PROT_WRITE), NPG / 2);
	device_reads_data(d, p, NPG);
	check_ints(p, NPG * PAGE, 1);
	uhmm_dmirror_close(d);
}

/* The device's copy in failing midway: what it copied moved, the rest stayed. */
TEST(inject_copy_to_device_failing_midway)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled(NPG);

	ASSERT_OK(uhmm_fault_inject("copy_to_device:EIO:10:1"));
	ASSERT_EQ(to_device(d, p, NPG), 9);
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_EQ(count_snap(d, p, 9, ON_DEVICE), 9);
	ASSERT_EQ(count_snap(d, p + 9 * PAGE / sizeof(int), NPG - 9, ON_DEVICE), 0);
	device_reads_data(d, p, NPG);
	check_ints(p, NPG * PAGE, 1);
	uhmm_dmirror_close(d);
}

/*
 * The device's copy out failing: on a CPU fault the page cannot come back
 * (SIGBUS); in MIGRATE_TO_SYS and RELEASE the pages it failed stay on the
 * device and come back intact later.
 */
TEST(inject_copy_to_system_failing)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *p = filled(NPG);

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject("copy_to_system:EIO:2"));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, NPG, &c));
	ASSERT_EQ(c.cpages, NPG / 2);
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), NPG / 2);
	ASSERT_OK(uhmm_fault_inject("copy_to_system:EIO:4"));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_RELEASE, p, NULL, 1, &c));
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), NPG / 8);
	ASSERT_OK(uhmm_fault_inject(NULL));
	check_ints(p, NPG * PAGE, 1);
	ASSERT_EQ(count_snap(d, p, NPG, ON_DEVICE), 0);

	uint64_t poisons = stats_now().poisons;

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject("copy_to_system:EIO:1:1"));
	ASSERT_TRUE(read_sigbus(p + 3 * PAGE / sizeof(int)));
	ASSERT_OK(uhmm_fault_inject(NULL));
	check_ints(p, 3 * PAGE, 1);
	check_ints_from(p, 4 * PAGE / sizeof(int), (NPG - 4) * PAGE, 1);
	ASSERT_EQ(stats_now().poisons - poisons, 1);
	uhmm_dmirror_close(d);
}

/* No staging page for a page coming back: that page stays on the device. */
TEST(inject_staging_alloc_failure_keeps_the_page)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *p = filled(NPG);

	ASSERT_EQ(to_device(d, p, NPG), NPG);
	ASSERT_OK(uhmm_fault_inject("staging_alloc:ENOMEM:5:1"));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, NULL, NPG, &c));
	ASSERT_EQ(c.cpages, NPG - 1);
	ASSERT_EQ(count_snap(d, p + 4 * PAGE / sizeof(int), 1, ON_DEVICE), 1);
	ASSERT_OK(uhmm_fault_inject(NULL));
	check_ints(p, NPG * PAGE, 1);
	uhmm_dmirror_close(d);
}

/* A slow service thread: faults and events wait longer, nothing else changes. */
struct reader {
	int *p;
	int ok;
};

static void *read_all(void *arg)
{
	struct reader *r = arg;

	r->ok = 1;
	for (size_t i = 0; i < NPG * PAGE / sizeof(int); i += 256)
		r->ok &= r->p[i] == (int)i;
	return NULL;
}

TEST(inject_slow_service_thread)
{
	struct uhmm_dmirror *d0 = dmirror(0), *d1 = dmirror(1);
	int *p = filled(NPG), *q = filled(NPG);
	struct reader r[2] = { { .p = p }, { .p = p } };
	pthread_t t[2];
	uint64_t before = injected();

	ASSERT_OK(uhmm_fault_inject("service_delay:2000"));
	for (int round = 0; round < 3; round++) {
		ASSERT_EQ(to_device(round & 1 ? d1 : d0, p, NPG), NPG);
		ASSERT_EQ(to_device(d0, q, NPG), NPG);
		for (int i = 0; i < 2; i++)
			ASSERT_OK(pthread_create(&t[i], NULL, read_all, &r[i]));
		ASSERT_OK(madvise(q, PAGE, MADV_DONTNEED));	/* an event while faults wait */
		for (int i = 0; i < 2; i++) {
			pthread_join(t[i], NULL);
			ASSERT_TRUE(r[i].ok);
		}
		ASSERT_EQ(q[0], 0);
		check_ints_from(q, PAGE / sizeof(int), (NPG - 1) * PAGE, 1);
		fill_ints(q, PAGE, 1);
		check_ints(p, NPG * PAGE, 1);
	}
	ASSERT_GT(injected() - before, 0);
	ASSERT_OK(uhmm_fault_inject(NULL));
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d1);
}

/*
 * The program discards a page while a migration that moved it to the
 * device has yet to map it there (map_delay holds the device between its
 * migrate_vma_pages() and its mapping): the device must not map the page,
 * which the discard freed. It mapped it once, and then read the discarded
 * data back (stress seed 8056 on a loaded machine: DONTNEED, then a device
 * read found the old value), and later another address's data when the
 * freed page was reused.
 */
struct slow_migration {
	struct uhmm_dmirror *d;
	int *p;
	int buf[PAGE / sizeof(int)];
	int ret;
};

static void *migrate_slowly(void *arg)
{
	struct slow_migration *s = arg;
	struct uhmm_dmirror_cmd c;

	s->ret = dmcmd(s->d, UHMM_DMIRROR_MIGRATE_TO_DEV, s->p, s->buf, 1, &c);
	return NULL;
}

TEST(inject_discard_before_the_device_maps_a_migration)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct slow_migration s = { .d = d, .p = filled(NPG) };
	struct uhmm_dmirror_cmd c;
	int *buf = malloc(NPG * PAGE);
	uint64_t before = injected();
	pthread_t t;

	ASSERT_OK(uhmm_fault_inject("map_delay:200000:1:1"));
	ASSERT_OK(pthread_create(&t, NULL, migrate_slowly, &s));
	while (injected() == before)	/* the migration moved the page and sleeps before mapping it */
		usleep(1000);
	ASSERT_OK(madvise(s.p, PAGE, MADV_DONTNEED));
	pthread_join(t, NULL);
	ASSERT_OK(uhmm_fault_inject(NULL));

	/* the device sees the discard: zeros, then what the CPU writes after it */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, s.p, buf, 1, &c));
	for (size_t i = 0; i < PAGE / sizeof(int); i++)
		ASSERT_EQ(buf[i], 0);
	ASSERT_EQ(s.p[0], 0);
	fill_ints(s.p, PAGE, 7);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, s.p, buf, 1, &c));
	check_ints(buf, PAGE, 7);
	/* and a device page freed by the discard, reused for another address, is not read through the old one */
	ASSERT_EQ(to_device(d, filled(NPG), NPG), NPG);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, s.p, buf, 1, &c));
	check_ints(buf, PAGE, 7);
	free(buf);
	uhmm_dmirror_close(d);
}

/*
 * A migration claimed a page before a device's uhmm_range_fault() began
 * (its invalidation was over), and commits while the range_fault runs
 * (range_fault_delay holds it between reading the CPU page table and the
 * device-private table): the commit zaps the CPU page with no further
 * invalidation, so the page-table read is stale. The device must not be
 * told the page is a present system page: seen in a ping-pong of pages
 * between devices, a device READ through such a mapping failed with EFAULT
 * unprivileged (and a mapping of a page that is gone is wrong everywhere).
 */
static char vram[PAGE];
static void vram_free(struct uhmm_page *page) { (void)page; }

static int vram_to_ram(struct uhmm_vm_fault *vmf)
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = {
		.mm = vmf->mm, .src = &src, .dst = &dst, .start = vmf->address, .end = vmf->address + PAGE,
		.pgmap_owner = vram, .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page,
	};
	int ret = uhmm_migrate_vma_setup(&m);
	void *sys;

	if (ret)
		return ret;
	if ((src & UHMM_MIGRATE_PFN_MIGRATE) && (sys = uhmm_migrate_alloc_system_page(&dst)))
		memcpy(sys, vram, PAGE);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}

static const struct uhmm_pagemap_ops vram_ops = { .page_free = vram_free, .migrate_to_ram = vram_to_ram };

struct snapshotter {
	struct uhmm_dmirror *d;
	void *p;
	uint8_t snap;
	int ret;
};

static void *snapshot_one(void *arg)
{
	struct snapshotter *s = arg;
	struct uhmm_dmirror_cmd c;

	s->ret = dmcmd(s->d, UHMM_DMIRROR_SNAPSHOT, s->p, &s->snap, 1, &c);
	return NULL;
}

TEST(inject_range_fault_sees_a_commit_it_did_not_wait_for)
{
	struct snapshotter s = { .d = dmirror(0), .p = filled(1) };
	struct uhmm_pagemap *pg;
	struct uhmm_page *page;
	struct uhmm_mm *mm;
	uint64_t src, dst, before;
	pthread_t t;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_pagemap_add(mm, 1, vram, &vram_ops, NULL, &pg));
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)s.p, .end = (uintptr_t)s.p + PAGE,
		.pgmap_owner = vram, .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};

	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 1);
	page = uhmm_pagemap_page(pg, 0);
	ASSERT_OK(uhmm_page_init(page));
	ASSERT_EQ(uhmm_access_vm((uintptr_t)s.p, vram, PAGE, 0), (ssize_t)PAGE);
	dst = uhmm_migrate_pfn(uhmm_page_to_pfn(page));

	before = injected();
	ASSERT_OK(uhmm_fault_inject("range_fault_delay:200000:1:1"));
	ASSERT_OK(pthread_create(&t, NULL, snapshot_one, &s));
	while (injected() == before)	/* the snapshot read the CPU page table: present */
		usleep(1000);
	uhmm_migrate_vma_pages(&m);	/* the commit zaps the CPU page */
	uhmm_migrate_vma_finalize(&m);
	pthread_join(t, NULL);
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_OK(s.ret);
	/* another device's page: not present for this one (CONFORMANCE.md, rule 6) */
	ASSERT_EQ(s.snap, UHMM_DMIRROR_PROT_NONE);
	check_ints(s.p, PAGE, 1);	/* the CPU faults it back: the data is there */
	ASSERT_OK(uhmm_pagemap_remove(pg));
	uhmm_mm_put(mm);
	uhmm_dmirror_close(s.d);
}

/*
 * A device WRITE to fresh memory replaces the zero page: uhmm invalidates
 * the devices' mappings of it, then lifts the write protection that makes a
 * write trap. If another device mapped the zero page in between (and
 * protected it), lifting the protection took its protection away: the write
 * replaced the page with no fault and no invalidation, and that device read
 * zeros afterwards (make stress under load, three traces). unprotect_delay
 * holds the writer between the two steps while the other device reads.
 */
struct zero_writer {
	struct uhmm_dmirror *d;
	int *p;
	int ret;
};

static void *write_fresh_page(void *arg)
{
	struct zero_writer *w = arg;
	struct uhmm_dmirror_cmd c;
	int buf[PAGE / sizeof(int)];

	fill_ints(buf, PAGE, 1);
	w->ret = dmcmd(w->d, UHMM_DMIRROR_WRITE, w->p, buf, 1, &c);
	return NULL;
}

TEST(inject_zero_page_replaced_while_another_device_maps_it)
{
	struct uhmm_dmirror *reader = dmirror(0);
	struct zero_writer w = { .d = dmirror(1), .p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE) };
	struct uhmm_dmirror_cmd c;
	int buf[PAGE / sizeof(int)];
	uint64_t before;
	pthread_t t;

	ASSERT_EQ(*(volatile int *)w.p, 0);	/* the zero page */
	ASSERT_OK(dmcmd(reader, UHMM_DMIRROR_READ, w.p, buf, 1, &c));	/* mapped as the zero page */
	before = injected();
	ASSERT_OK(uhmm_fault_inject("unprotect_delay:200000:1:1"));
	ASSERT_OK(pthread_create(&t, NULL, write_fresh_page, &w));
	while (injected() == before)	/* the writer invalidated and sleeps before it un-protects */
		usleep(1000);
	ASSERT_OK(dmcmd(reader, UHMM_DMIRROR_READ, w.p, buf, 1, &c));	/* maps the zero page again, or waits */
	pthread_join(t, NULL);
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_OK(w.ret);
	check_ints(w.p, PAGE, 1);
	ASSERT_OK(dmcmd(reader, UHMM_DMIRROR_READ, w.p, buf, 1, &c));
	check_ints(buf, PAGE, 1);	/* the reader sees the write, not its stale zero page */
	uhmm_dmirror_close(reader);
	uhmm_dmirror_close(w.d);
}

/*
 * A page the program discards while another migration holds its entry:
 * madvise() marks the device page dropped before its system call
 * (drop_delay holds it there), a migration of another owner claims the
 * entry and will not migrate it (not its page), and the discard's own
 * freeing passes the held entry by. Whoever releases the claim must free
 * the page: collect used to release it at once and drop the page it was
 * handed back, so the page was never freed (make stress: "device-exclusive
 * pages could not go back"). Now the claim is kept until finalize.
 */
static atomic_int held_frees;
static void held_free(struct uhmm_page *page) { (void)page; atomic_fetch_add(&held_frees, 1); }
static int frees(void) { return atomic_load(&held_frees); }
static const struct uhmm_pagemap_ops held_ops = { .page_free = held_free, .migrate_to_ram = vram_to_ram };
static char other_owner;

struct discarder {
	void *p;
	int ret;
};

static void *discard_page(void *arg)
{
	struct discarder *t = arg;

	t->ret = madvise(t->p, PAGE, MADV_DONTNEED);
	return NULL;
}

/* Move the page at @p into @pg's first page (data copied there, as vram_to_ram() reads it). */
static void page_to_vram(struct uhmm_mm *mm, struct uhmm_pagemap *pg, void *p)
{
	struct uhmm_page *page = uhmm_pagemap_page(pg, 0);
	uint64_t src, dst;
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p, .end = (uintptr_t)p + PAGE,
		.pgmap_owner = vram, .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};

	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 1);
	ASSERT_OK(uhmm_page_init(page));
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, vram, PAGE, 0), (ssize_t)PAGE);
	dst = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_TRUE(src & UHMM_MIGRATE_PFN_MIGRATE);
}

TEST(inject_discard_of_a_page_another_migration_holds_frees_it)
{
	struct discarder t = { .p = filled(1) };
	struct uhmm_pagemap_stats st;
	struct uhmm_pagemap *pg;
	struct uhmm_mm *mm;
	uint64_t src, dst, before;
	pthread_t th;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_pagemap_add(mm, 1, vram, &held_ops, NULL, &pg));
	page_to_vram(mm, pg, t.p);
	atomic_store(&held_frees, 0);

	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)t.p, .end = (uintptr_t)t.p + PAGE,
		.pgmap_owner = &other_owner,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM | UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
	};

	before = injected();
	ASSERT_OK(uhmm_fault_inject("drop_delay:200000:1:1"));
	ASSERT_OK(pthread_create(&th, NULL, discard_page, &t));
	while (injected() == before)	/* the discard marked the page dropped, and sleeps before its call */
		usleep(1000);
	ASSERT_OK(uhmm_migrate_vma_setup(&m));	/* claims the entry: not its owner's page */
	ASSERT_EQ(m.cpages, 0);
	pthread_join(th, NULL);	/* the discard is over: it passed the held entry by */
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_OK(t.ret);
	ASSERT_EQ(frees(), 0);	/* still held */
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);

	ASSERT_EQ(frees(), 1);	/* the release freed it, once */
	ASSERT_OK(uhmm_pagemap_stats(pg, &st));
	ASSERT_EQ(st.allocated, 0);
	ASSERT_EQ(st.mapped, 0);
	ASSERT_EQ(*(volatile int *)t.p, 0);	/* discarded: the CPU reads zeros */
	ASSERT_OK(uhmm_pagemap_remove(pg));	/* no page left referenced */
	uhmm_mm_put(mm);
}
