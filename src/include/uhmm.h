/* SPDX-License-Identifier: MIT */
/*
 * uhmm: Linux HMM (Heterogeneous Memory Management) in user space.
 *
 * One public header. Every function returns 0 (or a count) on success and a
 * negative errno on failure; errno is never used as an output. Names follow
 * the kernel's (mm/hmm.c, mm/mmu_notifier.c, mm/migrate_device.c) with a
 * uhmm_ prefix so that kernel documentation reads across.
 */
#ifndef UHMM_H
#define UHMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define UHMM_VERSION_MAJOR 0
#define UHMM_VERSION_MINOR 1

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

enum uhmm_log_level { UHMM_LOG_ERR = 3, UHMM_LOG_WARN = 4, UHMM_LOG_INFO = 6, UHMM_LOG_DEBUG = 7 };

/**
 * uhmm_set_logger() - install the callback that receives uhmm's messages
 * @fn: called with the level and a NUL-terminated line; NULL silences uhmm
 * @arg: passed back to @fn
 *
 * The library never prints on its own. @fn may be called from uhmm's service
 * thread; it must not call back into uhmm.
 */
void uhmm_set_logger(void (*fn)(void *arg, int level, const char *msg), void *arg);

/* ------------------------------------------------------------------------ */
/* uhmm's own memory (the kernel's kmalloc/kfree)                           */
/* ------------------------------------------------------------------------ */

/**
 * uhmm_kmalloc() - memory no migration can take: the stand-in for kernel memory
 * @size: bytes, 1 to 256 MiB
 *
 * A migration may take any of the program's anonymous pages, and a CPU
 * touch then waits for uhmm's service thread to bring it back. A driver's
 * callbacks run on that thread, and a driver's other code may hold locks
 * that thread needs: whatever they touch (the device's page tables, the
 * memory that backs device pages, bounce buffers, the src/dst arrays a
 * migration reads under the driver's lock) must be memory no migration can
 * take, as kernel memory is. uhmm keeps all of its own data here.
 * uhmm_migrate_vma_setup() never collects these pages (they count as not
 * migratable), uhmm_range_fault() answers -EFAULT for them, and no
 * userfaultfd is registered on them. Thread-safe, fork-safe (a child
 * inherits the blocks, as with malloc). The block is aligned to the power
 * of two at or above @size; blocks of 64 KiB and more are zero-filled and
 * give their memory back when freed.
 * Return: the block, or NULL with errno ENOMEM (@size 0 or above 256 MiB,
 * or no memory).
 */
void *uhmm_kmalloc(size_t size);
/** uhmm_kzalloc() - uhmm_kmalloc(), zero-filled */
void *uhmm_kzalloc(size_t size);
/** uhmm_kcalloc() - uhmm_kzalloc() of @n * @size bytes, NULL (ENOMEM) on overflow */
void *uhmm_kcalloc(size_t n, size_t size);
/**
 * uhmm_krealloc() - resize a block as realloc(3) does (NULL @p allocates,
 * @size 0 frees and returns NULL); on failure @p is left as it was.
 */
void *uhmm_krealloc(void *p, size_t size);
/**
 * uhmm_kfree() - free a block of uhmm_kmalloc() (NULL does nothing). A
 * pointer that is not one aborts the program: that is memory corruption.
 */
void uhmm_kfree(void *p);

/* ------------------------------------------------------------------------ */
/* Kernel features, probed once at run time                                 */
/* ------------------------------------------------------------------------ */

/* How the userfaultfd was obtained (struct uhmm_features.uffd_source). */
enum uhmm_uffd_source {
	UHMM_UFFD_NONE = 0,		/* no userfaultfd: uhmm cannot run */
	UHMM_UFFD_SYSCALL = 1,		/* userfaultfd(2), kernel-mode faults too */
	UHMM_UFFD_DEVICE = 2,		/* /dev/userfaultfd, kernel-mode faults too */
	UHMM_UFFD_USER_MODE_ONLY = 3,	/* userfaultfd(UFFD_USER_MODE_ONLY) */
};

/* struct uhmm_features.flags */
#define UHMM_FEAT_UFFD			(1u << 0)  /* a userfaultfd could be opened */
#define UHMM_FEAT_UFFD_KERNEL_FAULTS	(1u << 1)  /* kernel-mode accesses wait, not EFAULT */
#define UHMM_FEAT_UFFD_WP		(1u << 2)  /* UFFDIO_REGISTER_MODE_WP on anonymous memory */
#define UHMM_FEAT_UFFD_EVENTS		(1u << 3)  /* REMOVE, UNMAP and REMAP events */
#define UHMM_FEAT_UFFD_MOVE		(1u << 4)  /* UFFDIO_MOVE (6.8+) */
#define UHMM_FEAT_UFFD_POISON		(1u << 5)  /* UFFDIO_POISON (6.6+) */
#define UHMM_FEAT_PAGEMAP_SCAN		(1u << 6)  /* PAGEMAP_SCAN ioctl (6.7+) */
#define UHMM_FEAT_PROCMAP_QUERY		(1u << 7)  /* PROCMAP_QUERY ioctl (6.11+) */
#define UHMM_FEAT_MADV_POPULATE		(1u << 8)  /* MADV_POPULATE_READ/WRITE (5.14+) */
#define UHMM_FEAT_PFN_VISIBLE		(1u << 9)  /* /proc/self/pagemap shows PFNs */
#define UHMM_FEAT_KPAGEFLAGS		(1u << 10) /* /proc/kpageflags is readable */
#define UHMM_FEAT_PROCESS_VM		(1u << 11) /* process_vm_readv/writev on self */
#define UHMM_FEAT_FALLBACK_FORCED	(1u << 12) /* UHMM_FORCE_FALLBACK set: fast paths off */
#define UHMM_FEAT_THP			(1u << 13) /* transparent huge pages can be used */
#define UHMM_FEAT_UFFD_SIGBUS		(1u << 14) /* UFFD_FEATURE_SIGBUS: UHMM_FAULTS_IN_THREAD can be used */
#define UHMM_FEAT_FAULTS_IN_THREAD	(1u << 15) /* this process serves CPU faults in the faulting
						    * thread (UHMM_FAULTS_IN_THREAD); kernel-mode
						    * accesses then fail with EFAULT: the flag
						    * UHMM_FEAT_UFFD_KERNEL_FAULTS is cleared */

struct uhmm_features {
	uint32_t flags;			/* UHMM_FEAT_* */
	uint32_t uffd_source;		/* enum uhmm_uffd_source */
	int32_t uffd_error;		/* -errno of the last failed open, 0 if none */
	uint32_t page_size;
	uint64_t uffd_features;		/* UFFD_FEATURE_* offered by the kernel */
	uint64_t uffd_ioctls;		/* 1 << _UFFDIO_* usable on an anonymous range */
	uint64_t max_map_count;		/* vm.max_map_count, 0 if unknown */
	int32_t unprivileged_userfaultfd; /* vm.unprivileged_userfaultfd, -1 if unknown */
	uint32_t thp_pmd_size;		/* bytes, 0 if no THP */
	char kernel_release[65];	/* uname -r */
	char reserved[63];
};

/**
 * uhmm_query_features() - what the running kernel offers uhmm
 * @out: filled on success
 *
 * The probe runs once per process (on the first call into uhmm) on
 * throwaway file descriptors and mappings; later calls copy its result.
 * Setting the environment variable UHMM_FORCE_FALLBACK=1 before the first
 * call makes uhmm ignore PAGEMAP_SCAN and PROCMAP_QUERY (the pread() and
 * /proc/self/maps paths are used instead) so that tests cover both.
 *
 * Return: 0, or -EINVAL if @out is NULL. A missing feature is reported in
 * @out, never as an error.
 */
int uhmm_query_features(struct uhmm_features *out);

/* ------------------------------------------------------------------------ */
/* The address space                                                        */
/* ------------------------------------------------------------------------ */

struct uhmm_mm;	/* opaque: one per process, like the kernel's mm_struct */

/**
 * uhmm_mm_get() - take a reference on the calling process's uhmm_mm
 * @out: receives the mm
 *
 * The first call creates it: opens the userfaultfd and starts the service
 * thread. A forked child that calls uhmm_mm_get() gets a fresh uhmm_mm of its
 * own (the parent's is abandoned in the child, never used).
 *
 * Return: 0; -EINVAL if @out is NULL; -ENOSYS/-EPERM if no userfaultfd can be
 * opened (see uhmm_query_features()); -ENOMEM; -EAGAIN if the service thread
 * cannot be started.
 */
int uhmm_mm_get(struct uhmm_mm **out);

/**
 * uhmm_mm_put() - drop a reference taken with uhmm_mm_get()
 * @mm: the mm; NULL is ignored
 *
 * The last reference tears the mm down: every remaining interval notifier
 * gets UHMM_NOTIFY_RELEASE, the service thread stops, ranges are
 * unregistered and the userfaultfd is closed. Process exit does the same.
 */
void uhmm_mm_put(struct uhmm_mm *mm);

/**
 * uhmm_mm_sync() - wait until every change the kernel has reported is handled
 * @mm: the mm
 *
 * Changes uhmm cannot see coming (a munmap(), madvise() or mremap() made
 * inside libc or as a raw system call) are reported by userfaultfd events
 * after the fact: the call returns once uhmm has *read* the event, and the
 * notifiers run a moment later. A device that is about to use its page
 * table calls this first, so it never acts on a mapping that the CPU
 * changed before the device's access began. Cheap when nothing is pending.
 *
 * Return: 0, or -EINVAL if @mm is NULL or not this process's.
 */
int uhmm_mm_sync(struct uhmm_mm *mm);

/**
 * enum uhmm_fault_mode - who serves a CPU access to a device page
 * @UHMM_FAULTS_SERVICE: uhmm's service threads read the fault from the
 *	userfaultfd and serve it while the faulting thread sleeps in the
 *	kernel; a system call that touches a device page waits the same way.
 *	The default.
 * @UHMM_FAULTS_IN_THREAD: the faulting thread serves its own fault, in a
 *	SIGBUS handler uhmm installs (UFFD_FEATURE_SIGBUS): the driver's
 *	migrate_to_ram() runs on that thread, as the kernel runs it in the
 *	faulting task, and no thread is put to sleep or woken, which is most
 *	of a fault's cost (uhmm(7), "Fault modes"). In exchange, a system call
 *	that touches a device-resident page fails with EFAULT instead of
 *	waiting, as in user-mode-only mode; and a SIGBUS handler the program
 *	installs afterwards must hand the signals it does not own to the one
 *	it replaced.
 */
enum uhmm_fault_mode {
	UHMM_FAULTS_SERVICE = 0,
	UHMM_FAULTS_IN_THREAD = 1,
};

/**
 * uhmm_set_fault_mode() - choose who serves CPU faults, before the mm exists
 * @mode: an enum uhmm_fault_mode
 *
 * Takes effect when this process's uhmm_mm is created (the first
 * uhmm_mm_get(), or the first one in a forked child). The environment
 * variable UHMM_FAULTS=thread (or =service) sets the mode a process starts
 * with; this call overrides it.
 *
 * Return: 0; -EINVAL for an unknown @mode; -EOPNOTSUPP if the kernel lacks
 * UFFD_FEATURE_SIGBUS (4.14+) or no userfaultfd can be opened; -EBUSY if
 * this process's mm exists already with the other mode.
 */
int uhmm_set_fault_mode(enum uhmm_fault_mode mode);

/**
 * uhmm_handle_sigbus() - serve a SIGBUS that is a fault uhmm serves
 * @si: the handler's siginfo_t
 * @ucontext: the handler's third argument
 *
 * For a program that installs a SIGBUS handler of its own once uhmm's is in
 * place (UHMM_FAULTS_IN_THREAD): its handler calls this first, and returns
 * at once if it served the fault (the access then runs again); otherwise
 * the signal is the program's (a poisoned page, the end of a file
 * mapping). uhmm's own handler calls it too, and hands the signals that
 * are not its own to the handler it replaced.
 *
 * Return: 1 if the signal was a fault uhmm served, 0 otherwise (always 0
 * in UHMM_FAULTS_SERVICE mode).
 */
int uhmm_handle_sigbus(const siginfo_t *si, void *ucontext);

/* ------------------------------------------------------------------------ */
/* Interval notifiers (mm/mmu_notifier.c)                                   */
/* ------------------------------------------------------------------------ */

enum uhmm_notifier_event {
	UHMM_NOTIFY_UNMAP = 0,		/* munmap(), or the old range of mremap() */
	UHMM_NOTIFY_CLEAR,		/* pages dropped: madvise(DONTNEED/FREE/REMOVE) */
	UHMM_NOTIFY_PROTECTION_VMA,	/* mprotect() may have removed permission */
	UHMM_NOTIFY_PROTECTION_PAGE,	/* pages became copy-on-write (fork) */
	UHMM_NOTIFY_SOFT_DIRTY,
	UHMM_NOTIFY_RELEASE,		/* the mm is going away */
	UHMM_NOTIFY_MIGRATE,		/* uhmm migrates pages; owner says for whom */
	UHMM_NOTIFY_EXCLUSIVE,		/* a device takes exclusive access */
};

#define UHMM_NOTIFIER_RANGE_BLOCKABLE (1u << 0)

struct uhmm_notifier_range {
	uint64_t start;			/* [start, end), page aligned */
	uint64_t end;
	enum uhmm_notifier_event event;
	unsigned int flags;		/* UHMM_NOTIFIER_RANGE_* */
	void *owner;			/* for MIGRATE/EXCLUSIVE: who caused it */
};

struct uhmm_interval_notifier;

struct uhmm_interval_notifier_ops {
	/*
	 * Called before (or, for changes uhmm learns of after the fact, as soon
	 * as it learns of them) the CPU page table changes in the overlap of
	 * @range and the notifier. Take the driver lock, call
	 * uhmm_interval_set_seq(sub, cur_seq), drop the device mappings of the
	 * range, unlock. Always called blockable; return true.
	 */
	bool (*invalidate)(struct uhmm_interval_notifier *sub,
			   const struct uhmm_notifier_range *range, unsigned long cur_seq);
};

/*
 * Embedded in the driver's own structure (container_of), like the kernel's
 * struct mmu_interval_notifier. All fields are private to uhmm.
 */
struct uhmm_interval_notifier {
	struct uhmm_mm *mm;
	const struct uhmm_interval_notifier_ops *ops;
	uint64_t start;
	uint64_t last;			/* inclusive, as in the kernel */
	unsigned long invalidate_seq;
	struct uhmm_interval_notifier *next;
	void *reserved[2];
};

/**
 * uhmm_interval_notifier_insert() - watch [start, start + length) for changes
 * @sub: caller-owned storage, unused until uhmm_interval_notifier_remove()
 * @mm: from uhmm_mm_get(); the notifier holds a reference until removed
 * @start: first address (any alignment)
 * @length: bytes, > 0, start + length must not wrap
 * @ops: ops->invalidate must be set
 *
 * Return: 0; -EINVAL for a NULL argument, zero @length, a wrapping range or
 * a missing invalidate op; -EEXIST if @sub is already inserted.
 */
int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *sub, struct uhmm_mm *mm,
				  uint64_t start, uint64_t length,
				  const struct uhmm_interval_notifier_ops *ops);

/**
 * uhmm_interval_notifier_remove() - stop watching
 * @sub: an inserted notifier
 *
 * Waits until no invalidation that could still call @sub is running, so
 * that @sub may be freed on return. Must not be called from @sub's own
 * invalidate callback.
 *
 * Return: 0; -EINVAL if @sub is NULL or not inserted.
 */
int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *sub);

/**
 * uhmm_interval_read_begin() - start a read-side critical section
 * @sub: an inserted notifier
 *
 * Waits for any invalidation of @sub that is in progress to end and returns
 * the sequence to pass to uhmm_range_fault() and uhmm_interval_read_retry().
 */
unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *sub);

/**
 * uhmm_interval_read_retry() - did an invalidation happen since read_begin?
 * Call under the driver lock that the invalidate callback also takes; if
 * false, device page-table updates made under that lock are safe.
 */
bool uhmm_interval_read_retry(struct uhmm_interval_notifier *sub, unsigned long seq);

/** uhmm_interval_check_retry() - the same test, lock-free, as an early hint */
bool uhmm_interval_check_retry(struct uhmm_interval_notifier *sub, unsigned long seq);

/** uhmm_interval_set_seq() - record @cur_seq; call from invalidate, under the driver lock */
void uhmm_interval_set_seq(struct uhmm_interval_notifier *sub, unsigned long cur_seq);

/* ------------------------------------------------------------------------ */
/* Mirroring the CPU page table (mm/hmm.c)                                  */
/* ------------------------------------------------------------------------ */

/*
 * Each hmm_pfns[] entry: flags in the high bits, a "pfn" in the low 53 bits.
 *
 * What a pfn is in user space: a user-space device reaches system memory
 * through the process's virtual addresses, so for a system page the pfn is
 * the virtual page number (address >> page shift) of the mirrored page, and
 * its data is read and written with uhmm_access_vm(), which fails cleanly
 * instead of crashing if the page is unmapped concurrently. The shared zero
 * page has pfn UHMM_ZERO_PFN. Device-private pages (see the migration API)
 * have pfns at and above UHMM_DEVICE_PFN_BASE.
 */
#define UHMM_PFN_VALID		(1ULL << 63)
#define UHMM_PFN_WRITE		(1ULL << 62)
#define UHMM_PFN_ERROR		(1ULL << 61)
#define UHMM_PFN_ORDER_SHIFT	53
#define UHMM_PFN_ORDER_MASK	(0x1fULL << UHMM_PFN_ORDER_SHIFT)
#define UHMM_PFN_FLAGS		(UHMM_PFN_VALID | UHMM_PFN_WRITE | UHMM_PFN_ERROR | UHMM_PFN_ORDER_MASK)
#define UHMM_PFN_REQ_FAULT	UHMM_PFN_VALID
#define UHMM_PFN_REQ_WRITE	UHMM_PFN_WRITE

#define UHMM_ZERO_PFN		0ULL
#define UHMM_DEVICE_PFN_BASE	(1ULL << 48)

/* uhmm_range_fault() gives up after this long of continuous invalidation */
#define UHMM_RANGE_DEFAULT_TIMEOUT_MS 1000

static inline uint64_t uhmm_pfn_to_pfn(uint64_t hmm_pfn) { return hmm_pfn & ~UHMM_PFN_FLAGS; }
static inline unsigned int uhmm_pfn_to_map_order(uint64_t hmm_pfn)
{
	return (unsigned int)((hmm_pfn & UHMM_PFN_ORDER_MASK) >> UHMM_PFN_ORDER_SHIFT);
}
static inline bool uhmm_pfn_is_zero(uint64_t hmm_pfn)
{
	return (hmm_pfn & UHMM_PFN_VALID) && uhmm_pfn_to_pfn(hmm_pfn) == UHMM_ZERO_PFN;
}

struct uhmm_range {
	struct uhmm_interval_notifier *notifier;
	unsigned long notifier_seq;	/* from uhmm_interval_read_begin() */
	uint64_t start;			/* page aligned */
	uint64_t end;			/* page aligned, > start */
	uint64_t *hmm_pfns;		/* (end - start) / page size entries */
	uint64_t default_flags;		/* UHMM_PFN_REQ_* for every page */
	uint64_t pfn_flags_mask;	/* request = (hmm_pfns[i] & mask) | default_flags */
	void *dev_private_owner;	/* device-private pages of this owner are VALID */
};

/**
 * uhmm_range_fault() - snapshot, and optionally fault in, a range
 * @range: the range and the request
 *
 * For every page, computes the request from hmm_pfns[i], pfn_flags_mask and
 * default_flags, faults in what is requested and missing (read or write,
 * with MADV_POPULATE_*), and writes the page's state back to hmm_pfns[i]:
 * VALID (+WRITE) and the map order, or ERROR for a page with no VMA or no
 * read permission (when its fault was not requested), or 0 if not present.
 * A range is registered with uhmm's userfaultfd as a side effect so that
 * later changes to it reach the notifiers.
 *
 * Return: 0 on success;
 * -EINVAL: NULL range, notifier or hmm_pfns, unaligned or empty range, range
 *  outside the notifier, or unknown request bits;
 * -EFAULT: a fault was requested on a page with no VMA, no read permission,
 *  or a special (VM_IO/VM_PFNMAP) mapping;
 * -EPERM: a write fault was requested on a read-only VMA (nothing faulted);
 * -EBUSY: the notifier sequence moved: call uhmm_interval_read_begin() and
 *  try again;
 * -ENOMEM, -EHWPOISON: from the kernel while faulting in.
 */
int uhmm_range_fault(struct uhmm_range *range);

/* uhmm_access_vm() flags */
#define UHMM_ACCESS_WRITE (1u << 0)

/**
 * uhmm_access_vm() - copy between a buffer and the mirrored address space
 * @addr: address in this process
 * @buf: the device's buffer
 * @len: bytes
 * @flags: 0 to read from @addr into @buf, UHMM_ACCESS_WRITE to write @buf to @addr
 *
 * The way for a device to reach a system page it has mirrored: a page that
 * was unmapped (or write-protected) concurrently gives -EFAULT instead of a
 * crash, the way a real device's access gets an IOMMU fault.
 *
 * Any length: more than 1 GiB goes in pieces (the system call under it
 * stops at 2 GiB).
 *
 * Return: bytes copied (all of @len), -EINVAL for a NULL @buf, unknown
 * flags, a wrapping range or more than SSIZE_MAX bytes, -EFAULT if a page
 * is not accessible (some bytes may have been copied).
 */
ssize_t uhmm_access_vm(uint64_t addr, void *buf, size_t len, unsigned int flags);

/* ------------------------------------------------------------------------ */
/* Device memory (memremap_pages / dev_pagemap)                             */
/* ------------------------------------------------------------------------ */

struct uhmm_pagemap;	/* opaque: a driver's pool of device-private pages */
struct uhmm_page;	/* opaque: one device page (the kernel's struct page) */

/* struct uhmm_vm_fault.flags */
#define UHMM_FAULT_WRITE	(1u << 0)	/* the CPU access was a write */
#define UHMM_FAULT_EVICT	(1u << 1)	/* not a CPU access: uhmm is evicting */

/* The CPU touched a device-private page (the kernel's struct vm_fault). */
struct uhmm_vm_fault {
	struct uhmm_mm *mm;
	uint64_t address;		/* page aligned */
	struct uhmm_page *page;		/* the device page that holds it */
	unsigned int flags;		/* UHMM_FAULT_* */
};

struct uhmm_pagemap_ops {
	/* The last reference to @page is gone: return it to the free list. */
	void (*page_free)(struct uhmm_page *page);
	/*
	 * Migrate vmf->page (and, if you like, its neighbours) back to
	 * system memory with uhmm_migrate_vma_setup/pages/finalize, select
	 * UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, fault_page = vmf->page.
	 * Runs on uhmm's worker thread for a CPU access, or on the thread
	 * that needs the page. Return 0, or a negative errno: the page is then
	 * poisoned (the CPU access gets SIGBUS) rather than left to read zeros;
	 * except -EAGAIN: the device is using the page and cannot give it back
	 * yet (a kernel running on it): nothing is poisoned, the access waits
	 * and faults again a moment later (the kernel's VM_FAULT_RETRY), and
	 * uhmm's worker serves other faults meanwhile. An eviction
	 * (UHMM_FAULT_EVICT) cannot be put off: uhmm calls again every
	 * millisecond, for up to 10 s, then poisons the page. Never wait here
	 * for something a thread blocked on a fault may have to do.
	 */
	int (*migrate_to_ram)(struct uhmm_vm_fault *vmf);
};

struct uhmm_pagemap_stats {
	uint64_t npages;	/* pages in the pool */
	uint64_t allocated;	/* pages with a reference (driver or mapping) */
	uint64_t free;		/* npages - allocated */
	uint64_t mapped;	/* pages holding a CPU address's data */
	uint64_t poisoned;	/* pages lost because migrate_to_ram failed */
};

/**
 * uhmm_pagemap_add() - create a pool of @npages device-private pages
 * @mm: the address space the pages will hold data of
 * @npages: > 0
 * @owner: the pagemap owner (migrate_vma pgmap_owner, range dev_private_owner)
 * @ops: page_free and migrate_to_ram must be set
 * @driver_data: returned by uhmm_pagemap_driver_data()
 * @out: the pagemap
 *
 * All pages start free (reference count 0); the driver keeps its own free
 * list and takes a page with uhmm_page_init(). The backing store is the
 * driver's business.
 *
 * Return: 0; -EINVAL for a NULL argument, zero @npages, a missing op, or
 * an @mm that is not this process's; -ENOMEM; -ENOSPC when the device pfn
 * space is exhausted.
 */
int uhmm_pagemap_add(struct uhmm_mm *mm, uint64_t npages, void *owner,
		     const struct uhmm_pagemap_ops *ops, void *driver_data,
		     struct uhmm_pagemap **out);

/**
 * uhmm_pagemap_remove() - evict every mapped page, then free the pool
 *
 * Pages still holding data are migrated back through the pagemap's own
 * migrate_to_ram() first: nothing is lost. Return: 0; -EINVAL for NULL;
 * -EBUSY if the driver still holds references to pages after eviction (the
 * pool is then left in place).
 */
int uhmm_pagemap_remove(struct uhmm_pagemap *pgmap);

/**
 * uhmm_pagemap_set_host_memory() - zero-copy migration for a host-memory device
 * @pgmap: the pool
 * @base: where page i of the pool keeps its data (base + i * 4 KiB): private
 *        anonymous read-write memory of this process, page-aligned (2 MiB
 *        aligned for a 2 MiB unit to move whole), npages pages, not locked
 *
 * For a device whose memory the CPU can map (the reference device; any
 * device whose "device memory" is host memory). uhmm registers @base with a
 * userfaultfd of its own that raises no events, so that pages can be moved
 * into it and out of it with UFFDIO_MOVE: then a dst entry may carry
 * UHMM_MIGRATE_PFN_MOVE, and the page is moved, not copied:
 *
 * - system -> device, dst = uhmm_migrate_pfn(device page) | MOVE: the driver
 *   copies nothing; uhmm_migrate_vma_pages() moves the program's page into
 *   the device page's memory (what was there is discarded);
 * - device -> system, dst = uhmm_migrate_pfn_data(device page's memory) |
 *   MOVE: the page is moved into the program, and the device page's memory
 *   is left empty (it reads as zeros).
 *
 * Where a page cannot be moved (shared with a fork child, pinned, a mapping
 * whose protection differs), uhmm copies it instead, with the same result.
 * Return: 0; -EINVAL for NULL or an unaligned @base; -EOPNOTSUPP without
 * UFFDIO_MOVE (Linux < 6.8, or UHMM_FORCE_FALLBACK): the driver then copies;
 * -EBUSY if another userfaultfd watches that memory; other -errno from the
 * registration (memory that is not private anonymous).
 */
int uhmm_pagemap_set_host_memory(struct uhmm_pagemap *pgmap, void *base);

/**
 * uhmm_pagemap_set_host_range() - host memory for pages [first, first + npages)
 *
 * As uhmm_pagemap_set_host_memory(), for part of a pool: a driver whose
 * device memory comes in chunks allocated as it goes (uhmm-opencl's SVM
 * chunks). -EINVAL also if the range is out of the pool or set already.
 */
int uhmm_pagemap_set_host_range(struct uhmm_pagemap *pgmap, uint64_t first, uint64_t npages, void *base);

/**
 * uhmm_pagemap_clear_host_range() - forget the host memory of a range
 *
 * Pages [first, first + npages) (set by one uhmm_pagemap_set_host_range())
 * are copied again from now on, and the memory is unregistered: call it
 * before freeing that memory, which may then be mapped again for another
 * use. No page of the range may be on its way meanwhile (the driver's own
 * rule: it frees memory no page holds). uhmm_pagemap_remove() clears what
 * is left. Return: 0, or -EINVAL for NULL or a range out of the pool.
 */
int uhmm_pagemap_clear_host_range(struct uhmm_pagemap *pgmap, uint64_t first, uint64_t npages);

void *uhmm_pagemap_driver_data(const struct uhmm_pagemap *pgmap);
void *uhmm_pagemap_owner(const struct uhmm_pagemap *pgmap);
/**
 * uhmm_pagemap_stats() - counters; 0, or -EINVAL for NULL. A fault being
 * served holds its page a moment after the faulting thread resumes: call
 * uhmm_mm_sync() first for figures that include every fault taken so far.
 */
int uhmm_pagemap_stats(const struct uhmm_pagemap *pgmap, struct uhmm_pagemap_stats *out);
/** uhmm_pagemap_page() - page @index of the pool, NULL if out of range */
struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pgmap, uint64_t index);

/** uhmm_page_init() - take a free page (reference 1). 0, or -EBUSY if in use */
int uhmm_page_init(struct uhmm_page *page);
void uhmm_page_get(struct uhmm_page *page);
/** uhmm_page_put() - drop a reference; the last one calls ops->page_free */
void uhmm_page_put(struct uhmm_page *page);
uint64_t uhmm_page_to_pfn(const struct uhmm_page *page);
/** uhmm_pfn_to_page() - the device page of a pfn, NULL for a system pfn */
struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn);
struct uhmm_pagemap *uhmm_page_pgmap(const struct uhmm_page *page);
uint64_t uhmm_page_index(const struct uhmm_page *page);
/* 9 while @page belongs to a 2 MiB unit that migrated to the device whole, else 0 */
unsigned int uhmm_page_order(const struct uhmm_page *page);
void *uhmm_page_zone_device_data(const struct uhmm_page *page);
void uhmm_page_set_zone_device_data(struct uhmm_page *page, void *data);

/* ------------------------------------------------------------------------ */
/* Migration (mm/migrate_device.c)                                          */
/* ------------------------------------------------------------------------ */

#define UHMM_MIGRATE_PFN_VALID		(1ULL << 0)
#define UHMM_MIGRATE_PFN_MIGRATE	(1ULL << 1)
#define UHMM_MIGRATE_PFN_DATA		(1ULL << 2)	/* dst: install a copy of driver memory (uhmm_migrate_pfn_data()) */
#define UHMM_MIGRATE_PFN_WRITE		(1ULL << 3)
#define UHMM_MIGRATE_PFN_COMPOUND	(1ULL << 4)
#define UHMM_MIGRATE_PFN_MOVE		(1ULL << 5)	/* dst: move the page, do not copy it (uhmm_pagemap_set_host_memory()) */
#define UHMM_MIGRATE_PFN_SHIFT		6

/*
 * COMPOUND (with SELECT_COMPOUND): src[i] | COMPOUND offers a 2 MiB unit
 * whole (a THP, a hole or zero page throughout, or a device unit), the next
 * 511 entries 0, as the kernel offers a THP. Take it whole with dst[i] =
 * the first of 512 device pages of one pagemap from a 512-aligned index,
 * each taken with uhmm_page_init() (or a uhmm_migrate_alloc_system_huge_page()),
 * | COMPOUND; or page by page, filling dst[i + j] (the kernel's split). After
 * uhmm_migrate_vma_pages() every entry is a base-page entry again.
 */
static inline uint64_t uhmm_migrate_pfn(uint64_t pfn) { return (pfn << UHMM_MIGRATE_PFN_SHIFT) | UHMM_MIGRATE_PFN_VALID; }
static inline uint64_t uhmm_migrate_pfn_to_pfn(uint64_t mpfn) { return mpfn >> UHMM_MIGRATE_PFN_SHIFT; }
/* The device page of a src/dst entry, or NULL (a system page or no page). */
static inline struct uhmm_page *uhmm_migrate_pfn_to_page(uint64_t mpfn)
{
	return (mpfn & UHMM_MIGRATE_PFN_VALID) ? uhmm_pfn_to_page(uhmm_migrate_pfn_to_pfn(mpfn)) : NULL;
}

enum uhmm_migrate_vma_select {
	UHMM_MIGRATE_VMA_SELECT_SYSTEM = 1 << 0,
	UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1,
	UHMM_MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2,
	UHMM_MIGRATE_VMA_SELECT_COMPOUND = 1 << 3,
	/*
	 * uhmm's, no kernel equivalent. With SELECT_SYSTEM, for a host-memory
	 * device (uhmm_pagemap_set_host_memory()): the driver gives every page
	 * with data it migrates a MOVE dst entry and reads none of them. Those
	 * pages then stay writable until they move (setup does not
	 * write-protect them): a CPU write before uhmm_migrate_vma_pages()
	 * moves with the page. A page with data whose dst is not MOVE is not
	 * migrated; holes and zero pages are protected as usual.
	 */
	UHMM_MIGRATE_VMA_ZERO_COPY = 1 << 8,
};

struct uhmm_migrate_vma {
	struct uhmm_mm *mm;		/* the kernel's vma: the address space */
	uint64_t *dst;			/* npages entries, zeroed by setup */
	uint64_t *src;			/* npages entries, filled by setup */
	uint64_t cpages;		/* out: entries collected (MIGRATE set) */
	uint64_t npages;		/* out: (end - start) / page size */
	uint64_t start;			/* page aligned */
	uint64_t end;			/* page aligned, > start */
	void *pgmap_owner;		/* device pages of this owner are collected */
	unsigned long flags;		/* UHMM_MIGRATE_VMA_SELECT_* */
	struct uhmm_page *fault_page;	/* the page migrate_to_ram() is for */
	void *priv;			/* private to uhmm */
};

/**
 * uhmm_migrate_vma_setup() - collect and isolate pages to migrate
 * @args: mm, src, dst, start, end, pgmap_owner, flags (and fault_page)
 *
 * For SELECT_SYSTEM: pages of private anonymous memory, holes and zero
 * pages of anonymous VMAs (src without VALID: nothing to copy); never
 * MAP_SHARED memory or private file mappings (their copy-on-write pages
 * included: once zapped, a touch would refill them from the file), or
 * another owner's device pages. For SELECT_DEVICE_PRIVATE: device pages of
 * @pgmap_owner. Collected pages are write-protected (a CPU write waits
 * until finalize; reads go on; not with ZERO_COPY, above), device
 * mappings of the range are invalidated with UHMM_NOTIFY_MIGRATE and
 * @pgmap_owner, and src[i] = uhmm_migrate_pfn(pfn) | MIGRATE (| WRITE). A
 * system page's pfn is its virtual page number: read its data with
 * uhmm_access_vm() at start + i * page size. A page another migration holds
 * is not collected.
 *
 * The driver then sets dst[i] for the entries it migrates: a device page
 * it took with uhmm_page_init() and filled (system -> device), or a system
 * page from uhmm_migrate_alloc_system_page() that it filled (device ->
 * system); and calls uhmm_migrate_vma_pages() and _finalize(), always both,
 * even if it migrates nothing.
 *
 * Return: 0; -EINVAL: NULL mm/src/dst, unaligned or empty range, no or
 * unknown select flags, no VMA (or a special one) at @start; -EEXIST: the
 * range belongs to another userfaultfd; -ENOMEM.
 */
int uhmm_migrate_vma_setup(struct uhmm_migrate_vma *args);

/**
 * uhmm_migrate_vma_pages() - commit each entry whose dst is set
 *
 * Moves the CPU's view of each page to its destination. An entry that
 * cannot be committed has MIGRATE cleared in src and stays where it was.
 */
void uhmm_migrate_vma_pages(struct uhmm_migrate_vma *migrate);

/**
 * uhmm_migrate_vma_finalize() - restore what did not move, release what did
 *
 * Pages that did not migrate are write-enabled again; the device pages
 * left behind (old sources, unused destinations) lose a reference; waiting
 * CPU threads are woken.
 */
void uhmm_migrate_vma_finalize(struct uhmm_migrate_vma *migrate);

/**
 * uhmm_migrate_alloc_system_page() - a system page to migrate into
 * @dst: receives the dst entry to store (uhmm_migrate_pfn(pfn))
 *
 * Returns a page-aligned page of memory the driver copies device data into
 * (the kernel's alloc_page() for migrate_to_ram: not zeroed, so fill all of
 * it; it may hold an earlier migration's data); uhmm installs it at the
 * address in uhmm_migrate_*_pages() and frees it in _finalize(). NULL when
 * out of memory.
 */
void *uhmm_migrate_alloc_system_page(uint64_t *dst);

/**
 * uhmm_migrate_pfn_data() - a dst entry that installs a copy of the driver's data
 * @data: page-aligned, the page's data in memory the CPU can read and no
 *        migration can take (a host-memory device's own pages, from
 *        uhmm_kmalloc(); a mapped device buffer)
 *
 * For a device -> system entry, instead of uhmm_migrate_alloc_system_page()
 * and a copy into it: uhmm copies @data into the new page itself in
 * uhmm_migrate_*_pages() (one UFFDIO_COPY per run of consecutive @data),
 * which saves the copy into the staging page. @data must stay valid and
 * unchanged until pages() returns; uhmm never frees it.
 * Return: the entry to store in dst[i], or 0 (the page stays on the device)
 * if @data is NULL or not page-aligned (or the staging_alloc fault is
 * injected: a system page could not be had).
 */
uint64_t uhmm_migrate_pfn_data(const void *data);

/**
 * uhmm_migrate_alloc_system_huge_page() - 2 MiB to bring a unit back whole
 * @dst: receives dst[i] for the unit's entry (with UHMM_MIGRATE_PFN_COMPOUND)
 *
 * As uhmm_migrate_alloc_system_page(), for an entry offered with COMPOUND:
 * 2 MiB of contiguous memory, filled by the driver, installed with one
 * UFFDIO_COPY. NULL when out of memory (bring the unit back page by page).
 */
void *uhmm_migrate_alloc_system_huge_page(uint64_t *dst);

/**
 * uhmm_migrate_device_range() - collect device pages for eviction
 * @src: npages entries, filled like uhmm_migrate_vma_setup()'s
 * @start_pfn: first device pfn (uhmm_page_to_pfn() of a pagemap's page)
 * @npages: how many
 *
 * For evicting a driver's memory without knowing the addresses (the
 * kernel's migrate_device_range()). The driver fills dst with system pages
 * and calls uhmm_migrate_device_pages() and uhmm_migrate_device_finalize().
 * Return: 0; -EINVAL for NULL or pfns that are not one pagemap's.
 */
int uhmm_migrate_device_range(uint64_t *src, uint64_t start_pfn, uint64_t npages);
void uhmm_migrate_device_pages(uint64_t *src, uint64_t *dst, uint64_t npages);
void uhmm_migrate_device_finalize(uint64_t *src, uint64_t *dst, uint64_t npages);

struct iovec;

/**
 * uhmm_access_vm_iov() - uhmm_access_vm() for scattered device buffers
 * @addr: start of a contiguous range of this process's memory
 * @iov: the device's buffers, filled from (or copied to) the range in order
 * @iovcnt: number of buffers, > 0
 * @flags: 0 (read the range) or UHMM_ACCESS_WRITE (write it)
 *
 * One system call per 256 buffers or 1 GiB instead of one per page (the
 * system call moves at most 2 GiB at once: longer buffers go in pieces).
 * Return: bytes copied (the sum of the lengths), -EINVAL for a NULL @iov,
 * a non-positive @iovcnt, unknown flags, a NULL buffer of non-zero length,
 * lengths that add up to more than SSIZE_MAX or a range that wraps (nothing
 * copied), -EFAULT if a page is not accessible (some bytes may have been
 * copied).
 */
ssize_t uhmm_access_vm_iov(uint64_t addr, const struct iovec *iov, int iovcnt, unsigned int flags);

/* ------------------------------------------------------------------------ */
/* Device-exclusive access (the kernel's make_device_exclusive())           */
/* ------------------------------------------------------------------------ */

/**
 * uhmm_make_device_exclusive() - give a device atomic access to a page
 * @mm: the address space
 * @addr: page-aligned address of private anonymous, writable memory
 * @owner: the device's pagemap owner: the EXCLUSIVE invalidation this
 *         raises carries it, so that the device's driver can skip its own
 * @mem: receives the address of the page's data while the device has it
 *
 * The page leaves the CPU's page table (its data moves, unchanged, to
 * memory uhmm keeps); the device reads and writes it at *@mem, atomically
 * with respect to the CPU. Any CPU access, read or write, by the program or
 * by the kernel on its behalf, first revokes it: every interval notifier of
 * the page hears UHMM_NOTIFY_EXCLUSIVE with no owner, and then the access
 * completes with the device's latest data. A device's uhmm_range_fault()
 * that needs the page revokes it too; munmap()/madvise(DONTNEED) free it,
 * mremap() moves it, fork() brings it back before it copies. *@mem is valid
 * until the driver's invalidate callback sees the page invalidated: take
 * uhmm_interval_read_begin() before this call and map *@mem only if
 * uhmm_interval_read_retry() says false under your lock, and skip the
 * EXCLUSIVE event that carries your own @owner (without setting the
 * sequence), as for the kernel's.
 *
 * Return: 0; -EINVAL (NULL @mm or @mem, unaligned or out-of-range @addr,
 * @mm not this process's); -EFAULT (no VMA at @addr, or not readable and
 * writable); -EOPNOTSUPP (shared, file-backed, hugetlb or special memory);
 * -EBUSY (the page cannot be taken: held by migrations throughout, or not
 * a page uhmm can move); -ENOMEM.
 */
int uhmm_make_device_exclusive(struct uhmm_mm *mm, uint64_t addr, void *owner, void **mem);

/* ------------------------------------------------------------------------ */
/* Statistics and tracing                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Process-wide counters since the library was loaded (a fork child starts
 * from its parent's values). Every field is a uint64_t; fields are only
 * ever added at the end, so a program built against an older header gets
 * the prefix it knows.
 */
struct uhmm_stats {
	uint64_t faults;		/* CPU faults uhmm served (service threads, or the faulting thread itself) */
	uint64_t faults_device;		/* of which on device pages: migrate_to_ram() called */
	uint64_t fault_ns;		/* time spent serving them */
	uint64_t pages_to_device;	/* pages committed by migrations, each way */
	uint64_t pages_to_system;
	uint64_t bytes_to_device;
	uint64_t bytes_to_system;
	uint64_t migrations;		/* uhmm_migrate_vma_setup() calls that collected a page */
	uint64_t invalidations[8];	/* by enum uhmm_notifier_event */
	uint64_t range_faults;		/* uhmm_range_fault() calls */
	uint64_t range_fault_pages;	/* pages they covered */
	uint64_t range_fault_busy;	/* of which returned -EBUSY (the caller retries) */
	uint64_t read_retries;		/* uhmm_interval_read_retry() that said retry */
	uint64_t poisons;		/* pages poisoned: the device could not return them */
	uint64_t zaps_moved;		/* pages taken from the CPU with UFFDIO_MOVE (no event) */
	uint64_t zaps_madvised;		/* pages taken with MADV_DONTNEED (an event round trip) */
	uint64_t events;		/* userfaultfd messages handled */
	uint64_t faults_injected;	/* failures and delays injected (uhmm_fault_inject()) */
	uint64_t exclusive_pages;	/* pages made device-exclusive (uhmm_make_device_exclusive()) */
	uint64_t units_migrated;	/* 2 MiB units (THP, device units) that migrated whole, each way */
	uint64_t zaps_unshared;		/* pages a migration made exclusive again first (copy-on-write since a fork) */
	uint64_t pages_moved;		/* pages that migrated by UFFDIO_MOVE, not copied (host-memory devices), each way */
	uint64_t pages_leaked;		/* device-exclusive pages still referenced when their address space went:
					 * left allocated, never reused (a lost reference; should stay 0) */
	uint64_t vma_lookups;		/* VMA lists read from the kernel (PROCMAP_QUERY, else /proc/self/maps) */
};

/**
 * uhmm_stats() - read the counters
 * @out: filled with the first @size bytes of the counters
 * @size: sizeof(*out) as the caller knows it; a multiple of 8
 *
 * Safe at any time from any thread; each counter is read atomically (not
 * the set as a whole). With UHMM_STATS=1 in the environment uhmm prints
 * them to stderr at exit.
 * Return: the bytes written (min(@size, sizeof(struct uhmm_stats))),
 * -EINVAL for a NULL @out or a @size that is 0 or not a multiple of 8.
 */
long uhmm_stats(struct uhmm_stats *out, size_t size);

/**
 * uhmm_trace_start() - write a trace of faults, migrations and invalidations
 * @path: file to create (truncated), in the Chrome trace-event JSON array
 *        format that Perfetto and chrome://tracing load
 *
 * Also started at load time when UHMM_TRACE=path is set. Each event is one
 * write(2) of one line (O_APPEND), so threads and fork children interleave
 * whole events. Off, a trace point costs one relaxed atomic load.
 * Return: 0; -EINVAL for a NULL or empty @path; -EBUSY if a trace is
 * already being written; -errno from open(2).
 */
int uhmm_trace_start(const char *path);

/**
 * uhmm_trace_stop() - finish the trace file (also done at exit)
 * Return: the number of events written, -ENOENT if no trace is running.
 */
long uhmm_trace_stop(void);

/**
 * uhmm_trace_mark() - put the program's own event into the trace
 * @label: the event's name (up to 63 printable characters; others become '?')
 * @addr:  start of the memory it concerns (may be NULL)
 * @len:   its length in bytes (0 for none)
 *
 * An instant event (category "mark", args start and npages), so a trace
 * shows the program's steps next to the faults and migrations they cause.
 * Return: 0 (also when no trace is running: then it costs one atomic load);
 * -EINVAL for a NULL or empty @label.
 */
int uhmm_trace_mark(const char *label, const void *addr, size_t len);

/* ------------------------------------------------------------------------ */
/* Fault injection (for testing drivers and uhmm itself)                    */
/* ------------------------------------------------------------------------ */

/**
 * uhmm_fault_inject() - make chosen operations fail, or the service slow
 * @spec: comma-separated rules "point:value[:every[:times]]"; NULL or ""
 *        switches injection off
 *
 * Points: uffd_copy (UFFDIO_COPY, every install of a page), uffd_move
 * (UFFDIO_MOVE, taking pages from the CPU), staging_alloc
 * (uhmm_migrate_alloc_system_page()), device_alloc, copy_to_device and
 * copy_to_system (the reference device's page allocator and its per-page
 * copies), service_delay (the service thread sleeps before a message).
 * value: an errno name (EAGAIN, EEXIST, ENOMEM, EIO, EFAULT, EBUSY, ENOENT,
 * EINTR) or number; for service_delay, microseconds. The rule fires on
 * every @every-th call (default 1), at most @times times (default 0: no
 * limit). Replaces all rules at once; also read from UHMM_INJECT at load.
 * Each fire counts in uhmm_stats() faults_injected and traces an "inject"
 * event. What each failure ends in is in uhmm_fault_inject(3).
 * Return: 0, or -EINVAL for a @spec it cannot parse (rules unchanged).
 */
int uhmm_fault_inject(const char *spec);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_H */
