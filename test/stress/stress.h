/* SPDX-License-Identifier: MIT */
/*
 * The model-checked stress test: CPU threads and the two reference devices
 * operate on a set of regions at random; a model predicts every value read.
 * Shared by `make stress` (long) and the test suite (short).
 */
#ifndef UHMM_STRESS_H
#define UHMM_STRESS_H

#include <stdbool.h>
#include <stdint.h>

struct stress_opts {
	uint64_t seed;
	double seconds;		/* stop after this long ... */
	long max_ops;		/* ... or this many operations per owner thread */
	int threads;		/* owner threads; each has its own regions */
	int regions;		/* per owner thread */
	int pages;		/* per region */
	bool fork;		/* include fork() with a verifying child */
	bool no_chaos;		/* no chaos thread (owners only) */
	bool efault_ok;		/* user-mode-only userfaultfd: a device's (kernel-mode) access to a
				 * page another thread holds fails with EFAULT instead of waiting */
	bool mark;		/* put each owner operation into the uhmm trace (UHMM_TRACE=file) */
	bool huge;		/* regions of 512 pages, 2 MiB-aligned, THP allowed; whole-region
				 * migrations (2 MiB units) join the operations */
	const char *skip_ops;	/* operation letters to leave out (see op_names in stress.c) */
	const char *inject;	/* uhmm_fault_inject() rules for the run: failures uhmm absorbs */
	bool verbose;
};

struct stress_report {
	long ops;		/* operations executed, all threads */
	long checks;		/* pages compared with the model */
	long mismatches;	/* pages that differed from the model */
	long lost_writes;	/* of which held an older value of that page */
	long unexpected;	/* operations that failed with an errno the model forbids */
	long chaos_ops;		/* value-preserving operations of the chaos thread */
	uint64_t invalidations, pages_to_device, pages_to_system, faults, injected, units;
};

/*
 * Injected failures that uhmm absorbs completely (retried, or the page stays
 * where it was): with them the model must still hold. A slow service
 * thread, UFFDIO_COPY saying EAGAIN, UFFDIO_MOVE failing (the zap falls back
 * to MADV_DONTNEED), device memory and device copies in running out.
 */
#define STRESS_ABSORBED_FAULTS \
	"service_delay:200:7,map_delay:100:9,uffd_copy:EAGAIN:3,uffd_move:ENOMEM:4,device_alloc:ENOMEM:5,copy_to_device:EIO:40"

/* Run; returns 0 if nothing was lost or unexpected, else 1 (details on stderr). */
int stress_run(const struct stress_opts *o, struct stress_report *r);
void stress_print(const struct stress_opts *o, const struct stress_report *r);

#endif
