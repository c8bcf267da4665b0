// SPDX-License-Identifier: MIT
/*
 * Zapping CPU pages that migrate to a device, without an event round trip.
 *
 * The obvious zap, MADV_DONTNEED, raises a REMOVE event on uhmm's
 * userfaultfd, and the kernel holds the zapping thread until uhmm's reader
 * thread has read it: two cross-CPU wake-ups per zap, tens of microseconds
 * each on a VM, the largest fixed cost of a migration to the device.
 *
 * UFFDIO_MOVE raises no event. uhmm keeps a quiet userfaultfd (no event
 * features) with one 2 MiB scratch area registered on it, moves the pages
 * of the range into the scratch area (the range is left with empty ptes,
 * exactly as after MADV_DONTNEED, so the next CPU touch traps as MISSING),
 * then discards them there with MADV_DONTNEED: the scratch area is not
 * registered with the event-raising userfaultfd, so that zap is silent.
 *
 * UFFDIO_MOVE refuses what it cannot move: pages shared with a fork child
 * (not anon-exclusive), pinned pages, VMAs whose protection differs from
 * the scratch area's (read-only, executable, mlocked, protection keys). The
 * rest of the range then takes the MADV_DONTNEED path (uhmm_mm_self_zap).
 *
 * @zap_lock serialises users of the one scratch area; it is a leaf lock held
 * only across the two system calls.
 *
 * The same quiet userfaultfd makes zero-copy migration possible for devices
 * whose memory is host memory (uhmm_pagemap_set_host_memory()): that memory
 * is registered with it, and a page moves from the program into the
 * device's page, and back, with UFFDIO_MOVE instead of being copied.
 */
#include <sched.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

/* Set up the quiet userfaultfd and its scratch area; under zap_lock. */
static int zap_setup(struct uhmm_mm *mm)
{
	uint64_t features, base;
	int fd;

	if (!(uhmm_kfeatures()->flags & UHMM_FEAT_UFFD_MOVE))
		return -EOPNOTSUPP;
	fd = uhmm_uffd_open(UFFD_FEATURE_MOVE, &features);
	if (fd < 0)
		return fd;
	if (!(features & UFFD_FEATURE_MOVE))
		goto err_close;
	/*
	 * uhmm's own memory, PMD-aligned (a THP moves whole), emptied: a move
	 * fails with EEXIST where a page is present. Freeing it resets the
	 * mapping (registration, DONTFORK).
	 */
	base = (uintptr_t)uhmm_kmalloc(UHMM_PMD_SIZE);
	if (!base)
		goto err_close;
	syscall(SYS_madvise, base, UHMM_PMD_SIZE, MADV_DONTNEED);
	syscall(SYS_madvise, base, UHMM_PMD_SIZE, MADV_DONTFORK);
	/*
	 * MISSING|WP like the ranges it takes pages from: UFFDIO_MOVE wants
	 * equal vm_page_prot, and uffd-wp changes it.
	 */
	if (uhmm_uffd_register(fd, base, base + UHMM_PMD_SIZE,
			       UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, NULL)) {
		uhmm_kfree((void *)(uintptr_t)base);
		goto err_close;
	}
	mm->zap_uffd = fd;
	mm->zap_area = base;
	return 0;

err_close:
	close(fd);
	return -EOPNOTSUPP;
}

/*
 * UFFDIO_MOVE [src, src + len) to @dst on @fd (whose registration covers
 * @dst). Returns the bytes moved from @src on; *@err is 0 when all moved,
 * else the errno that stopped it (EBUSY: a pinned or shared page; EEXIST:
 * a page already at the destination). A partial move fails with EAGAIN
 * and says how far it got; an event waiting for a service thread gives
 * EAGAIN with nothing moved: both are tried again.
 */
uint64_t uhmm_move_pages(int fd, uint64_t dst, uint64_t src, uint64_t len, int *err)
{
	struct uffdio_move mv = {
		.dst = dst, .src = src, .len = len,
		.mode = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES | UFFDIO_MOVE_MODE_DONTWAKE,
	};
	uint64_t done = 0;

	*err = 0;
	for (int tries = 0; done < len && tries < 64; tries++) {
		int e = uhmm_inject(UHMM_INJECT_UFFD_MOVE);

		mv.move = 0;
		if (!e && ioctl(fd, UFFDIO_MOVE, &mv) == 0) {
			mv.move = (int64_t)mv.len;
		} else if (mv.move <= 0) {
			*err = e ? -e : errno;
			if (*err != EAGAIN)
				break;
			sched_yield();	/* an event waits for a service thread (UHMM_EAGAIN_TRIES) */
		}
		if (mv.move > 0) {
			done += (uint64_t)mv.move;
			mv.dst += (uint64_t)mv.move;
			mv.src += (uint64_t)mv.move;
			mv.len -= (uint64_t)mv.move;
		}
	}
	if (done == len)
		*err = 0;
	else if (!*err)
		*err = EAGAIN;
	return done;
}

/*
 * Move [start, end) (within one PMD) into the scratch area at the same
 * offset, then discard it. Returns the bytes taken out from @start on;
 * *@pinned says the move stopped at a pinned page (EBUSY): something (a
 * process_vm_writev() of a device copy, O_DIRECT I/O) is about to write it.
 */
static uint64_t zap_piece(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool *pinned)
{
	uint64_t dst = mm->zap_area + (start & (UHMM_PMD_SIZE - 1));
	int err;
	uint64_t done = uhmm_move_pages(mm->zap_uffd, dst, start, end - start, &err);

	if (err == EBUSY)
		*pinned = true;
	if (done) {
		syscall(SYS_madvise, dst, done, MADV_DONTNEED);
		uhmm_stat_add(UHMM_STAT(zaps_moved), done >> UHMM_PAGE_SHIFT);
	}
	return done;
}

/* The quiet userfaultfd, set up on first use (zap_lock held). */
static bool zap_ready(struct uhmm_mm *mm)
{
	if (mm->zap_state == 0)
		mm->zap_state = zap_setup(mm) == 0 ? 1 : -1;
	return mm->zap_state > 0;
}

/*
 * Make [base, base + len) host memory pages can be moved into: registered
 * with the quiet userfaultfd, WP mode only (the protection UFFDIO_MOVE
 * wants equal to the program's ranges, which are registered WP too; no
 * MISSING mode: a touch of an empty page there must not trap, nobody reads
 * the quiet userfaultfd).
 */
int uhmm_zap_register_host(struct uhmm_mm *mm, uint64_t base, uint64_t len)
{
	int ret;

	pthread_mutex_lock(&mm->zap_lock);
	ret = zap_ready(mm) ? uhmm_uffd_register(mm->zap_uffd, base, base + len, UFFDIO_REGISTER_MODE_WP, NULL)
			    : -EOPNOTSUPP;
	pthread_mutex_unlock(&mm->zap_lock);
	return ret;
}

void uhmm_zap_unregister_host(struct uhmm_mm *mm, uint64_t base, uint64_t len)
{
	struct uffdio_range r = { .start = base, .len = len };

	pthread_mutex_lock(&mm->zap_lock);
	if (mm->zap_state > 0)
		(void)ioctl(mm->zap_uffd, UFFDIO_UNREGISTER, &r);	/* memory unmapped since: nothing to do */
	pthread_mutex_unlock(&mm->zap_lock);
}

/*
 * Move the program's pages [src, src + len) into registered host memory at
 * @dst (a device's pages, zero copy). A destination page still holding
 * something (a device page that was filled by copy before it was freed) is
 * emptied and the move tried once more: the driver gave it as the place the
 * page goes. Returns the bytes moved; *@err as for uhmm_move_pages().
 *
 * Whole PMDs at PMD-aligned addresses on both sides (a THP can move as one
 * PMD) are emptied first as well: base pages moved out of that memory
 * earlier left an empty page table there, and UFFDIO_MOVE splits a THP
 * whose destination PMD is not empty. MADV_DONTNEED frees an empty page
 * table (CONFIG_PT_RECLAIM, Linux 6.14+; without it nothing changes). It
 * costs one call per run, and nothing is lost: the destination is the
 * driver's empty slot.
 */
uint64_t uhmm_move_to_host(struct uhmm_mm *mm, uint64_t dst, uint64_t src, uint64_t len, int *err)
{
	uint64_t done;

	if (!((dst | src) & (UHMM_PMD_SIZE - 1)) && len >= UHMM_PMD_SIZE)
		syscall(SYS_madvise, dst, len & ~(UHMM_PMD_SIZE - 1), MADV_DONTNEED);	/* quiet: no event */
	done = uhmm_move_pages(mm->zap_uffd, dst, src, len, err);

	if (*err == EEXIST) {
		syscall(SYS_madvise, dst + done, len - done, MADV_DONTNEED);	/* quiet: no event */
		done += uhmm_move_pages(mm->zap_uffd, dst + done, src + done, len - done, err);
	}
	return done;
}

/*
 * Take the pages of [start, end) out of the CPU page table. Returns the
 * bytes taken from @start on (all of them, or up to a pinned page), or
 * -errno with none taken for sure. A page UFFDIO_MOVE finds pinned stays,
 * and so does the rest of the range: its pin may be a write on its way in
 * (a device copy through the CPU page table), which MADV_DONTNEED would
 * throw away; the kernel's migration leaves a pinned page alone too. Other
 * refusals go the slow way (MADV_DONTNEED).
 */
long uhmm_zap_range(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	uint64_t a = start;
	bool pinned = false;
	int ret;

	pthread_mutex_lock(&mm->zap_lock);
	while (zap_ready(mm) && a < end && !pinned) {
		uint64_t e = uhmm_align_down(a, UHMM_PMD_SIZE) + UHMM_PMD_SIZE;
		uint64_t n = zap_piece(mm, a, e < end ? e : end, &pinned);

		a += n;
		if (a < e && a < end)
			break;	/* refused: the rest goes the slow way, unless pinned */
	}
	pthread_mutex_unlock(&mm->zap_lock);
	if (pinned || a == end)
		return (long)(a - start);
	ret = uhmm_mm_self_zap(mm, a, end);
	return ret ? ret : (long)(end - start);
}

/* Release the quiet userfaultfd and its area (mm teardown). */
void uhmm_zap_fini(struct uhmm_mm *mm)
{
	if (mm->zap_state > 0) {
		close(mm->zap_uffd);	/* first: no registration outlives it */
		uhmm_kfree((void *)(uintptr_t)mm->zap_area);
	}
	mm->zap_state = 0;
	pthread_mutex_destroy(&mm->zap_lock);
}
