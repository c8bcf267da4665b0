/* SPDX-License-Identifier: MIT */
/*
 * Internal interfaces between uhmm's modules. See docs/architecture.md for
 * the picture and the lock order.
 */
#ifndef UHMM_INTERNAL_H
#define UHMM_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>

#include "uhmm.h"
#include "lib/radix.h"

struct uffd_msg;

#define UHMM_EXPORT __attribute__((visibility("default")))
#define UHMM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define UHMM_PAGE_SHIFT 12
#define UHMM_PAGE_SIZE (1UL << UHMM_PAGE_SHIFT)
#define UHMM_PMD_SHIFT 21
#define UHMM_PMD_SIZE (1UL << UHMM_PMD_SHIFT)
#define UHMM_PMD_PAGES (UHMM_PMD_SIZE >> UHMM_PAGE_SHIFT)
#define UHMM_PUD_SHIFT 30

static inline bool uhmm_page_aligned(uint64_t x) { return (x & (UHMM_PAGE_SIZE - 1)) == 0; }
static inline uint64_t uhmm_align_down(uint64_t x, uint64_t a) { return x & ~(a - 1); }
static inline uint64_t uhmm_align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Validate a [start, end) byte range of whole pages: 0 or -EINVAL. */
static inline int uhmm_check_range(uint64_t start, uint64_t end)
{
	if (!uhmm_page_aligned(start) || !uhmm_page_aligned(end) || end <= start)
		return -EINVAL;
	return 0;
}

/* ---- log.c ---- */
void uhmm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- kfeatures.c ---- */
const struct uhmm_features *uhmm_kfeatures(void);
static inline bool uhmm_has(uint32_t feat) { return (uhmm_kfeatures()->flags & feat) != 0; }
/* PFN of the shared zero page, when PFNs are visible (else 0) */
uint64_t uhmm_kfeatures_zero_pfn(void);

/* ---- procfs.c: cached /proc descriptors, reopened after fork() ---- */
enum uhmm_proc_file { UHMM_PROC_PAGEMAP, UHMM_PROC_MAPS, UHMM_PROC_KPAGEFLAGS };
int uhmm_proc_fd(enum uhmm_proc_file which);	/* fd (do not close) or -errno */
/* A /proc file's lines, without stdio (whose buffers are libc heap) */
struct uhmm_lines {
	int fd;
	size_t len, pos;
	char buf[4096];
};
int uhmm_lines_open(struct uhmm_lines *l, const char *path);
bool uhmm_lines_next(struct uhmm_lines *l, char *line, size_t size);
void uhmm_lines_close(struct uhmm_lines *l);
void uhmm_procfs_after_fork_child(void);

/* ---- uffd.c: the userfaultfd itself ---- */
/*
 * Features uhmm asks the kernel for; the ones it lacks are left out. Not
 * EVENT_FORK: it needs CAP_SYS_PTRACE and fork() is handled with atfork.
 */
#define UHMM_UFFD_WANT_FEATURES                                                          \
	(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP | \
	 UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |               \
	 UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS |                    \
	 UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON)
int uhmm_uffd_open_any(enum uhmm_uffd_source *src);
int uhmm_uffd_open(uint64_t want_features, uint64_t *got_features);
int uhmm_uffd_register(int uffd, uint64_t start, uint64_t end, uint64_t mode, uint64_t *ioctls);
int uhmm_uffd_unregister(int uffd, uint64_t start, uint64_t end);
int uhmm_uffd_ioctl(int uffd, unsigned long request, void *arg);	/* retries EAGAIN */
/*
 * EAGAIN from a userfaultfd ioctl: an event waits for uhmm's reader. Retry,
 * yielding to it; the bound only keeps a stopped reader from hanging the
 * caller (install_range() and zap_piece() have their own loops: partial
 * progress).
 */
#define UHMM_EAGAIN_TRIES 100000

/* ---- vma.c: the VMA list (PROCMAP_QUERY or /proc/self/maps) ---- */
#define UHMM_VMA_READ (1u << 0)
#define UHMM_VMA_WRITE (1u << 1)
#define UHMM_VMA_EXEC (1u << 2)
#define UHMM_VMA_SHARED (1u << 3)
#define UHMM_VMA_FILE (1u << 4)		/* backed by a file (incl. shmem objects) */
#define UHMM_VMA_SPECIAL (1u << 5)	/* [vvar], [vsyscall]...: VM_IO/PFNMAP-like */
#define UHMM_VMA_HUGETLB (1u << 6)

struct uhmm_vma {
	uint64_t start;
	uint64_t end;
	uint32_t flags;		/* UHMM_VMA_* */
	uint32_t page_shift;	/* 12, or the hugetlb page shift */
};

/*
 * Fill @out with the VMAs that overlap [start, end), in address order.
 * Return: the number found (may be more than @max: call again with a larger
 * array), or -errno.
 */
int uhmm_vma_list(uint64_t start, uint64_t end, struct uhmm_vma *out, int max);
/* Do the @n VMAs of @v (a uhmm_vma_list() result) cover [start, end) without a hole? */
bool uhmm_vmas_cover(const struct uhmm_vma *v, int n, uint64_t start, uint64_t end);
/* Is [start, end) entirely mapped right now (up to 8 VMAs)? */
bool uhmm_vma_covers(uint64_t start, uint64_t end);

/* ---- pagemap.c: per-page CPU page-table state ---- */
#define UHMM_PTE_PRESENT (1u << 0)
#define UHMM_PTE_ZERO (1u << 1)		/* the shared zero page */
#define UHMM_PTE_HUGE (1u << 2)		/* mapped by a PMD (THP) or hugetlb */
#define UHMM_PTE_SWAPPED (1u << 3)
#define UHMM_PTE_FILE (1u << 4)		/* page-cache or shared-anon page */
#define UHMM_PTE_EXCLUSIVE (1u << 5)	/* mapped by this process only */
#define UHMM_PTE_DEVICE (1u << 7)	/* device-private, of the range's owner */

/*
 * One byte of UHMM_PTE_* per page of [start, end) into @state. @need says
 * what else to compute, each at a cost on the fast path, only needed to
 * decide write permission: UHMM_PM_EXCL, UHMM_PTE_EXCLUSIVE (a pread of
 * pagemap); UHMM_PM_FILE, UHMM_PTE_FILE (PAGEMAP_SCAN then looks up
 * every present page's struct page: a third of a migration's setup). A
 * private anonymous mapping never holds a file page.
 */
#define UHMM_PM_EXCL (1u << 0)
#define UHMM_PM_FILE (1u << 1)
int uhmm_pagemap_read(uint64_t start, uint64_t end, uint8_t *state, unsigned int need);

/* ---- spanset.c: a sorted set of disjoint [start, end) spans ---- */
struct uhmm_span {
	uint64_t start;
	uint64_t end;
};
struct uhmm_spanset {
	struct uhmm_span *v;
	size_t n;
	size_t cap;
};
bool uhmm_spanset_covers(const struct uhmm_spanset *s, uint64_t start, uint64_t end);
bool uhmm_spanset_intersects(const struct uhmm_spanset *s, uint64_t start, uint64_t end);
int uhmm_spanset_add(struct uhmm_spanset *s, uint64_t start, uint64_t end);
int uhmm_spanset_remove(struct uhmm_spanset *s, uint64_t start, uint64_t end);
int uhmm_spanset_move(struct uhmm_spanset *s, uint64_t from, uint64_t to, uint64_t len);
void uhmm_spanset_free(struct uhmm_spanset *s);
bool uhmm_spanset_next_gap(const struct uhmm_spanset *s, uint64_t start, uint64_t end,
			   uint64_t *gs, uint64_t *ge);

/* ---- mm.c / service.c / notifier.c: the address space ---- */
#define UHMM_SERVICE_MAX 8		/* service threads at most (one per CPU up to this) */
struct uhmm_fork_inval;

struct uhmm_mm {
	pid_t pid;			/* the process this mm mirrors */
	atomic_int refs;
	int uffd;
	uint64_t uffd_features;		/* features enabled on @uffd */
	uint64_t uffd_ioctls;		/* ioctls usable on registered anon ranges */
	int stop_efd;			/* eventfd: tells the service threads to stop */
	bool faults_in_thread;		/* UFFD_FEATURE_SIGBUS: faults served by the faulting thread */

	/*
	 * service.c: service threads that take turns (one per CPU, pinned, when
	 * the CPUs are few): any of them reads the userfaultfd; one at a time
	 * holds the worker role and dispatches the queue in order.
	 */
	pthread_t svc[UHMM_SERVICE_MAX];
	void *stacks[UHMM_SERVICE_MAX];		/* uhmm_kmalloc()ed, like the queue */
	unsigned int n_svc;			/* threads started */
	bool svc_pinned;			/* one per CPU, each on its own */
	int kick_efd;				/* eventfd: work for the worker role (resume) */
	struct uffd_msg *q;			/* ring of q_cap messages (under lock) */
	size_t q_cap, q_head, q_len;
	uint64_t ev_queued, ev_done;		/* messages queued / handled (under lock) */
	atomic_bool read_claim;			/* a thread reads: the others go back to poll() */
	bool reading;				/* ... and is in read() (under lock) */
	bool stopping;				/* (under lock) */
	bool worker_active;			/* a thread holds the worker role (under lock) */
	bool paused, worker_busy;		/* fork() quiesces the worker role (under lock) */
	bool fork_pending;			/* the migration gate is closed (under lock) */
	atomic_bool forked;			/* fork() has run: pages may be copy-on-write (migrate.c) */
	uint64_t *deferred;			/* faults left waiting on a busy page (under lock) */
	size_t n_deferred, cap_deferred;
	unsigned long migrating;		/* migrations to a device in flight (under lock) */

	/*
	 * @lock protects the notifier list, the invalidation state, the
	 * registration set and the service thread's batch generation. It is a
	 * leaf lock: nothing else is taken while holding it, and no callback
	 * runs under it.
	 */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* invalidation ended / batch ended */
	struct uhmm_interval_notifier *notifiers;
	size_t n_notifiers;
	unsigned long invalidate_seq;	/* odd while any invalidation runs */
	unsigned int active_invalidations;
	struct uhmm_spanset registered;	/* ranges registered with @uffd */

	struct uhmm_fork_inval *fork_inval; /* invalidations held open across fork() */

	struct uhmm_spanset missing;	/* spans registered MISSING|WP (under lock) */
	struct uhmm_spanset poisoned;	/* pages uhmm poisoned, until the program drops them (under lock):
					 * without CONFIG_MEMORY_FAILURE their SIGBUS is BUS_ADRERR too */
	/*
	 * Zaps uhmm makes itself with MADV_DONTNEED (under lock): their REMOVE
	 * events are not the program's. One zap may raise several (one per
	 * VMA, and the kernel repeats one for a VMA split while it waited), so
	 * an entry is kept until the worker has gone past every message queued
	 * before its madvise() returned (@until, a message index).
	 */
	struct uhmm_self_zap { uint64_t start, end, until; } *self_zaps;
	size_t n_self_zaps, cap_self_zaps;

	/* zap.c: quiet userfaultfd + scratch area for event-free zaps */
	pthread_mutex_t zap_lock;	/* leaf lock over the scratch area */
	int zap_state;			/* 0 not set up, 1 ready, -1 unavailable */
	int zap_uffd;
	uint64_t zap_area;

	/* exclusive.c: the pool holding pages devices have exclusive access to */
	pthread_mutex_t excl_lock;	/* the pool's chunk list (taken before dp_lock, never under it) */
	struct uhmm_excl_chunk *excl_chunks;
	struct uhmm_excl_chunk *excl_hint;	/* where the last free pool page was found ... */
	uint64_t excl_hint_index;		/* ... (excl_lock): the next search starts there */

	/*
	 * mmap_lock, user space's counterpart of the kernel's: the program's
	 * munmap(), mmap(MAP_FIXED), mremap() and permission-removing
	 * mprotect() take it exclusive (interpose.c); migrations (setup to
	 * finalize) and registrations take it shared. A migration's claims are
	 * addresses, its device mappings rest on the VMAs it collected from,
	 * and a registration would split a VMA being moved: none may straddle
	 * a change of the mappings.
	 */
	pthread_rwlock_t mmap_lock;

	/* device-private table (devpriv.c); dp_lock is a leaf lock */
	pthread_mutex_t dp_lock;
	struct uhmm_radix devpriv;
	uint64_t dp_installs;			/* device pages ever mapped in devpriv (dp_lock) */
	pthread_cond_t dp_cond;			/* a claim was released (with dp_lock) */
	unsigned int dp_waiters;		/* threads in uhmm_dp_wait_unclaimed() (dp_lock) */

};

/* The current process's mm if it exists (no reference taken), else NULL. */
struct uhmm_mm *uhmm_mm_peek(void);
struct uhmm_mm *uhmm_mm_tryget(void);	/* with a reference, or NULL: none is created */
bool uhmm_mm_is_current(const struct uhmm_mm *mm);
pid_t uhmm_self_pid(void);	/* getpid(), asked of the kernel once per process */

/* kmem.c: uhmm's own memory (uhmm_kmalloc() and friends are public) */
bool uhmm_kmem_owns(uint64_t start, uint64_t end);	/* does [start, end) touch it? */
void *uhmm_kmem_block(const void *p);	/* the block @p lies in (NULL: not uhmm's memory) */
uint64_t uhmm_kmem_live_bytes(void);

int uhmm_service_start(struct uhmm_mm *mm);
void uhmm_service_stop(struct uhmm_mm *mm);
void uhmm_service_pause(struct uhmm_mm *mm);
void uhmm_service_resume(struct uhmm_mm *mm);
bool uhmm_in_service_thread(void);
/*
 * A fault the worker left waiting because a migration holds the page: the
 * holder wakes it when it lets go, and the worker wakes it again every
 * millisecond until then, so that no wake-up can be missed.
 */
void uhmm_service_defer(struct uhmm_mm *mm, uint64_t addr);
void uhmm_staging_service_slab(bool put);	/* migrate.c: the worker role's staging slab */
/* Wait until every userfaultfd event read so far has been handled. */
void uhmm_service_sync(struct uhmm_mm *mm);

/*
 * Invalidate [start, end) for @event: every overlapping notifier's
 * invalidate() runs; until uhmm_invalidate_end() readers wait.
 */
void uhmm_invalidate_start(struct uhmm_mm *mm, const struct uhmm_notifier_range *r);
void uhmm_invalidate_end(struct uhmm_mm *mm);
/* start + end in one call, for changes that already happened */
void uhmm_invalidate(struct uhmm_mm *mm, uint64_t start, uint64_t end,
		     enum uhmm_notifier_event event, void *owner);
/* Does any notifier overlap [start, end)? (lock-free hint for hot paths) */
bool uhmm_notifiers_overlap(struct uhmm_mm *mm, uint64_t start, uint64_t end);

/* Make sure [start, end) is registered with the mm's userfaultfd (WP mode). */
int uhmm_mm_register(struct uhmm_mm *mm, uint64_t start, uint64_t end);
/* Forget registrations the kernel dropped (munmap) or moved (mremap). */
void uhmm_mm_forget(struct uhmm_mm *mm, uint64_t start, uint64_t end);

/* ---- devmem.c: pagemaps and device pages (memremap.c) ---- */
struct uhmm_page {
	struct uhmm_pagemap *pgmap;
	atomic_uint refs;
	uint64_t vaddr;			/* CPU address whose data it holds (mm->dp_lock) */
	uint64_t claim_addr;		/* where migrate_device_range() claimed it */
	void *zone_device_data;
	atomic_uchar order;		/* on a unit's first page: 9 while its 512 pages are one unit */
	_Atomic uint64_t host;		/* where its data is, for zero-copy moves (host memory); 0: none */
	bool faulting;			/* a CPU fault is in its migrate_to_ram() (mm->dp_lock) */
};

struct uhmm_pagemap {
	struct uhmm_mm *mm;
	uint64_t npages;
	uint64_t pfn_first;		/* device pfn of pages[0] */
	void *owner;
	const struct uhmm_pagemap_ops *ops;
	void *driver_data;
	struct uhmm_page *pages;
	atomic_ulong allocated, mapped, poisoned;
};

/* ---- devpriv.c: the device-private table and the CPU fault path ---- */
/*
 * mm->devpriv maps a virtual page number to the device page holding its
 * data (pointer), or marks it DP_BUSY while a migration owns it (with or
 * without a page). DP_DROPPED: while it was busy, the CPU mapping went away
 * (munmap, madvise): the migration must not commit it, and finalize frees
 * whatever device page the entry still holds. Under mm->dp_lock, a leaf lock.
 */
#define DP_BUSY 1ULL
#define DP_DROPPED 2ULL
#define DP_FLAGS (DP_BUSY | DP_DROPPED)
#define DP_PAGE(v) ((struct uhmm_page *)(uintptr_t)((v) & ~DP_FLAGS))

uint64_t uhmm_dp_get(struct uhmm_mm *mm, uint64_t addr);
/* Mark @addr busy if it is not; returns its value before, or DP_BUSY if it was busy. */
uint64_t uhmm_dp_claim(struct uhmm_mm *mm, uint64_t addr);
void uhmm_dp_release(struct uhmm_mm *mm, uint64_t addr);	/* drop the busy mark */
/* The same three with mm->dp_lock held by the caller, for whole ranges. */
uint64_t uhmm_dp_claim_locked(struct uhmm_mm *mm, uint64_t addr);
/* Release; returns a dropped entry's page, whose table reference the caller puts (unlocked). */
struct uhmm_page *uhmm_dp_release_locked(struct uhmm_mm *mm, uint64_t addr);
struct uhmm_page *uhmm_dp_remove_locked(struct uhmm_mm *mm, uint64_t addr);
/*
 * The program is about to unmap or zap [start, end) (@dropped), or its call
 * failed (!@dropped): no migration may put a page back there meanwhile.
 */
void uhmm_dp_mark_dropped(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool dropped);
int uhmm_dp_install_locked(struct uhmm_mm *mm, uint64_t addr, struct uhmm_page *page);
int uhmm_dp_install(struct uhmm_mm *mm, uint64_t addr, struct uhmm_page *page); /* takes a ref */
struct uhmm_page *uhmm_dp_remove(struct uhmm_mm *mm, uint64_t addr); /* returns the table's ref */
bool uhmm_dp_any(struct uhmm_mm *mm);
void uhmm_dp_drop_range(struct uhmm_mm *mm, uint64_t start, uint64_t end);
void uhmm_dp_move_range(struct uhmm_mm *mm, uint64_t from, uint64_t to, uint64_t len);
/* Bring @addr's device page back with its pagemap's migrate_to_ram(); poison on failure. */
/*
 * uhmm_dp_fault() flag, never passed to drivers: the fault of a CPU access
 * (the service worker's or the faulting thread's), which takes the page's
 * fault lock. A device's uhmm_range_fault() or device-exclusive fault-back
 * does not wait for it, as before: it may hold its device's lock, which a
 * migrate_to_ram() in flight may be waiting for (make stress hung so).
 */
#define UHMM_FAULT_CPU_TOUCH (1u << 31)
int uhmm_dp_fault(struct uhmm_mm *mm, uint64_t addr, unsigned int flags, pid_t tid);
void uhmm_dp_wait_unclaimed(struct uhmm_mm *mm, uint64_t addr);
/* The CLOCK_REALTIME instant @ms from now: pthread_cond_timedwait()'s deadline. */
void uhmm_deadline_ms(struct timespec *ts, long ms);
int uhmm_release_zero_pages(struct uhmm_mm *mm, uint64_t start, uint64_t end);
/* Evict every device page of [start, end) (all of them for 0, UINT64_MAX). */
int uhmm_dp_evict_range(struct uhmm_mm *mm, uint64_t start, uint64_t end);
void uhmm_fault_missing(struct uhmm_mm *mm, uint64_t addr, unsigned int uffd_flags, pid_t tid);
void uhmm_fault_wp(struct uhmm_mm *mm, uint64_t addr);
int uhmm_fault_in_thread(struct uhmm_mm *mm, uint64_t addr, bool write, pid_t tid);
int uhmm_unprotect_unless_busy(struct uhmm_mm *mm, uint64_t start, uint64_t end);
/* Fill missing pages of a trapping span ourselves (kernel-mode access would EFAULT in user mode). */
int uhmm_fill_missing(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool write);

/* The fault mode this process's next mm gets (uhmm_set_fault_mode(), UHMM_FAULTS). */
enum uhmm_fault_mode uhmm_fault_mode_wanted(void);

/* ---- thread_fault.c: faults served by the faulting thread (UHMM_FAULTS_IN_THREAD) ---- */
void uhmm_thread_faults_start(void);
void uhmm_thread_faults_stop(void);

/* ---- migrate.c ---- */
bool uhmm_mm_span_covers(struct uhmm_mm *mm, const struct uhmm_spanset *set, uint64_t addr);
bool uhmm_mm_is_missing(struct uhmm_mm *mm, uint64_t addr);
/* Poison markers uhmm put: remembered, dropped with the pages, moved by mremap(). */
void uhmm_poisoned_add(struct uhmm_mm *mm, uint64_t addr);
void uhmm_poisoned_drop(struct uhmm_mm *mm, uint64_t start, uint64_t end);
void uhmm_poisoned_move(struct uhmm_mm *mm, uint64_t from, uint64_t to, uint64_t len);
bool uhmm_poisoned(struct uhmm_mm *mm, uint64_t addr);
/* Zap [start, end) without the worker treating it as an application madvise. */
int uhmm_mm_self_zap(struct uhmm_mm *mm, uint64_t start, uint64_t end);
bool uhmm_mm_is_self_zap(struct uhmm_mm *mm, uint64_t start, uint64_t end);
uint64_t uhmm_service_read_mark(struct uhmm_mm *mm);
void uhmm_wake(struct uhmm_mm *mm, uint64_t start, uint64_t end);
/*
 * The migration gate: a migration that may move pages to a device holds it
 * from setup to finalize; fork() closes it (waits for those in flight, makes
 * new ones wait) so that no page lands on a device after fork() brought
 * them all back.
 */
void uhmm_migrate_gate_close(struct uhmm_mm *mm);
void uhmm_migrate_gate_open(struct uhmm_mm *mm);
bool uhmm_migrate_gate_closer(void);	/* is this thread forking? */
int uhmm_install_page(struct uhmm_mm *mm, uint64_t addr, const void *data);
int uhmm_migrate_setup_as(struct uhmm_migrate_vma *m, enum uhmm_notifier_event event, void *owner);

/* ---- devmem.c: pagemaps uhmm keeps for itself (no reference on the mm) ---- */
int uhmm_pagemap_add_internal(struct uhmm_mm *mm, uint64_t npages, void *owner,
			      const struct uhmm_pagemap_ops *ops, void *driver_data, struct uhmm_pagemap **out);
void uhmm_pagemap_free_internal(struct uhmm_pagemap *pgmap);

/* ---- exclusive.c: device-exclusive access ---- */
void uhmm_excl_fini(struct uhmm_mm *mm);	/* mm teardown: every page back to the CPU */

/* ---- stats.c: counters behind uhmm_stats() ---- */
#define UHMM_STAT_N (sizeof(struct uhmm_stats) / sizeof(uint64_t))
#define UHMM_STAT(field) (offsetof(struct uhmm_stats, field) / sizeof(uint64_t))
extern _Atomic uint64_t uhmm_stat_v[UHMM_STAT_N];
static inline void uhmm_stat_add(size_t idx, uint64_t n)
{
	atomic_fetch_add_explicit(&uhmm_stat_v[idx], n, memory_order_relaxed);
}
uint64_t uhmm_now_ns(void);
const char *uhmm_event_name(unsigned int event);

/* ---- trace.c: Chrome trace-event JSON, one write(2) per event ---- */
extern atomic_bool uhmm_trace_on;
static inline bool uhmm_tracing(void)
{
	return atomic_load_explicit(&uhmm_trace_on, memory_order_relaxed);
}
/* A complete event ("ph":"X") from @t0 to @t1 (ns); @args: JSON members or NULL. */
void uhmm_trace_span(const char *name, const char *cat, uint64_t t0, uint64_t t1, const char *args, ...)
	__attribute__((format(printf, 5, 6)));
/* Pages [start, start + n pages) now live @where ("system", "device", "freed", "poisoned"). */
void uhmm_trace_residency(uint64_t start, uint64_t n, const char *where, const void *owner);

/* Register all of [start, end) in the strongest mode any part of it has (mremap needs one VMA). */
int uhmm_mm_unify_registration(struct uhmm_mm *mm, uint64_t start, uint64_t end);

/* ---- zap.c ---- */
/* Take the CPU pages of [start, end) out (empty ptes), raising no event if it can. */
long uhmm_zap_range(struct uhmm_mm *mm, uint64_t start, uint64_t end);
uint64_t uhmm_move_pages(int fd, uint64_t dst, uint64_t src, uint64_t len, int *err);
int uhmm_zap_register_host(struct uhmm_mm *mm, uint64_t base, uint64_t len);
uint64_t uhmm_page_host_addr(const struct uhmm_page *page);	/* devmem.c */
void uhmm_zap_unregister_host(struct uhmm_mm *mm, uint64_t base, uint64_t len);
uint64_t uhmm_move_to_host(struct uhmm_mm *mm, uint64_t dst, uint64_t src, uint64_t len, int *err);
void uhmm_zap_fini(struct uhmm_mm *mm);

#endif /* UHMM_INTERNAL_H */
