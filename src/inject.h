/* SPDX-License-Identifier: MIT */
/*
 * Fault injection (uhmm_fault_inject(), UHMM_INJECT): the points where the
 * library, and the reference device, ask whether to fail. Off, a point costs
 * one relaxed load.
 */
#ifndef UHMM_INJECT_H
#define UHMM_INJECT_H

#include <stdatomic.h>
#include <stdbool.h>

enum uhmm_inject_point {
	UHMM_INJECT_UFFD_COPY,		/* UFFDIO_COPY: every install of a page (fault-back, fill) */
	UHMM_INJECT_UFFD_MOVE,		/* UFFDIO_MOVE: taking pages from the CPU (zap.c) */
	UHMM_INJECT_STAGING_ALLOC,	/* uhmm_migrate_alloc_system_page() */
	UHMM_INJECT_DEVICE_ALLOC,	/* the reference device's page allocator */
	UHMM_INJECT_COPY_TO_DEVICE,	/* the reference device copying a page in, per page */
	UHMM_INJECT_COPY_TO_SYSTEM,	/* the reference device copying a page out, per page */
	UHMM_INJECT_SERVICE_DELAY,	/* the service thread sleeps before a message (value: us) */
	UHMM_INJECT_MAP_DELAY,		/* the reference device sleeps between a migration's pages()
					 * and mapping what moved (value: us) */
	UHMM_INJECT_RANGE_FAULT_DELAY,	/* uhmm_range_fault() sleeps between reading the CPU page
					 * table and the device-private table (value: us) */
	UHMM_INJECT_UNPROTECT_DELAY,	/* a write replacing zero pages devices may map sleeps between
					 * invalidating them and lifting their protection (value: us) */
	UHMM_INJECT_DROP_DELAY,		/* an interposed munmap()/madvise() discarding pages sleeps between
					 * marking their device pages dropped and its system call (value: us) */
	UHMM_INJECT_COPY_ZAP_DELAY,	/* a zero-copy migration whose moves failed sleeps between copying
					 * the pages into device memory and zapping them (value: us) */
	UHMM_INJECT_NR
};

extern atomic_bool uhmm_inject_armed;
int uhmm_inject_slow(enum uhmm_inject_point p);

/*
 * Should this call fail? 0: go on; -errno: fail with it, as the real call
 * would have (nothing done). The delay point sleeps here and returns 0.
 */
static inline int uhmm_inject(enum uhmm_inject_point p)
{
	if (!atomic_load_explicit(&uhmm_inject_armed, memory_order_relaxed))
		return 0;
	return uhmm_inject_slow(p);
}

#endif
