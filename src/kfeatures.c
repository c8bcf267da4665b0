// SPDX-License-Identifier: MIT
/*
 * What the running kernel offers, probed once per process on throwaway file
 * descriptors and mappings. Decisions are never taken from the build host's
 * headers: a library built against 6.1 headers uses UFFDIO_MOVE on a 6.8+
 * kernel, and one built against new headers still runs on an old kernel.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "internal.h"
#include "../uapi/uhmm_uapi.h"

static struct uhmm_features kf;
static uint64_t zero_pfn;
static pthread_once_t kf_once = PTHREAD_ONCE_INIT;

static long read_long_file(const char *path, long dflt)
{
	char buf[64] = "";
	FILE *f = fopen(path, "re");

	if (!f)
		return dflt;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return dflt;
	}
	fclose(f);
	return strtol(buf, NULL, 10);
}

static void probe_thp(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "re");

	if (!f)
		return;
	if (fgets(buf, sizeof(buf), f) && !strstr(buf, "[never]")) {
		kf.flags |= UHMM_FEAT_THP;
		kf.thp_pmd_size = (uint32_t)read_long_file(
			"/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", UHMM_PMD_SIZE);
	}
	fclose(f);
}

/* Register a scratch page to learn which range ioctls the kernel offers. */
static void probe_uffd_ioctls(int fd, void *page)
{
	uint64_t ioctls = 0;

	if (uhmm_uffd_register(fd, (uintptr_t)page, (uintptr_t)page + UHMM_PAGE_SIZE,
			       UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, &ioctls) == 0) {
		kf.flags |= UHMM_FEAT_UFFD_WP;
	} else if (uhmm_uffd_register(fd, (uintptr_t)page, (uintptr_t)page + UHMM_PAGE_SIZE,
				      UFFDIO_REGISTER_MODE_MISSING, &ioctls) != 0) {
		return;
	}
	kf.uffd_ioctls = ioctls;
	if ((ioctls & (1ULL << _UFFDIO_MOVE)) && (kf.uffd_features & UFFD_FEATURE_MOVE))
		kf.flags |= UHMM_FEAT_UFFD_MOVE;
	if ((ioctls & (1ULL << _UFFDIO_POISON)) && (kf.uffd_features & UFFD_FEATURE_POISON))
		kf.flags |= UHMM_FEAT_UFFD_POISON;
	uhmm_uffd_unregister(fd, (uintptr_t)page, (uintptr_t)page + UHMM_PAGE_SIZE);
}

static void probe_uffd(void *page)
{
	const uint64_t events = UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
				UFFD_FEATURE_EVENT_REMAP;
	struct uffdio_api api = { .api = UFFD_API };
	enum uhmm_uffd_source src = UHMM_UFFD_NONE;
	int fd;

	fd = uhmm_uffd_open_any(&src);
	if (fd < 0) {
		kf.uffd_error = fd;
		return;
	}
	/* With features = 0 the kernel reports every feature it has. */
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		kf.uffd_error = -errno;
		close(fd);
		return;
	}
	kf.uffd_features = api.features;
	close(fd);

	/* UFFDIO_API may be called once per fd: a second one to register. */
	fd = uhmm_uffd_open_any(&src);
	if (fd < 0)
		return;
	api = (struct uffdio_api){ .api = UFFD_API,
				   .features = kf.uffd_features & UHMM_UFFD_WANT_FEATURES };
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		kf.uffd_error = -errno;
	} else {
		kf.flags |= UHMM_FEAT_UFFD;
		kf.uffd_source = src;
		if (src != UHMM_UFFD_USER_MODE_ONLY)
			kf.flags |= UHMM_FEAT_UFFD_KERNEL_FAULTS;
		if ((kf.uffd_features & events) == events)
			kf.flags |= UHMM_FEAT_UFFD_EVENTS;
		if (kf.uffd_features & UFFD_FEATURE_SIGBUS)
			kf.flags |= UHMM_FEAT_UFFD_SIGBUS;
		probe_uffd_ioctls(fd, page);
	}
	close(fd);
}

static void probe_pagemap(void *page)
{
	struct page_region reg;
	struct pm_scan_arg arg = {
		.size = sizeof(arg), .start = (uintptr_t)page,
		.end = (uintptr_t)page + UHMM_PAGE_SIZE, .vec = (uintptr_t)&reg, .vec_len = 1,
		.category_anyof_mask = PAGE_IS_PRESENT, .return_mask = PAGE_IS_PRESENT,
	};
	uint64_t ent = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (ioctl(fd, PAGEMAP_SCAN, &arg) >= 0)
		kf.flags |= UHMM_FEAT_PAGEMAP_SCAN;

	/* The zero page first: a read fault of untouched anonymous memory maps it. */
	if (madvise(page, UHMM_PAGE_SIZE, MADV_POPULATE_READ) == 0) {
		kf.flags |= UHMM_FEAT_MADV_POPULATE;
		if (pread(fd, &ent, sizeof(ent), (off_t)((uintptr_t)page / UHMM_PAGE_SIZE * 8)) == 8)
			zero_pfn = ent & PM_PFN_MASK;
	}
	((volatile char *)page)[0] = 1;
	if (pread(fd, &ent, sizeof(ent), (off_t)((uintptr_t)page / UHMM_PAGE_SIZE * 8)) == 8 &&
	    (ent & PM_PFN_MASK) != 0)
		kf.flags |= UHMM_FEAT_PFN_VISIBLE;
	else
		zero_pfn = 0;
	close(fd);

	fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if ((kf.flags & UHMM_FEAT_PFN_VISIBLE) &&
		    pread(fd, &ent, sizeof(ent), (off_t)((ent & PM_PFN_MASK) * 8)) == 8)
			kf.flags |= UHMM_FEAT_KPAGEFLAGS;
		close(fd);
	}
}

static void probe_procmap(void *page)
{
	struct procmap_query q = {
		.size = sizeof(q), .query_addr = (uintptr_t)page,
		.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
	};
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (ioctl(fd, PROCMAP_QUERY, &q) == 0 && q.vma_start <= (uintptr_t)page)
		kf.flags |= UHMM_FEAT_PROCMAP_QUERY;
	close(fd);
}

static void probe_process_vm(void *page)
{
	char c;
	struct iovec local = { &c, 1 }, remote = { page, 1 };

	if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == 1)
		kf.flags |= UHMM_FEAT_PROCESS_VM;
}

static void kfeatures_probe(void)
{
	struct utsname u;
	const char *force = getenv("UHMM_FORCE_FALLBACK");
	void *page;

	kf.page_size = (uint32_t)sysconf(_SC_PAGESIZE);
	if (uname(&u) == 0)
		snprintf(kf.kernel_release, sizeof(kf.kernel_release), "%s", u.release);
	kf.max_map_count = (uint64_t)read_long_file("/proc/sys/vm/max_map_count", 0);
	kf.unprivileged_userfaultfd = (int32_t)read_long_file("/proc/sys/vm/unprivileged_userfaultfd", -1);
	probe_thp();

	page = mmap(NULL, UHMM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return;
	probe_uffd(page);
	probe_pagemap(page);
	probe_procmap(page);
	probe_process_vm(page);
	munmap(page, UHMM_PAGE_SIZE);

	if (force && *force && strcmp(force, "0") != 0) {
		kf.flags |= UHMM_FEAT_FALLBACK_FORCED;
		kf.flags &= ~(UHMM_FEAT_PAGEMAP_SCAN | UHMM_FEAT_PROCMAP_QUERY | UHMM_FEAT_UFFD_MOVE);
	}
}

const struct uhmm_features *uhmm_kfeatures(void)
{
	pthread_once(&kf_once, kfeatures_probe);
	return &kf;
}

uint64_t uhmm_kfeatures_zero_pfn(void)
{
	uhmm_kfeatures();
	return zero_pfn;
}

UHMM_EXPORT int uhmm_query_features(struct uhmm_features *out)
{
	if (!out)
		return -EINVAL;
	*out = *uhmm_kfeatures();
	if (uhmm_fault_mode_wanted() == UHMM_FAULTS_IN_THREAD) {	/* what this process does, not the kernel */
		out->flags |= UHMM_FEAT_FAULTS_IN_THREAD;
		out->flags &= ~UHMM_FEAT_UFFD_KERNEL_FAULTS;
	}
	return 0;
}
