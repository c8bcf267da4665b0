// SPDX-License-Identifier: MIT
/*
 * The VMA list of the calling process: PROCMAP_QUERY (6.11+), one ioctl per
 * VMA, or a parse of /proc/self/maps when the ioctl is missing or
 * UHMM_FORCE_FALLBACK is set.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"
#include "../uapi/uhmm_uapi.h"

/*
 * Mappings the kernel treats as VM_IO / VM_PFNMAP / VM_MIXEDMAP special:
 * hmm_range_fault() refuses to fault them. [vdso] is ordinary text.
 */
static bool vma_name_special(const char *name)
{
	return strncmp(name, "[vvar", 5) == 0 || strcmp(name, "[vsyscall]") == 0;
}

static uint32_t vma_flags_from(bool r, bool w, bool x, bool shared, bool file, const char *name)
{
	uint32_t f = 0;

	f |= r ? UHMM_VMA_READ : 0;
	f |= w ? UHMM_VMA_WRITE : 0;
	f |= x ? UHMM_VMA_EXEC : 0;
	f |= shared ? UHMM_VMA_SHARED : 0;
	f |= file ? UHMM_VMA_FILE : 0;
	f |= vma_name_special(name) ? UHMM_VMA_SPECIAL : 0;
	return f;
}

static int vma_list_query(uint64_t start, uint64_t end, struct uhmm_vma *out, int max)
{
	int fd = uhmm_proc_fd(UHMM_PROC_MAPS), n = 0;
	uint64_t addr = start;
	char name[64];

	if (fd < 0)
		return fd;
	while (addr < end) {
		struct procmap_query q = {
			.size = sizeof(q), .query_addr = addr,
			.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
			.vma_name_addr = (uintptr_t)name, .vma_name_size = sizeof(name),
		};

		name[0] = '\0';
		if (ioctl(fd, PROCMAP_QUERY, &q) < 0) {
			if (errno == ENOENT)
				break;
			/* A name longer than the buffer: ask again without it. */
			if (errno != ENAMETOOLONG)
				return -errno;
			q.vma_name_size = 0;
			q.vma_name_addr = 0;
			if (ioctl(fd, PROCMAP_QUERY, &q) < 0)
				return errno == ENOENT ? n : -errno;
		}
		if (q.vma_start >= end)
			break;
		if (n < max) {
			out[n].start = q.vma_start;
			out[n].end = q.vma_end;
			out[n].flags = vma_flags_from(q.vma_flags & PROCMAP_QUERY_VMA_READABLE,
						      q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE,
						      q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE,
						      q.vma_flags & PROCMAP_QUERY_VMA_SHARED,
						      q.inode != 0, name);
			out[n].page_shift = (uint32_t)__builtin_ctzll(q.vma_page_size ? q.vma_page_size
										    : UHMM_PAGE_SIZE);
			if (out[n].page_shift > UHMM_PAGE_SHIFT)
				out[n].flags |= UHMM_VMA_HUGETLB;
		}
		n++;
		addr = q.vma_end;
	}
	return n;
}

static uint32_t default_hugetlb_shift(void)
{
	static uint32_t shift;
	struct uhmm_lines f;
	char line[128];

	if (shift)
		return shift;
	shift = UHMM_PMD_SHIFT;
	if (uhmm_lines_open(&f, "/proc/meminfo"))
		return shift;
	while (uhmm_lines_next(&f, line, sizeof(line))) {
		unsigned long kb;

		if (sscanf(line, "Hugepagesize: %lu kB", &kb) == 1 && kb)
			shift = (uint32_t)__builtin_ctzl(kb * 1024);
	}
	uhmm_lines_close(&f);
	return shift;
}

/*
 * The page size of the hugetlb VMA at @start: maps does not say it (1 GiB
 * pages and 2 MiB pages look alike there), smaps does (KernelPageSize).
 * The default huge page size if it cannot be read.
 */
static uint32_t hugetlb_shift_at(uint64_t start)
{
	struct uhmm_lines f;
	char line[256];
	bool in = false;
	uint32_t shift = default_hugetlb_shift();

	if (uhmm_lines_open(&f, "/proc/self/smaps"))
		return shift;
	while (uhmm_lines_next(&f, line, sizeof(line))) {
		unsigned long long s, e, kb;

		if (sscanf(line, "%llx-%llx ", &s, &e) == 2) {
			if (in)
				break;
			in = s == start;
		} else if (in && sscanf(line, "KernelPageSize: %llu kB", &kb) == 1 && kb) {
			shift = (uint32_t)__builtin_ctzll(kb * 1024);
			break;
		}
	}
	uhmm_lines_close(&f);
	return shift;
}

/* Parse one /proc/self/maps line into @v. Returns false on a malformed line. */
static bool vma_parse_line(const char *line, struct uhmm_vma *v)
{
	unsigned long long s, e, ino;
	char perms[5], name[256] = "";
	int consumed = 0;

	if (sscanf(line, "%llx-%llx %4s %*s %*s %llu%n", &s, &e, perms, &ino, &consumed) != 4)
		return false;
	sscanf(line + consumed, " %255[^\n]", name);
	v->start = s;
	v->end = e;
	v->flags = vma_flags_from(perms[0] == 'r', perms[1] == 'w', perms[2] == 'x',
				  perms[3] == 's', ino != 0, name);
	v->page_shift = UHMM_PAGE_SHIFT;
	/* maps does not say the page size: a MAP_HUGETLB mapping has this name. */
	if (strncmp(name, "/anon_hugepage", 14) == 0) {
		v->flags |= UHMM_VMA_HUGETLB;
		v->page_shift = hugetlb_shift_at(s);
	}
	return true;
}

static int vma_list_maps(uint64_t start, uint64_t end, struct uhmm_vma *out, int max)
{
	struct uhmm_lines f;
	char line[512];
	int n = 0, ret = uhmm_lines_open(&f, "/proc/self/maps");

	if (ret)
		return ret;
	while (uhmm_lines_next(&f, line, sizeof(line))) {
		struct uhmm_vma v;

		if (!vma_parse_line(line, &v) || v.end <= start)
			continue;
		if (v.start >= end)
			break;
		if (n < max)
			out[n] = v;
		n++;
	}
	uhmm_lines_close(&f);
	return n;
}

int uhmm_vma_list(uint64_t start, uint64_t end, struct uhmm_vma *out, int max)
{
	uhmm_stat_add(UHMM_STAT(vma_lookups), 1);
	if (uhmm_has(UHMM_FEAT_PROCMAP_QUERY))
		return vma_list_query(start, end, out, max);
	return vma_list_maps(start, end, out, max);
}

bool uhmm_vmas_cover(const struct uhmm_vma *v, int n, uint64_t start, uint64_t end)
{
	if (n <= 0 || v[0].start > start || v[n - 1].end < end)
		return false;
	for (int i = 1; i < n; i++)
		if (v[i].start != v[i - 1].end)
			return false;
	return true;
}

bool uhmm_vma_covers(uint64_t start, uint64_t end)
{
	struct uhmm_vma v[8];
	int n = uhmm_vma_list(start, end, v, UHMM_ARRAY_SIZE(v));

	return n <= (int)UHMM_ARRAY_SIZE(v) && uhmm_vmas_cover(v, n, start, end);
}
