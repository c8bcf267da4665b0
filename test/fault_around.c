// SPDX-License-Identifier: MIT
/*
 * The reference device's fault-around (sim/devmem.c, fault_around_pages()):
 * a CPU fault on a device page brings a window back, 16 pages at first,
 * doubling up to 2048 while the faults follow a sequential scan; scans that
 * run at once (two buffers read in turn, or two threads) each keep their
 * own window. Counted with uhmm_stats() faults_device; the data is checked.
 */
#include "harness.h"

#define SCAN_PAGES 4096		/* 16 MiB */

static uint64_t device_faults(void)
{
	struct uhmm_stats s;
	struct uhmm_mm *mm;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_mm_sync(mm));	/* the last fault's count lands after its wake-up */
	uhmm_mm_put(mm);
	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), (long)sizeof(s));
	return s.faults_device;
}

static int *on_device(struct uhmm_dmirror *d)
{
	int *p = map_anon(SCAN_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	void *buf = map_anon(SCAN_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, SCAN_PAGES * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, SCAN_PAGES, &c));
	ASSERT_EQ(c.cpages, SCAN_PAGES);
	ASSERT_OK(munmap(buf, SCAN_PAGES * PAGE));
	return p;
}

/* int i of every page holds i: one read per page, in order */
static void read_page(const int *p, uint64_t page)
{
	uint64_t i = page * PAGE / sizeof(int);

	ASSERT_EQ(p[i], (int)i);
}

/*
 * 16 + 32 + ... + 1024 pages take 7 faults for the first 2032 pages, then
 * 2048, then the last 16: 9 for 4096 pages. Windows that stopped at 512
 * pages would take 13; a window that never grew, 256.
 */
TEST(fault_around_grows_on_a_scan)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = on_device(d);
	uint64_t f0 = device_faults(), n;

	for (uint64_t k = 0; k < SCAN_PAGES; k++)
		read_page(p, k);
	n = device_faults() - f0;
	ASSERT_GE(n, 9);
	ASSERT_LE(n, 11);
	check_ints(p, SCAN_PAGES * PAGE, 1);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/*
 * Two scans in turn, a page of each: each keeps its own window, 9 faults
 * each (with one shared hint each fault broke the other's scan: 512).
 */
TEST(fault_around_two_scans_at_once)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *a = on_device(d), *b = on_device(d);
	uint64_t f0 = device_faults(), n;

	for (uint64_t k = 0; k < SCAN_PAGES; k++) {
		read_page(a, k);
		read_page(b, k);
	}
	n = device_faults() - f0;
	ASSERT_GE(n, 18);
	ASSERT_LE(n, 22);
	check_ints(a, SCAN_PAGES * PAGE, 1);
	check_ints(b, SCAN_PAGES * PAGE, 1);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* Pages far apart: every fault starts a new window of 16 pages, never fewer. */
TEST(fault_around_random_touches_bring_16)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = on_device(d);
	uint64_t f0 = device_faults();

	for (uint64_t k = SCAN_PAGES - 64; k > 0; k -= 64)	/* backwards, 64 apart: no scan */
		read_page(p, k);
	ASSERT_EQ(device_faults() - f0, SCAN_PAGES / 64 - 1);
	for (uint64_t k = SCAN_PAGES - 64; k > 0; k -= 64)	/* each window held 16 pages */
		for (uint64_t j = 1; j < 16; j++)
			read_page(p, k + j);
	ASSERT_EQ(device_faults() - f0, SCAN_PAGES / 64 - 1);
	check_ints(p, SCAN_PAGES * PAGE, 1);
	ASSERT_OK(uhmm_dmirror_close(d));
}
