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
 * Return: bytes copied (all of @len), -EINVAL for a NULL @buf, unknown
 * flags or a wrapping range, -EFAULT if a page is not accessible.
 */
ssize_t uhmm_access_vm(uint64_t addr, void *buf, size_t len, unsigned int flags);

#ifdef __cplusplus
}
#endif

#endif /* UHMM_H */
