/* SPDX-License-Identifier: MIT */
/*
 * uhmm-opencl internals. The design (docs/architecture.md §13):
 *
 *  - Device memory: the pagemap's page i is "slot" i of a device address
 *    space of device_bytes; slots are backed by chunks, each one cl_mem.
 *  - A region is one pointer argument (ptr, size): its whole pages, placed
 *    in consecutive slots of one chunk, so that the kernel gets a sub-buffer
 *    that starts at ptr. Its interior pages (wholly inside [ptr, ptr+size))
 *    migrate and stay on the device; its one or two partly covered pages
 *    ("edges") are copied in before and out after each launch, never
 *    migrated: what else shares them (malloc's headers, another array, the
 *    runtime's own objects) stays in system memory, so the runtime never
 *    touches a device-resident page and a CPU fault never waits for itself.
 *  - Sub-buffer origins must be aligned (CL_DEVICE_MEM_BASE_ADDR_ALIGN): a
 *    region starts @shift bytes into its first slot so that ptr lands on an
 *    aligned device address; with a shift it takes one slot more.
 */
#ifndef UHMM_OPENCL_INTERNAL_H
#define UHMM_OPENCL_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <uhmm.h>

#define CL_TARGET_OPENCL_VERSION 200	/* the SVM calls; used only where the device has them */
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS	/* clCreateCommandQueue: 1.2 devices have no other */

#include "uhmm/opencl.h"

#define UCL_PAGE 4096UL
#define UCL_BLOCK_PAGES 512UL		/* 2 MiB: the fault-back window and the migration batch */
#define UCL_FAULT_MAX_PAGES 16384UL	/* 64 MiB: the largest fault-back window */
#define UCL_MAX_ARGS 64
#define UHMM_CL_EXPORT __attribute__((visibility("default")))

struct ucl_chunk {
	cl_mem mem;			/* buffers, or ... */
	void *svm;			/* ... fine-grained SVM (devio.c), page-aligned in */
	void *svm_raw;			/* the allocation clSVMFree() takes */
	uint64_t slot0, nslots;		/* its slots in the device address space */
	uint8_t *used;			/* per slot: reserved by a region */
	uint64_t nused;
	bool movable;			/* SVM given to uhmm as host memory: pages move, not copy */
	struct ucl_chunk *next;		/* sorted by slot0 */
};

struct ucl_region {
	struct uhmm_interval_notifier notifier;	/* on [ia, ib), when not empty */
	struct uhmm_cl *ctx;
	uint64_t ptr, size;		/* the argument */
	uint64_t a, b;			/* its whole pages */
	uint64_t ia, ib;		/* interior pages: migrated */
	uint64_t shift;			/* bytes into the first slot */
	struct ucl_chunk *chunk;
	uint64_t slot, nslots;		/* slots reserved (global index) */
	cl_mem sub;			/* the slots: migrations and edge copies */
	cl_mem arg;			/* [ptr, ptr + size): the kernel argument */
	char *svm;			/* SVM: the slots' memory (devio.c) */
	/* under ctx->lock */
	uint64_t resident;		/* device pages holding data */
	unsigned int busy;		/* a launch's kernel may use it */
	unsigned int returning;		/* migrations back in progress */
	bool dead;			/* its interior was unmapped */
	bool in_launch;			/* an argument of the launch in progress: CPU
					   faults get -EAGAIN (retried) meanwhile, so
					   that a CPU reading along cannot starve it */
	/* launch_lock: a read-only argument copied, not migrated (track.c) */
	bool copy_mode;			/* this launch copies it */
	bool discard;			/* this launch overwrites it whole (UHMM_CL_PTR_WO) */
	bool tracked;			/* its pages are watched for writes */
	bool copy_valid;		/* the device copy matches every page not written since */
	bool watch_paused;		/* rewritten before every launch: copied whole, unwatched */
	unsigned int rewrites, paused_launches;
	bool verified;			/* every interior page was in its slot ... */
	unsigned long verified_seq;	/* ... at this notifier sequence */
	uint64_t fa_next, fa_pages;	/* fault-back window: where a scan goes on, its size */
	uint64_t last_use;
	struct ucl_region *next;
};

struct uhmm_cl {
	cl_platform_id platform;
	cl_device_id device;
	cl_context context;
	cl_command_queue queue;		/* launches and migrations to the device */
	cl_command_queue fault_queue;	/* migrations back (the worker, evictions) */
	uint64_t align;			/* sub-buffer origin alignment, bytes (1 with SVM) */
	bool svm;			/* device memory is fine-grained SVM (devio.c) */
	uint64_t nslots;		/* device_bytes / page */
	uint64_t chunk_slots;
	struct uhmm_mm *mm;
	struct uhmm_pagemap *pgmap;
	int track_fd;			/* asynchronous write-protect userfaultfd, or -1 (track.c) */
	int pagemap_fd;

	/*
	 * launch_lock: one launch, prefetch or destroy at a time; outermost;
	 * held across uhmm migrations and runtime calls; never taken by the
	 * worker (migrate_to_ram, page_free) or by invalidate().
	 * lock: regions, chunks, busy/returning, stats; a leaf: held around a
	 * few field updates only, never across a uhmm or runtime call.
	 */
	pthread_mutex_t launch_lock;
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* busy and returning dropped */
	struct ucl_chunk *chunks;
	struct ucl_region *regions;
	uint64_t tick;
	struct uhmm_cl_stats stats;
};

/* context.c */
int ucl_errno(cl_int err);

/* devio.c: the runtime seam (buffers or SVM) */
int ucl_chunk_alloc(struct uhmm_cl *ctx, struct ucl_chunk *c, uint64_t bytes);
bool ucl_chunk_movable(struct uhmm_cl *ctx, struct ucl_chunk *c);
void ucl_chunk_free(struct uhmm_cl *ctx, struct ucl_chunk *c);
int ucl_region_views(struct uhmm_cl *ctx, struct ucl_region *r);
void ucl_region_views_free(struct ucl_region *r);
cl_int ucl_dev_write(struct uhmm_cl *ctx, cl_command_queue q, struct ucl_region *r, uint64_t off, uint64_t len,
		     const void *host);
cl_int ucl_dev_zero(struct uhmm_cl *ctx, cl_command_queue q, struct ucl_region *r, uint64_t off, uint64_t len);
cl_int ucl_dev_read(struct uhmm_cl *ctx, cl_command_queue q, struct ucl_region *r, uint64_t off, uint64_t len,
		    void *host, cl_uint nwait, const cl_event *wait, cl_event *ev);
cl_int ucl_dev_set_arg(struct uhmm_cl *ctx, cl_kernel kernel, unsigned int i, struct ucl_region *r);
const void *ucl_dev_host_view(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t off);

/* devmem.c: slots, chunks, regions */
int ucl_region_get(struct uhmm_cl *ctx, uint64_t ptr, uint64_t size, struct ucl_region **out);
void ucl_region_reap(struct uhmm_cl *ctx, bool all);
void ucl_chunks_release(struct uhmm_cl *ctx);
uint64_t ucl_region_dev_offset(const struct ucl_region *r, uint64_t addr);
struct uhmm_page *ucl_slot_page(struct uhmm_cl *ctx, const struct ucl_region *r, uint64_t addr);
extern const struct uhmm_interval_notifier_ops ucl_notifier_ops;

/* migrate.c: pages between system memory and the device */
int ucl_to_device(struct uhmm_cl *ctx, struct ucl_region *r);
int ucl_to_host(struct uhmm_cl *ctx, uint64_t start, uint64_t end, struct uhmm_page *fault_page, bool evict);
int ucl_evict_region(struct uhmm_cl *ctx, struct ucl_region *r);
int ucl_migrate_to_ram(struct uhmm_vm_fault *vmf);
void ucl_page_free(struct uhmm_page *page);

/* track.c: write tracking of read-only arguments */
void ucl_track_open(struct uhmm_cl *ctx);
void ucl_track_close(struct uhmm_cl *ctx);
bool ucl_track_start(struct uhmm_cl *ctx, struct ucl_region *r);
void ucl_track_stop(struct uhmm_cl *ctx, struct ucl_region *r);
int ucl_track_written(struct uhmm_cl *ctx, struct ucl_region *r,
		      int (*fn)(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t start, uint64_t end, void *arg),
		      void *arg);

/* launch.c */
int ucl_make_resident(struct uhmm_cl *ctx, struct ucl_region **regions, unsigned int n,
		      unsigned long *seqs);

#endif
