// SPDX-License-Identifier: MIT
/*
 * uhmm demo: mirror an ordinary malloc'ed buffer into the reference device,
 * let the device read and write it, invalidate parts of it with madvise()
 * and munmap(), and say what happened.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "uhmm.h"
#include "../src/include/uhmm.h"
#include "../src/include/uhmm/dmirror.h"

#define DEMO_PAGES 2048			/* 8 MiB */
#define DEMO_PAGE 4096UL

/* A notifier of our own, to count what uhmm reports on the buffer. */
struct counter {
	struct uhmm_interval_notifier n;
	unsigned long events[8];
};

static bool count_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *r,
			     unsigned long seq)
{
	struct counter *c = (struct counter *)sub;

	uhmm_interval_set_seq(sub, seq);
	if (r->event < 8)
		__atomic_fetch_add(&c->events[r->event], 1, __ATOMIC_RELAXED);
	return true;
}
static const struct uhmm_interval_notifier_ops count_ops = { .invalidate = count_invalidate };

static double ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Migrate 3 MiB to the device, let it work there, and let the CPU fault it back. */
static int migrate_phase(struct uhmm_dmirror *dev, char *buf, char *dbuf)
{
	const uint64_t n = 768;	/* pages: 3 MiB, inside what steps 4-5 left mapped */
	struct uhmm_dmirror_cmd c = { .addr = (uintptr_t)buf, .ptr = (uintptr_t)dbuf, .npages = n };
	struct uhmm_pagemap_stats st;
	struct timespec t0;
	double ms;
	int ret;
	long sum = 0;

	for (uint64_t i = 0; i < n * DEMO_PAGE; i++)
		buf[i] = (char)('A' + i % 26);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_MIGRATE_TO_DEV, &c);
	ms = ms_since(&t0);
	uhmm_dmirror_memstats(dev, &st);
	printf("6. MIGRATE_TO_DEV of 3 MiB: %d, %llu pages now in device memory (%llu device pages in use), %.2f ms\n",
	       ret, (unsigned long long)c.cpages, (unsigned long long)st.mapped, ms);
	memset(dbuf, 'z', n * DEMO_PAGE);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_WRITE, &c);
	printf("7. the device writes 'z' into its own memory: %d, %llu fault passes, %.2f ms\n", ret,
	       (unsigned long long)c.faults, ms_since(&t0));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint64_t i = 0; i < n * DEMO_PAGE; i += DEMO_PAGE)
		sum += buf[i] == 'z';	/* each first touch migrates the page back */
	ms = ms_since(&t0);
	uhmm_dmirror_memstats(dev, &st);
	printf("8. the CPU touches every page: %ld of %llu read 'z', faulted back in %.2f ms (%.1f us/page);\n"
	       "   device pages in use afterwards: %llu\n",
	       sum, (unsigned long long)n, ms, ms * 1000 / (double)n, (unsigned long long)st.mapped);
	return sum == (long)n && st.mapped == 0 ? 0 : -1;
}

static int run(struct uhmm_dmirror *dev, struct uhmm_mm *mm, char *buf, char *dbuf)
{
	struct uhmm_dmirror_cmd c = { .addr = (uintptr_t)buf, .ptr = (uintptr_t)dbuf, .npages = DEMO_PAGES };
	struct counter cnt = { 0 };
	struct timespec t0;
	int ret;

	if (uhmm_interval_notifier_insert(&cnt.n, mm, (uintptr_t)buf, DEMO_PAGES * DEMO_PAGE, &count_ops))
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_READ, &c);
	printf("1. device READ of %d pages: %d, %llu pages copied in %llu fault pass(es), %.2f ms\n",
	       DEMO_PAGES, ret, (unsigned long long)c.cpages, (unsigned long long)c.faults, ms_since(&t0));
	printf("   data matches the CPU's: %s\n", memcmp(buf, dbuf, DEMO_PAGES * DEMO_PAGE) ? "NO" : "yes");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_READ, &c);
	printf("2. again, served from the device page table: %llu fault passes, %.2f ms\n",
	       (unsigned long long)c.faults, ms_since(&t0));

	memset(dbuf, 'D', DEMO_PAGES * DEMO_PAGE);
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_WRITE, &c);
	printf("3. device WRITE: %d, %llu fault passes (the mapped pages were already writable); CPU sees '%c'\n",
	       ret, (unsigned long long)c.faults, buf[12345]);

	madvise(buf, 256 * DEMO_PAGE, MADV_DONTNEED);
	c.npages = 256;
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_READ, &c);
	printf("4. madvise(DONTNEED) of 1 MiB: %lu CLEAR invalidation(s); the device re-faults "
	       "(%llu pass) and reads zeros: %s\n",
	       cnt.events[UHMM_NOTIFY_CLEAR], (unsigned long long)c.faults, dbuf[0] == 0 ? "yes" : "NO");

	munmap(buf + 1024 * DEMO_PAGE, 256 * DEMO_PAGE);
	c.addr = (uintptr_t)buf + 1024 * DEMO_PAGE;
	ret = uhmm_dmirror_cmd(dev, UHMM_DMIRROR_READ, &c);
	printf("5. munmap of 1 MiB: %lu UNMAP invalidation(s); a device READ there gets %s (not a crash)\n",
	       cnt.events[UHMM_NOTIFY_UNMAP], ret == -14 ? "-EFAULT" : "something else");
	uhmm_interval_notifier_remove(&cnt.n);
	return migrate_phase(dev, buf + 256 * DEMO_PAGE, dbuf);
}

int cmd_demo(int argc, char **argv)
{
	struct uhmm_dmirror *dev;
	struct uhmm_mm *mm;
	char *buf, *dbuf;
	int ret;

	(void)argc;
	(void)argv;
	ret = uhmm_dmirror_open(0, &dev);
	if (ret) {
		fprintf(stderr, "uhmm demo: cannot open the reference device: %s (see 'uhmm info')\n",
			strerror(-ret));
		return 1;
	}
	uhmm_mm_get(&mm);
	/* aligned_alloc of 8 MiB: ordinary heap memory (glibc maps it privately). */
	buf = aligned_alloc(DEMO_PAGE, DEMO_PAGES * DEMO_PAGE);
	dbuf = malloc(DEMO_PAGES * DEMO_PAGE);
	if (!buf || !dbuf)
		return 1;
	for (size_t i = 0; i < DEMO_PAGES * DEMO_PAGE; i++)
		buf[i] = (char)('a' + i % 26);
	printf("uhmm demo: an 8 MiB malloc'ed buffer mirrored into reference device 0\n");
	ret = run(dev, mm, buf, dbuf);
	uhmm_mm_put(mm);
	uhmm_dmirror_close(dev);
	return ret ? 1 : 0;
}
