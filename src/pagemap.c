// SPDX-License-Identifier: MIT
/*
 * Per-page CPU page-table state from /proc/self/pagemap.
 *
 * Fast path: the PAGEMAP_SCAN ioctl (6.7+) returns runs of pages with the
 * same categories (present, swapped, file, zero page, huge) in one call, and
 * needs no privilege to see the zero page or huge mappings. It does not say
 * whether a private page is exclusively mapped (bit 56 of a pagemap entry),
 * which decides write permission after fork(): that bit is read with
 * pread() only for the runs where it matters.
 *
 * Fallback: pread() of the pagemap entries; the zero page and THP are then
 * recognised only where PFNs (and /proc/kpageflags) are visible.
 */
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"
#include "../uapi/uhmm_uapi.h"

#define PM_BATCH 512

static int pagemap_pread(uint64_t vpn, uint64_t *ent, size_t n)
{
	int fd = uhmm_proc_fd(UHMM_PROC_PAGEMAP);
	ssize_t got;

	if (fd < 0)
		return fd;
	got = pread(fd, ent, n * sizeof(*ent), (off_t)(vpn * sizeof(*ent)));
	if (got < 0)
		return -errno;
	if ((size_t)got != n * sizeof(*ent))
		return -EIO;
	return 0;
}

/* Mark the pages of [start, end) that are mapped exclusively by us. */
static int pagemap_read_exclusive(uint64_t start, uint64_t end, uint64_t base, uint8_t *state)
{
	uint64_t ent[PM_BATCH];

	for (uint64_t a = start; a < end;) {
		size_t n = (size_t)((end - a) >> UHMM_PAGE_SHIFT);
		int ret;

		n = n > PM_BATCH ? PM_BATCH : n;
		ret = pagemap_pread(a >> UHMM_PAGE_SHIFT, ent, n);
		if (ret)
			return ret;
		for (size_t i = 0; i < n; i++)
			if (ent[i] & PM_MMAP_EXCLUSIVE)
				state[((a - base) >> UHMM_PAGE_SHIFT) + i] |= UHMM_PTE_EXCLUSIVE;
		a += n << UHMM_PAGE_SHIFT;
	}
	return 0;
}

static uint8_t scan_categories_to_state(uint64_t c)
{
	uint8_t s = 0;

	s |= (c & PAGE_IS_PRESENT) ? UHMM_PTE_PRESENT : 0;
	s |= (c & PAGE_IS_SWAPPED) ? UHMM_PTE_SWAPPED : 0;
	s |= (c & PAGE_IS_FILE) ? UHMM_PTE_FILE : 0;
	s |= (c & PAGE_IS_PFNZERO) ? UHMM_PTE_ZERO : 0;
	s |= (c & PAGE_IS_HUGE) ? UHMM_PTE_HUGE : 0;
	return s;
}

static int pagemap_scan(uint64_t start, uint64_t end, uint8_t *state, unsigned int need)
{
	int fd = uhmm_proc_fd(UHMM_PROC_PAGEMAP);
	struct page_region vec[128];
	struct pm_scan_arg arg = {
		.size = sizeof(arg), .start = start, .end = end,
		.vec = (uintptr_t)vec, .vec_len = UHMM_ARRAY_SIZE(vec),
		.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE |
			       ((need & UHMM_PM_FILE) ? PAGE_IS_FILE : 0),
	};

	if (fd < 0)
		return fd;
	while (arg.start < end) {
		long n = ioctl(fd, PAGEMAP_SCAN, &arg);

		if (n < 0)
			return -errno;
		for (long i = 0; i < n; i++) {
			uint8_t s = scan_categories_to_state(vec[i].categories);
			int ret;

			memset(state + ((vec[i].start - start) >> UHMM_PAGE_SHIFT), s,
			       (vec[i].end - vec[i].start) >> UHMM_PAGE_SHIFT);
			if (!(need & UHMM_PM_EXCL) || (s & (UHMM_PTE_FILE | UHMM_PTE_ZERO)) || !(s & UHMM_PTE_PRESENT))
				continue;
			ret = pagemap_read_exclusive(vec[i].start, vec[i].end, start, state);
			if (ret)
				return ret;
		}
		if (arg.walk_end <= arg.start)
			break;
		arg.start = arg.walk_end;
	}
	return 0;
}

/*
 * A THP mapped by a PMD shows, where PFNs are visible, as 512 present
 * entries with consecutive PFNs starting at a 2 MiB aligned one whose
 * kpageflags say THP.
 */
/* The kernel page flags of a 512-page block mapped by one PMD (pfns in order), or 0. */
static uint64_t pagemap_block_kflags(const uint64_t *ent)
{
	uint64_t pfn0 = ent[0] & PM_PFN_MASK, kflags = 0;
	int kfd;

	if (!(ent[0] & PM_PRESENT) || (pfn0 & 511))
		return 0;
	for (int i = 1; i < 512; i++)
		if (!(ent[i] & PM_PRESENT) || (ent[i] & PM_PFN_MASK) != pfn0 + (uint64_t)i)
			return false;
	kfd = uhmm_proc_fd(UHMM_PROC_KPAGEFLAGS);
	if (kfd < 0 || pread(kfd, &kflags, sizeof(kflags), (off_t)(pfn0 * 8)) != 8)
		return 0;
	return kflags;
}

static uint8_t pread_entry_to_state(uint64_t e, uint64_t zero_pfn)
{
	uint8_t s = 0;

	s |= (e & PM_PRESENT) ? UHMM_PTE_PRESENT : 0;
	s |= (e & PM_SWAP) ? UHMM_PTE_SWAPPED : 0;
	s |= (e & PM_FILE) ? UHMM_PTE_FILE : 0;
	s |= (e & PM_MMAP_EXCLUSIVE) ? UHMM_PTE_EXCLUSIVE : 0;
	if ((e & PM_PRESENT) && zero_pfn && (e & PM_PFN_MASK) == zero_pfn)
		s = (uint8_t)((s | UHMM_PTE_ZERO) & ~UHMM_PTE_EXCLUSIVE);
	return s;
}

static int pagemap_pread_all(uint64_t start, uint64_t end, uint8_t *state)
{
	uint64_t zero_pfn = uhmm_kfeatures_zero_pfn();
	bool thp = uhmm_has(UHMM_FEAT_KPAGEFLAGS);
	uint64_t ent[PM_BATCH];

	for (uint64_t a = start; a < end;) {
		size_t n = (size_t)((end - a) >> UHMM_PAGE_SHIFT);
		uint8_t *st = state + ((a - start) >> UHMM_PAGE_SHIFT);
		uint64_t kflags;
		int ret;

		/* Batches are PMD aligned so that a whole THP lands in one. */
		if (n > PM_BATCH - ((a >> UHMM_PAGE_SHIFT) & (PM_BATCH - 1)))
			n = PM_BATCH - ((a >> UHMM_PAGE_SHIFT) & (PM_BATCH - 1));
		ret = pagemap_pread(a >> UHMM_PAGE_SHIFT, ent, n);
		if (ret)
			return ret;
		for (size_t i = 0; i < n; i++)
			st[i] = pread_entry_to_state(ent[i], zero_pfn);
		kflags = thp && n == PM_BATCH ? pagemap_block_kflags(ent) : 0;
		for (size_t i = 0; (kflags & ((1ULL << KPF_THP) | (1ULL << KPF_HUGE))) && i < n; i++)
			st[i] |= UHMM_PTE_HUGE;
		/* the huge zero page: its pfns are not the zero page's */
		for (size_t i = 0; (kflags & (1ULL << KPF_ZERO_PAGE)) && i < n; i++)
			st[i] = (uint8_t)((st[i] | UHMM_PTE_ZERO) & ~UHMM_PTE_EXCLUSIVE);
		a += n << UHMM_PAGE_SHIFT;
	}
	return 0;
}

int uhmm_pagemap_read(uint64_t start, uint64_t end, uint8_t *state, unsigned int need)
{
	memset(state, 0, (end - start) >> UHMM_PAGE_SHIFT);
	if (uhmm_has(UHMM_FEAT_PAGEMAP_SCAN))
		return pagemap_scan(start, end, state, need);
	return pagemap_pread_all(start, end, state);
}
