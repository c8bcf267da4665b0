// SPDX-License-Identifier: MIT
/*
 * Invalidate *before* the CPU page table changes, as the kernel does, for
 * the calls uhmm can see: the program's own munmap(), mremap(), madvise(),
 * mprotect(), pkey_mprotect() and mmap(MAP_FIXED) resolve to these
 * definitions (the library, or the program it is linked into statically,
 * precedes libc in symbol lookup). Each one opens an invalidation of the
 * range, makes the system call, and closes the invalidation: a device that
 * calls uhmm_interval_read_begin() meanwhile waits, so it can never map
 * the old pages again, nor the new ones before they are in place.
 *
 * Calls libc makes internally (free() of a large block) do not come here;
 * their userfaultfd events (UNMAP, REMOVE, REMAP) reach the notifiers from
 * the service thread instead, after the change. mprotect() has no event: a
 * libc-internal mprotect is not seen (see docs/architecture.md).
 */
#include <errno.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

struct inval_guard {
	struct uhmm_mm *mm;
	int opened;
};

/* Open an invalidation of [addr, addr + len) if any notifier watches it. */
static void guard_open(struct inval_guard *g, const void *addr, size_t len,
		       enum uhmm_notifier_event event)
{
	uint64_t start = uhmm_align_down((uintptr_t)addr, UHMM_PAGE_SIZE);
	uint64_t end = uhmm_align_up((uintptr_t)addr + len, UHMM_PAGE_SIZE);
	struct uhmm_notifier_range r = {
		.start = start, .end = end, .event = event, .flags = UHMM_NOTIFIER_RANGE_BLOCKABLE,
	};

	if (!g->mm)
		g->mm = uhmm_mm_peek();
	if (!g->mm || len == 0 || end <= start || uhmm_in_service_thread())
		return;
	if (!uhmm_notifiers_overlap(g->mm, start, end))
		return;
	uhmm_invalidate_start(g->mm, &r);
	g->opened++;
}

static void guard_close(struct inval_guard *g)
{
	while (g->opened-- > 0)
		uhmm_invalidate_end(g->mm);
}

static void guard_forget(struct inval_guard *g, const void *addr, size_t len)
{
	if (g->opened > 0)
		uhmm_mm_forget(g->mm, uhmm_align_down((uintptr_t)addr, UHMM_PAGE_SIZE),
			       uhmm_align_up((uintptr_t)addr + len, UHMM_PAGE_SIZE));
}

/*
 * Take mm->mmap_lock exclusive for a call that changes mappings or takes a
 * permission away, as the kernel takes its mmap_lock for write: it waits for
 * the migrations in flight (each collected its pages from the VMAs as they
 * were, and maps them on the device just before finalize) and keeps new
 * ones out. Taken before any invalidation is opened. Not on the service
 * thread (migrations may wait for it).
 */
static bool map_lock(struct inval_guard *g)
{
	if (!g->mm)
		g->mm = uhmm_mm_peek();
	if (!g->mm || uhmm_in_service_thread())
		return false;
	pthread_rwlock_wrlock(&g->mm->mmap_lock);
	return true;
}

static void map_unlock(struct inval_guard *g, bool locked)
{
	if (locked)
		pthread_rwlock_unlock(&g->mm->mmap_lock);
}

/*
 * The pages of [addr, addr + len) are about to go: no migration may put
 * them back meanwhile (uhmm_dp_mark_dropped()); once they are gone, their
 * device pages go too, before the call returns (the kernel's zap frees
 * device-private entries in the same call; the event would come later).
 */
static void guard_drop(struct inval_guard *g, const void *addr, size_t len)
{
	if (!g->mm || !len || uhmm_in_service_thread())
		return;
	uhmm_dp_mark_dropped(g->mm, uhmm_align_down((uintptr_t)addr, UHMM_PAGE_SIZE),
			     uhmm_align_up((uintptr_t)addr + len, UHMM_PAGE_SIZE), true);
	(void)uhmm_inject(UHMM_INJECT_DROP_DELAY);	/* a thread preempted before its call, when asked */
}

static void guard_dropped(struct inval_guard *g, const void *addr, size_t len, bool done)
{
	uint64_t s = uhmm_align_down((uintptr_t)addr, UHMM_PAGE_SIZE);
	uint64_t e = uhmm_align_up((uintptr_t)addr + len, UHMM_PAGE_SIZE);

	if (!g->mm || !len || uhmm_in_service_thread())
		return;
	if (done)
		uhmm_dp_drop_range(g->mm, s, e);
	else
		uhmm_dp_mark_dropped(g->mm, s, e, false);
}

UHMM_EXPORT int munmap(void *addr, size_t len)
{
	struct inval_guard g = { 0 };
	bool locked = map_lock(&g);
	long ret;

	guard_open(&g, addr, len, UHMM_NOTIFY_UNMAP);
	guard_drop(&g, addr, len);
	ret = syscall(SYS_munmap, addr, len);
	guard_dropped(&g, addr, len, ret == 0);
	if (ret == 0)
		guard_forget(&g, addr, len);
	guard_close(&g);
	map_unlock(&g, locked);
	return (int)ret;
}

/*
 * A same-size MREMAP_FIXED move of [old, old + size) over several VMAs, one
 * VMA at a time. The kernel (6.17+) moves several VMAs itself, but not when
 * a userfaultfd watches one (the REMAP event cannot be sent from inside
 * that loop): it stops there with EFAULT, having moved the ones before.
 * The pieces are uhmm's doing when they do not merge back (moved pieces
 * keep their own page offsets), so the program must not see them. Like the
 * kernel's, a move that fails halfway leaves the pieces before it moved;
 * each piece raises its own REMAP event. Returns @to, -errno, or 0 when
 * the range is one VMA (or not fully mapped): the plain call decides.
 */
static long mremap_pieces(uintptr_t old, size_t size, uintptr_t to)
{
	struct uhmm_vma v[64];
	int n = uhmm_vma_list(old, old + size, v, (int)UHMM_ARRAY_SIZE(v));

	/* one VMA, or a hole (not one mapping as far as anybody knows): the plain call */
	if (n < 2 || n > (int)UHMM_ARRAY_SIZE(v) || !uhmm_vmas_cover(v, n, old, old + size))
		return 0;
	for (int i = 0; i < n; i++) {
		uintptr_t s = v[i].start > old ? v[i].start : old;
		uintptr_t e = v[i].end < old + size ? v[i].end : old + size;
		long r = syscall(SYS_mremap, s, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, to + (s - old));

		if (r < 0)
			return -errno;
	}
	return (long)to;
}

UHMM_EXPORT void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...)
{
	struct inval_guard g = { 0 };
	bool locked;
	void *new_addr = NULL;
	long ret;

	if (flags & MREMAP_FIXED) {
		va_list ap;

		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	locked = map_lock(&g);
	if (flags & MREMAP_FIXED)
		guard_open(&g, new_addr, new_size, UHMM_NOTIFY_UNMAP);
	guard_open(&g, old, old_size, UHMM_NOTIFY_UNMAP);
	/*
	 * mremap() wants one VMA (6.17+ moves several, but stops with EFAULT
	 * at the first one a userfaultfd watches, having moved the ones
	 * before), and uhmm registering part of a mapping splits it: make the
	 * registration uniform first, so that the pieces merge back.
	 */
	if (locked)
		(void)uhmm_mm_unify_registration(g.mm, (uintptr_t)old, (uintptr_t)old + old_size);
	ret = 0;
	if (locked && flags == (MREMAP_MAYMOVE | MREMAP_FIXED) && old_size == new_size &&
	    !((uintptr_t)old & (UHMM_PAGE_SIZE - 1)))
		ret = mremap_pieces((uintptr_t)old, uhmm_align_up(old_size, UHMM_PAGE_SIZE), (uintptr_t)new_addr);
	if (ret < 0) {
		errno = (int)-ret;
		ret = -1;
	} else if (ret == 0) {
		ret = syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
	}
	guard_close(&g);
	map_unlock(&g, locked);
	/*
	 * The kernel moves device-private entries with the page table, within
	 * the call; uhmm moves its table entries when the worker handles the
	 * REMAP event. Return only once it has: a madvise(DONTNEED) of the new
	 * range made right after would otherwise find nothing there to drop,
	 * and the entries, moved in later, would bring the old data back. After
	 * the unlock: the worker may be in a migration waiting for mmap_lock.
	 */
	if (locked)
		uhmm_service_sync(g.mm);
	return (void *)ret;
}

/* Advice whose pages lose their data (devices drop them, device pages go). */
static bool madvise_discards_data(int advice)
{
	switch (advice) {
	case MADV_DONTNEED:
	case MADV_FREE:
	case MADV_REMOVE:
	case MADV_DONTNEED_LOCKED:
		return true;
	default:
		return false;
	}
}

/* Advice that changes the CPU page table: the discarding kinds, and those that move pages. */
static bool madvise_drops_pages(int advice)
{
	return madvise_discards_data(advice) || advice == MADV_PAGEOUT || advice == MADV_COLLAPSE;
}

UHMM_EXPORT int madvise(void *addr, size_t len, int advice)
{
	struct inval_guard g = { 0 };
	bool data_goes = madvise_discards_data(advice);
	long ret;

	if (madvise_drops_pages(advice))
		guard_open(&g, addr, len, UHMM_NOTIFY_CLEAR);
	if (data_goes)
		guard_drop(&g, addr, len);
	ret = syscall(SYS_madvise, addr, len, advice);
	if (data_goes)
		guard_dropped(&g, addr, len, ret == 0);
	guard_close(&g);
	return (int)ret;
}

/* Only a change that may remove a permission needs the devices told. */
static bool prot_may_remove(int prot)
{
	return (prot & (PROT_READ | PROT_WRITE)) != (PROT_READ | PROT_WRITE);
}

/* A protection change that may take a permission away is a change of the mappings (map_lock()). */
static long protect_call(long nr, void *addr, size_t len, int prot, int pkey, bool may_remove)
{
	struct inval_guard g = { 0 };
	bool locked = may_remove && map_lock(&g);
	long ret;

	if (may_remove)
		guard_open(&g, addr, len, UHMM_NOTIFY_PROTECTION_VMA);
	ret = nr == SYS_pkey_mprotect ? syscall(nr, addr, len, prot, pkey) : syscall(nr, addr, len, prot);
	guard_close(&g);
	map_unlock(&g, locked);
	return ret;
}

UHMM_EXPORT int mprotect(void *addr, size_t len, int prot)
{
	return (int)protect_call(SYS_mprotect, addr, len, prot, -1, prot_may_remove(prot));
}

UHMM_EXPORT int pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
	/* A protection key can take away access whatever @prot says. */
	return (int)protect_call(SYS_pkey_mprotect, addr, len, prot, pkey, true);
}

UHMM_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct inval_guard g = { 0 };
	bool locked = (flags & MAP_FIXED) && map_lock(&g);
	long ret;

	/* MAP_FIXED replaces whatever was mapped there: an unmap first. */
	if (flags & MAP_FIXED) {
		guard_open(&g, addr, len, UHMM_NOTIFY_UNMAP);
		guard_drop(&g, addr, len);
	}
	ret = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	if (flags & MAP_FIXED)
		guard_dropped(&g, addr, len, ret != -1);
	if (ret != -1)
		guard_forget(&g, addr, len);
	guard_close(&g);
	map_unlock(&g, locked);
	return (void *)ret;
}

UHMM_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));
