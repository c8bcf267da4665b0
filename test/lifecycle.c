// SPDX-License-Identifier: MIT
/*
 * Teardown and lifecycle with device-resident memory: a process that exits
 * or execs while pages live on a device, a device closed while other threads
 * fault on its pages. (The application's own userfaultfd on a range:
 * foreign_userfaultfd_refused in migrate_api.c; a notifier removed while an
 * invalidation is in flight: notifier_remove_waits_for_invalidation in
 * notifier.c; the mm released at exit: mm_release_at_exit in mm.c.)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "harness.h"

#define NPAGES 64

/* Data on the device, then leave without closing anything. */
static int *migrated_buffer(struct uhmm_dmirror **dp)
{
	struct uhmm_dmirror_cmd c;
	int *p = map_anon(NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE), *buf = malloc(NPAGES * PAGE);

	*dp = dmirror(0);
	fill_ints(p, NPAGES * PAGE, 1);
	ASSERT_OK(dmcmd(*dp, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	free(buf);
	return p;
}

static void child_exits(void *arg)
{
	struct uhmm_dmirror *d;

	(void)arg;
	(void)migrated_buffer(&d);
	exit(5);	/* the library's destructors run with the pages on the device */
}

/* exit() with device-resident pages: the process ends, promptly, with its status. */
TEST(exit_with_device_resident_memory)
{
	skip_if_asan_fork_threads();
	ASSERT_EQ(run_child(child_exits, NULL), 5);
}

static void child_execs(void *arg)
{
	struct uhmm_dmirror *d;

	(void)arg;
	(void)migrated_buffer(&d);
	execl("/bin/sh", "sh", "-c", "exit 7", (char *)NULL);
	_exit(99);	/* exec failed */
}

/* exec() with device-resident pages: the new program starts and its status comes back. */
TEST(exec_with_device_resident_memory)
{
	skip_if_asan_fork_threads();
	ASSERT_EQ(run_child(child_execs, NULL), 7);
}

struct reader {
	const int *p;
	atomic_long bad;
	atomic_int started;
};

static void *read_all(void *arg)
{
	struct reader *r = arg;

	atomic_fetch_add(&r->started, 1);
	for (int round = 0; round < 4; round++)
		for (size_t i = 0; i < NPAGES * PAGE / sizeof(int); i += 97)
			if (r->p[i] != (int)i)
				atomic_fetch_add(&r->bad, 1);
	return NULL;
}

/*
 * The device goes away while two threads fault its pages back: close()
 * evicts what they have not taken yet, every read sees the data, and
 * nothing is left on the (closed) device.
 */
TEST(device_closed_while_threads_fault)
{
	struct uhmm_dmirror *d;
	struct reader r = { 0 };
	pthread_t t[2];

	r.p = migrated_buffer(&d);
	for (int i = 0; i < 2; i++)
		ASSERT_OK(pthread_create(&t[i], NULL, read_all, &r));
	while (atomic_load(&r.started) < 2)
		sched_yield();
	ASSERT_OK(uhmm_dmirror_close(d));
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	ASSERT_EQ(atomic_load(&r.bad), 0);
	check_ints(r.p, NPAGES * PAGE, 1);
}

/* The [heap] mapping (brk), or false when malloc does not use one here. */
static bool find_heap(uint64_t *start, uint64_t *end)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	bool found = false;

	ASSERT_TRUE(f);
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long long s, e;

		if (strstr(line, "[heap]") && sscanf(line, "%llx-%llx", &s, &e) == 2) {
			*start = s;
			*end = e;
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* Migrate [start, end) to device @d; returns the pages it moved. */
static uint64_t migrate_span(struct uhmm_dmirror *d, uint64_t start, uint64_t end)
{
	uint64_t npages = (end - start) / PAGE;
	void *out = map_anon(npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_dmirror_cmd c;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, (void *)(uintptr_t)start, out, npages, &c));
	ASSERT_EQ(munmap(out, npages * PAGE), 0);	/* an event: the service thread works */
	return c.cpages;
}

/*
 * The program migrates its heap to a device (a kernel driver may do that to
 * any anonymous memory): the whole [heap] where malloc uses brk, and every
 * page that holds one of its buffers (under a sanitizer, malloc's own
 * mappings). uhmm's service thread, faulting those pages back, must touch
 * none of them: were uhmm's own data (its mm, its radix nodes, the driver's
 * page tables) on the heap next to the program's buffers, the thread would
 * fault on a page only it can bring back, and hang (it did). Afterwards
 * every byte of the program's buffers is where it was.
 */
TEST(heap_migrated_to_a_device)
{
	enum { NBUF = 256 };
	struct uhmm_dmirror *d = dmirror(0);
	int *p = map_anon(NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	unsigned char *bufs[NBUF];
	uint64_t hs, he, moved = 0;

	/* program data on the heap, before and after uhmm allocates its state */
	for (int i = 0; i < NBUF / 2; i++)
		memset(bufs[i] = malloc(64 + (size_t)i * 61), i, 64 + (size_t)i * 61);
	fill_ints(p, NPAGES * PAGE, 1);
	ASSERT_EQ(migrate_span(d, (uintptr_t)p, (uintptr_t)p + NPAGES * PAGE), NPAGES);
	for (int i = NBUF / 2; i < NBUF; i++)
		memset(bufs[i] = malloc(64 + (size_t)i * 61), i, 64 + (size_t)i * 61);

	if (find_heap(&hs, &he))
		moved += migrate_span(d, hs, he);
	for (int i = 0; i < NBUF; i++) {
		uint64_t a = (uintptr_t)bufs[i] & ~(PAGE - 1);
		uint64_t e = ((uintptr_t)bufs[i] + 64 + (uint64_t)i * 61 + PAGE - 1) & ~(PAGE - 1);

		moved += migrate_span(d, a, e);	/* pages already on the device count 0 */
	}
	ASSERT_GT(moved, 0);
	/* now make the service thread work: faults on device pages, events */
	check_ints(p, NPAGES * PAGE, 1);
	for (int i = 0; i < NBUF; i++) {
		for (size_t j = 0; j < 64 + (size_t)i * 61; j++)
			ASSERT_EQ(bufs[i][j], (unsigned char)i);
		free(bufs[i]);
	}
	ASSERT_OK(uhmm_dmirror_close(d));
}
