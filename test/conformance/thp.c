// SPDX-License-Identifier: MIT
/*
 * Huge pages in migration (the kernel's migrate_anon_huge_* scenarios): a
 * 2 MiB unit (a THP, 2 MiB of holes or the huge zero page) migrates to the
 * device whole, comes back whole on a CPU touch, falls back to base pages
 * when the device (or the system) cannot give 2 MiB (FAIL_ALLOC), and
 * partial munmap / mremap of a device-resident unit keep every surviving
 * byte. "Whole" is observed through uhmm_stats().units_migrated and the
 * number of CPU faults it took to bring the unit back. A unit the device
 * copies lands back as base pages (MADV_COLLAPSE makes it a THP again:
 * migrate_anon_huge_fault); one that moves (zero copy) stays a THP both
 * ways (migrate_anon_huge_stays_huge_both_ways).
 */
#include <string.h>
#include <sys/mman.h>

#include "../harness.h"
#include "../../tools/smaps.h"

#define UNIT_INTS (TWO_MB / sizeof(int))
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25	/* Linux 6.1 */
#endif

static struct uhmm_stats stats(void)
{
	struct uhmm_stats s;

	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), sizeof(s));
	return s;
}

/* 2 MiB-aligned, THP allowed. */
static int *thp_region(void)
{
	int *p = map_anon_aligned(TWO_MB, TWO_MB);

	if (!thp_available())
		SKIP("transparent huge pages are off");
	ASSERT_OK(madvise(p, TWO_MB, MADV_HUGEPAGE));
	return p;
}

/* KiB of @p's mapping that smaps shows as THP. */
static long thp_kib(const void *p)
{
	long kib = smaps_thp_kib(p);

	ASSERT_GE(kib, 0);	/* smaps readable */
	return kib;
}

/* A THP full of the kernel test's pattern (int i holds i). */
static int *filled_thp(void)
{
	int *p = thp_region();
	struct uhmm_features feat;

	uhmm_query_features(&feat);
	if ((feat.flags & UHMM_FEAT_FALLBACK_FORCED) && !(feat.flags & UHMM_FEAT_KPAGEFLAGS))
		SKIP("the fallback path needs /proc/kpageflags to see THP");
	fill_ints(p, TWO_MB, 1);
	if (thp_kib(p) < 2048)
		SKIP("the kernel gave no THP here (fragmented memory)");
	return p;
}

static void to_device(struct uhmm_dmirror *d, int *p, int *mirror)
{
	struct uhmm_dmirror_cmd c;

	memset(mirror, 0xff, TWO_MB);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 512, &c));
	ASSERT_EQ(c.cpages, 512);
}

static void check_zero(const int *p)
{
	for (size_t i = 0; i < UNIT_INTS; i++)
		ASSERT_EQ(p[i], 0);
}

/* A unit on the device, then one CPU touch brings all of it back: one fault, one unit. */
static void faults_back_whole(const int *p, int sign_or_zero)
{
	struct uhmm_stats a = stats(), b;
	struct uhmm_mm *mm;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(p[UNIT_INTS / 2], sign_or_zero ? (int)(UNIT_INTS / 2) : 0);	/* the touch */
	ASSERT_OK(uhmm_mm_sync(mm));	/* the fault's accounting is done */
	uhmm_mm_put(mm);
	b = stats();
	ASSERT_EQ(b.units_migrated - a.units_migrated, 1);
	ASSERT_EQ(b.faults - a.faults, 1);
	if (sign_or_zero)
		check_ints(p, TWO_MB, 1);
	else
		check_zero(p);
	ASSERT_EQ(stats().faults - a.faults, 1);	/* the other 511 pages came with it */
}

TEST(migrate_anon_huge_empty)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = thp_region(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t units = stats().units_migrated;

	to_device(d, p, mirror);
	ASSERT_EQ(stats().units_migrated - units, 1);
	check_zero(mirror);
	faults_back_whole(p, 0);
	ASSERT_OK(uhmm_dmirror_close(d));
}

TEST(migrate_anon_huge_zero)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = thp_region(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t units;

	ASSERT_EQ(((volatile int *)p)[0], 0);	/* the (huge) zero page */
	units = stats().units_migrated;
	to_device(d, p, mirror);
	ASSERT_EQ(stats().units_migrated - units, 1);
	check_zero(mirror);
	faults_back_whole(p, 0);
	ASSERT_OK(uhmm_dmirror_close(d));
}

TEST(migrate_anon_huge_fault)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t units = stats().units_migrated;

	to_device(d, p, mirror);
	ASSERT_EQ(stats().units_migrated - units, 1);
	check_ints(mirror, TWO_MB, 1);
	faults_back_whole(p, 1);
	/* it came back as base pages: MADV_COLLAPSE makes it a THP again, and it goes whole again */
	ASSERT_OK(madvise(p, TWO_MB, MADV_COLLAPSE));
	ASSERT_EQ(thp_kib(p), 2048);
	check_ints(p, TWO_MB, 1);
	to_device(d, p, mirror);
	ASSERT_EQ(stats().units_migrated - units, 3);
	faults_back_whole(p, 1);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/*
 * Zero copy keeps a THP a THP both ways (the reference device's memory is
 * host memory: the unit's PMD moves), also through device memory that
 * held base pages before: their empty page table must not make the
 * kernel split the THP on its way in (it did: a quarter of the units of
 * uhmm bench --thp came back as base pages).
 */
static long vm_pte_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");

	ASSERT_TRUE(f);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmPTE:", 6))
			kib = atol(line + 6);
	fclose(f);
	return kib;
}

/* Does MADV_DONTNEED free an empty page table here (CONFIG_PT_RECLAIM)? Watched in VmPTE. */
static bool madvise_frees_page_tables(void)
{
	char *p = map_anon_aligned(8 * TWO_MB, TWO_MB);
	long before, after;

	ASSERT_OK(madvise(p, 8 * TWO_MB, MADV_NOHUGEPAGE));
	for (int i = 0; i < 8; i++)
		p[(size_t)i * TWO_MB] = 1;	/* one page table each */
	before = vm_pte_kib();
	ASSERT_OK(madvise(p, 8 * TWO_MB, MADV_DONTNEED));
	after = vm_pte_kib();
	ASSERT_OK(munmap(p, 8 * TWO_MB));
	return before - after >= 16;	/* most of the eight 4 KiB tables */
}

TEST(migrate_anon_huge_stays_huge_both_ways)
{
	struct uhmm_dmirror *d;
	int *base, *mirror;
	struct uhmm_dmirror_cmd c;
	struct uhmm_features f;
	bool moves;
	int *p;

	uhmm_query_features(&f);
	/* without UFFDIO_MOVE (fallback mode) a unit is copied and comes back as base pages: data only */
	moves = (f.flags & UHMM_FEAT_UFFD_MOVE) && !(f.flags & UHMM_FEAT_FALLBACK_FORCED);
	if (moves && !madvise_frees_page_tables())
		SKIP("MADV_DONTNEED keeps empty page tables on this kernel (no CONFIG_PT_RECLAIM): a THP moving into memory that held base pages is split");
	d = dmirror(0);
	base = map_anon_aligned(4 * TWO_MB, TWO_MB);
	mirror = map_anon(4 * TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	ASSERT_OK(madvise(base, 4 * TWO_MB, MADV_NOHUGEPAGE));	/* base pages through the device's memory first */
	fill_ints(base, 4 * TWO_MB, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, base, mirror, 4 * 512, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, base, mirror, 4 * 512, &c));
	check_ints(base, 4 * TWO_MB, 1);
	p = filled_thp();
	for (int round = 0; round < 4; round++) {
		to_device(d, p, mirror);
		check_ints(mirror, TWO_MB, 1);
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, mirror, 512, &c));
		if (moves)
			ASSERT_EQ(thp_kib(p), 2048);
		check_ints(p, TWO_MB, 1);
	}
	ASSERT_OK(uhmm_dmirror_close(d));
}

static void snapshot_is(struct uhmm_dmirror *d, void *p, int npages, uint8_t want)
{
	uint8_t *snap = malloc((size_t)npages);
	struct uhmm_dmirror_cmd c;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, snap, (uint64_t)npages, &c));
	for (int i = 0; i < npages; i++)
		ASSERT_EQ(snap[i], want);
	free(snap);
}

/* A unit on the device is mapped (mirrored) as one: PMD order, as a device THP in the kernel. */
TEST(migrate_anon_huge_snapshot)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	const uint8_t local = UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE;

	to_device(d, p, mirror);
	snapshot_is(d, p, 512, local | UHMM_DMIRROR_PROT_PMD);
	ASSERT_OK(madvise(p, PAGE, MADV_DONTNEED));	/* one page gone: no longer a unit */
	snapshot_is(d, (char *)p + PAGE, 511, local);	/* ... the rest are 4 KiB pages */
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* MADV_FREE of a device-resident THP: accepted; a page reads its data or zeros, nothing else. */
TEST(migrate_anon_huge_free)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	to_device(d, p, mirror);
	check_ints(mirror, TWO_MB, 1);
	ASSERT_OK(madvise(p, TWO_MB, MADV_FREE));
	for (size_t i = 0; i < UNIT_INTS; i++)
		ASSERT_TRUE(p[i] == (int)i || p[i] == 0);
	ASSERT_OK(uhmm_dmirror_close(d));
}

static void fail_next_alloc(struct uhmm_dmirror *d)
{
	struct uhmm_dmirror_cmd c;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_FLAGS, NULL, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c));
}

/*
 * The device cannot allocate 2 MiB: the THP goes page by page (no unit);
 * and a unit coming back when the system cannot give 2 MiB comes page by page.
 */
TEST(migrate_anon_huge_err)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *q = thp_region();
	struct uhmm_dmirror_cmd c;
	uint64_t units = stats().units_migrated;

	fail_next_alloc(d);
	to_device(d, p, mirror);
	ASSERT_EQ(stats().units_migrated, units);
	check_ints(mirror, TWO_MB, 1);
	check_ints(p, TWO_MB, 1);	/* back by CPU faults, page by page */
	/* 2 MiB of holes as a unit to the device, back page by page */
	to_device(d, q, mirror);
	ASSERT_EQ(stats().units_migrated - units, 1);
	fail_next_alloc(d);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, q, mirror, 512, &c));
	ASSERT_EQ(c.cpages, 512);
	ASSERT_EQ(stats().units_migrated - units, 1);
	check_zero(q);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* The huge zero page when the device cannot allocate 2 MiB: page by page, reads zeros. */
TEST(migrate_anon_huge_zero_err)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = thp_region(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t units;

	ASSERT_EQ(((volatile int *)p)[0], 0);
	units = stats().units_migrated;
	fail_next_alloc(d);
	to_device(d, p, mirror);
	ASSERT_EQ(stats().units_migrated, units);
	check_zero(mirror);
	check_zero(p);
	ASSERT_EQ(stats().units_migrated, units);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* munmap of half a device-resident unit: the other half keeps its data (page by page now). */
TEST(migrate_anon_huge_partial_unmap)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t units;

	to_device(d, p, mirror);
	ASSERT_OK(munmap(p, TWO_MB / 2));
	units = stats().units_migrated;
	check_ints_from(p, UNIT_INTS / 2, TWO_MB / 2, 1);
	ASSERT_EQ(stats().units_migrated, units);	/* no longer a unit */
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* mremap of a device-resident unit to another 2 MiB boundary: still a unit, data intact. */
TEST(migrate_anon_huge_remap)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *to = map_anon_aligned(TWO_MB, TWO_MB), *q;

	to_device(d, p, mirror);
	q = mremap(p, TWO_MB, TWO_MB, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	ASSERT_TRUE(q == to);
	faults_back_whole(q, 1);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* mremap to an address that is not 2 MiB-aligned: the unit cannot stay one; every byte does. */
TEST(migrate_anon_huge_remap_unaligned)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = filled_thp(), *mirror = map_anon(TWO_MB, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *to = (char *)map_anon_aligned(TWO_MB + 2 * TWO_MB, TWO_MB) + PAGE;
	int *q;

	to_device(d, p, mirror);
	q = mremap(p, TWO_MB, TWO_MB, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	ASSERT_TRUE(q == (int *)to);
	snapshot_is(d, q, 512, UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);	/* no PMD here */
	check_ints(q, TWO_MB, 1);
	ASSERT_OK(uhmm_dmirror_close(d));
}
