/* SPDX-License-Identifier: MIT */
/* The reference device's internals, shared between its files. */
#ifndef UHMM_DMIRROR_INTERNAL_H
#define UHMM_DMIRROR_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm/dmirror.h"
#include "../src/lib/radix.h"

#define DM_PAGE_SHIFT 12
#define DM_PAGE_SIZE (1ULL << DM_PAGE_SHIFT)
#define DM_CHUNK_PAGES 512			/* pages per uhmm_range_fault() call */
#define DM_CHUNK_BYTES (DM_CHUNK_PAGES * DM_PAGE_SIZE)
#define DM_VA_LIMIT (1ULL << 47)		/* user address space on x86-64 */
#define DM_NDEVICES 2

/* Device page-table entry bits */
#define DPT_READ (1ULL << 0)
#define DPT_WRITE (1ULL << 1)
#define DPT_ATOMIC (1ULL << 2)
#define DPT_ZERO (1ULL << 3)			/* the shared zero page */
#define DPT_DEVPAGE (1ULL << 4)			/* device memory; pfn in the high bits */
#define DPT_PFN_SHIFT 8

struct dmirror_devmem;

#define DM_FA_STREAMS 4			/* sequential CPU scans told apart at once */

struct uhmm_dmirror {
	unsigned int device;
	pid_t pid;				/* the address space mirrored */
	void *owner;				/* pagemap owner: one per device number */
	struct uhmm_mm *mm;
	struct uhmm_interval_notifier notifier;
	pthread_mutex_t lock;			/* the device page table below */
	struct uhmm_radix pt;			/* vpn -> DPT_* entry */
	uint64_t flags;				/* UHMM_DMIRROR_FLAG_* (atomic) */
	uint64_t invalidations;			/* under lock */
	struct dmirror_devmem *devmem;		/* this device's memory */
	/*
	 * fault-around (devmem.c): the sequential streams the CPU's faults
	 * follow (a stream prefetcher's table): where each one's last window
	 * ended and its size; atomic, relaxed: hints.
	 */
	struct { uint64_t next, pages; } fa[DM_FA_STREAMS];
	uint64_t fa_victim;			/* the stream a new one replaces next */
};

static inline int dmirror_owned_here(const struct uhmm_dmirror *dm)
{
	return dm->pid == getpid();
}

/* dmirror.c */
int dmirror_range_locked(struct uhmm_dmirror *dm, struct uhmm_range *range,
			 int (*apply)(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg),
			 void *arg);

int dmirror_range_chunks(struct uhmm_dmirror *dm, struct uhmm_range *range, uint64_t start, uint64_t end,
			 int (*apply)(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg),
			 void *arg);

/* devmem.c: device memory and migration */
void *dmirror_device_owner(unsigned int device);
int dmirror_devmem_attach(struct uhmm_dmirror *dm);
int dmirror_devmem_detach(struct uhmm_dmirror *dm);
void dmirror_devmem_forget(struct uhmm_dmirror *dm);
void dmirror_devmem_note_addr(struct uhmm_dmirror *dm, uint64_t pfn, uint64_t addr);
int dmirror_devmem_copy(struct uhmm_dmirror *dm, uint64_t pfn, void *buf, int to_device);
int dmirror_devmem_is_local(struct uhmm_dmirror *dm, uint64_t pfn);
int dmirror_migrate_cmd(struct uhmm_dmirror *dm, unsigned int cmd, struct uhmm_dmirror_cmd *c);

/*
 * The instance whose migration is collecting pages on this thread (set
 * around uhmm_migrate_vma_setup() and uhmm_migrate_device_range(), the
 * calls that raise MIGRATE invalidations): it maps and unmaps those pages
 * itself. Another instance of the same device (same owner) must drop its
 * mappings like for any other invalidation.
 */
extern __thread struct uhmm_dmirror *dmirror_migrating;

/* Around such a call; a fault-back inside a device command nests: returns the outer one. */
static inline struct uhmm_dmirror *dmirror_migrating_enter(struct uhmm_dmirror *dm)
{
	struct uhmm_dmirror *outer = dmirror_migrating;

	dmirror_migrating = dm;
	return outer;
}

static inline void dmirror_migrating_leave(struct uhmm_dmirror *outer)
{
	dmirror_migrating = outer;
}

/* A run of our device pages, referenced, for a copy without dm->lock (devmem.c). */
uint64_t dmirror_devmem_get_run(struct uhmm_dmirror *dm, uint64_t index, uint64_t n, struct uhmm_page **pages,
				struct iovec *iov, int *niov);
void dmirror_devmem_put_run(struct uhmm_page **pages, uint64_t n);
int64_t dmirror_devmem_write_run(struct uhmm_dmirror *dm, uint64_t index, struct uhmm_page **pages, uint64_t n,
				 const struct iovec *iov, int niov, uint64_t ptr);

/* A copy of device memory that another instance of the device may copy at once (devmem.c). */
void dmirror_copy_device_memory(void *dst, const void *src);

#endif
