// SPDX-License-Identifier: MIT
/*
 * uhmm_range_fault(): the user-space hmm_range_fault() (mm/hmm.c).
 *
 * One pass: list the VMAs, check every request against them (so that an
 * -EFAULT or -EPERM leaves memory untouched), read the page-table state
 * from pagemap, fault in what is requested and missing with
 * MADV_POPULATE_READ/WRITE, and go round again until nothing needs a fault;
 * then fill hmm_pfns. The caller's notifier sequence is checked at the top
 * of every pass and at the end (-EBUSY).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <limits.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

#define RANGE_FAULT_MAX_PASSES 16
#define REQ_BITS (UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE)

struct fault_ctx {
	struct uhmm_range *range;
	uint64_t npages;
	struct uhmm_vma *vmas;
	int nvmas;
	uint8_t *state;		/* UHMM_PTE_* per page */
	int transient;		/* last transient error (-ENOMEM), if any */
	const char *why;	/* the step that failed, for the trace */
	int step_err;		/* the error that step saw, before it was mapped to ours */
};

static inline uint64_t req_of(const struct uhmm_range *r, uint64_t i)
{
	return ((r->hmm_pfns[i] & r->pfn_flags_mask) | r->default_flags) & REQ_BITS;
}

/* OR of the requests of pages [a, b) of the range. */
static uint64_t req_any(const struct uhmm_range *r, uint64_t a, uint64_t b)
{
	uint64_t any = r->default_flags & REQ_BITS;

	if (!(r->pfn_flags_mask & REQ_BITS))
		return any;
	for (uint64_t i = a; i < b && any != REQ_BITS; i++)
		any |= req_of(r, i);
	return any;
}

static uint64_t page_index(const struct uhmm_range *r, uint64_t addr)
{
	return (addr - r->start) >> UHMM_PAGE_SHIFT;
}

static bool vma_usable(const struct uhmm_vma *v)
{
	return (v->flags & UHMM_VMA_READ) && !(v->flags & UHMM_VMA_SPECIAL);
}

/* Return the VMAs of the range in ctx (allocated), or -errno. */
static int ctx_load_vmas(struct fault_ctx *c)
{
	int n, max = 16;

	for (;;) {
		uhmm_kfree(c->vmas);
		c->vmas = uhmm_kmalloc((size_t)max * sizeof(*c->vmas));
		if (!c->vmas)
			return -ENOMEM;
		n = uhmm_vma_list(c->range->start, c->range->end, c->vmas, max);
		if (n < 0)
			return n;
		if (n <= max)
			break;
		max = n + 16;
	}
	c->nvmas = n;
	return 0;
}

/*
 * Check every request against the VMAs before anything is faulted: no VMA,
 * no read permission or a special mapping is -EFAULT where a fault is
 * requested; a write request on a read-only VMA is -EPERM.
 */
static int ctx_check_requests(struct fault_ctx *c)
{
	struct uhmm_range *r = c->range;
	uint64_t addr = r->start;

	for (int i = 0; i <= c->nvmas; i++) {
		uint64_t vs = i < c->nvmas ? c->vmas[i].start : r->end;
		uint64_t hole_end = vs < r->end ? vs : r->end;

		if (addr < hole_end && (req_any(r, page_index(r, addr), page_index(r, hole_end)) & UHMM_PFN_REQ_FAULT))
			return -EFAULT;
		if (i == c->nvmas)
			break;
		uint64_t s = c->vmas[i].start > r->start ? c->vmas[i].start : r->start;
		uint64_t e = c->vmas[i].end < r->end ? c->vmas[i].end : r->end;
		uint64_t req = req_any(r, page_index(r, s), page_index(r, e));

		if (!vma_usable(&c->vmas[i]) && (req & UHMM_PFN_REQ_FAULT))
			return -EFAULT;
		if (!(c->vmas[i].flags & UHMM_VMA_WRITE) && (req & UHMM_PFN_REQ_WRITE))
			return -EPERM;
		addr = e;
	}
	return 0;
}

static bool page_writable(const struct uhmm_vma *v, uint8_t st)
{
	if (!(v->flags & UHMM_VMA_WRITE) || !(st & UHMM_PTE_PRESENT) || (st & UHMM_PTE_ZERO))
		return false;
	if (v->flags & UHMM_VMA_SHARED)
		return true;
	/* Private: only an anonymous page we alone map (not copy-on-write). */
	return !(st & UHMM_PTE_FILE) && (st & UHMM_PTE_EXCLUSIVE);
}

static uint64_t page_need(uint64_t req, const struct uhmm_vma *v, uint8_t st)
{
	uint64_t need = 0;

	if (st & UHMM_PTE_DEVICE)
		return 0;	/* the owner's device page: valid and writable */
	if ((req & UHMM_PFN_REQ_FAULT) && !(st & UHMM_PTE_PRESENT))
		need |= UHMM_PFN_REQ_FAULT;
	if ((req & UHMM_PFN_REQ_WRITE) && !page_writable(v, st))
		need |= UHMM_PFN_REQ_WRITE;
	return need;
}

static int populate(uint64_t start, uint64_t end, bool write)
{
	for (;;) {
		if (madvise((void *)(uintptr_t)start, end - start,
			    write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
			return 0;
		switch (errno) {
		case EINTR:
		case EAGAIN:
			continue;
		case EINVAL:	/* VM_PFNMAP / VM_IO, or changed under us */
		case EFAULT:
			return -EFAULT;
		case ENOMEM:
			/*
			 * Also what a range unmapped under us gives. Mapped
			 * again by now: it changed, go round (the pass loop
			 * reports -ENOMEM if it keeps failing).
			 */
			return uhmm_vma_covers(start, end) ? -EAGAIN : -EFAULT;
		default:
			return -errno;
		}
	}
}

/*
 * In a span that traps missing pages, a kernel-mode fault would go to the
 * worker (and, in user-mode-only mode, fail): fill the holes ourselves,
 * then let MADV_POPULATE do the rest (copy-on-write of zero pages).
 */
static int fault_run(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool write)
{
	if (uhmm_mm_is_missing(mm, start)) {
		int ret = uhmm_fill_missing(mm, start, end, write);

		if (ret)
			return ret == -ENOENT ? -EFAULT : ret;
	}
	return populate(start, end, write);
}

/*
 * A write fault is about to replace zero pages of [s, e) that uhmm
 * write-protected when it reported them (ctx_protect_zero()): do here what
 * the service thread would do for a CPU write (invalidate, un-protect), so
 * that a kernel-mode write works in user-mode-only mode too. Pages a
 * migration holds keep their protection.
 */
static void ctx_release_zero(struct fault_ctx *c, uint64_t s, uint64_t e)
{
	struct uhmm_range *r = c->range;
	bool any = false;

	for (uint64_t a = s; a < e && !any; a += UHMM_PAGE_SIZE)
		any = c->state[page_index(r, a)] & UHMM_PTE_ZERO;
	if (!any)
		return;
	(void)uhmm_release_zero_pages(r->notifier->mm, s, e);
}

/*
 * A write fault of [s, e) failed with EFAULT, and a zero page is there
 * again: another device's uhmm_range_fault() mapped it and protected it
 * after this one lifted the protection. With a user-mode-only userfaultfd
 * the kernel-mode write then fails instead of waiting for the service
 * thread: not an error of the range, a race to go round.
 */
static bool zero_again(uint64_t s, uint64_t e)
{
	uint8_t st[64];

	for (uint64_t a = s; a < e; a += sizeof(st) * UHMM_PAGE_SIZE) {
		uint64_t b = e - a > sizeof(st) * UHMM_PAGE_SIZE ? a + sizeof(st) * UHMM_PAGE_SIZE : e;

		if (uhmm_pagemap_read(a, b, st, 0))
			return false;
		for (uint64_t i = 0; i < (b - a) >> UHMM_PAGE_SHIFT; i++)
			if ((st[i] & UHMM_PTE_PRESENT) && (st[i] & UHMM_PTE_ZERO))
				return true;
	}
	return false;
}

/*
 * Fault in the runs of pages of VMA @v that need it. Returns the number of
 * runs faulted (0: nothing needed) or -errno.
 */
static int ctx_fault_vma(struct fault_ctx *c, const struct uhmm_vma *v, uint64_t s, uint64_t e)
{
	struct uhmm_range *r = c->range;
	uint64_t run_start = 0, run_need = 0;
	int runs = 0, ret;

	for (uint64_t a = s; a <= e; a += UHMM_PAGE_SIZE) {
		uint64_t need = 0, i = page_index(r, a);

		if (a < e)
			need = page_need(req_of(r, i), v, c->state[i]);
		if (need && !run_need) {
			run_start = a;
			run_need = need;
		} else if (run_need && (!need || a == e)) {
			if (run_need & UHMM_PFN_REQ_WRITE)
				ctx_release_zero(c, run_start, a);
			ret = fault_run(r->notifier->mm, run_start, a, run_need & UHMM_PFN_REQ_WRITE);
			if (ret == -EFAULT && (run_need & UHMM_PFN_REQ_WRITE) && zero_again(run_start, a))
				ret = 0;	/* go round: release it again */
			if (ret)
				return ret;
			runs++;
			run_need = 0;
		} else {
			run_need |= need;
		}
	}
	return runs;
}

static uint64_t page_pfn(const struct uhmm_vma *v, uint64_t addr, uint8_t st)
{
	uint64_t f = UHMM_PFN_VALID, order = 0;

	if (page_writable(v, st))
		f |= UHMM_PFN_WRITE;
	if (v->flags & UHMM_VMA_HUGETLB)
		order = v->page_shift - UHMM_PAGE_SHIFT;
	else if (st & UHMM_PTE_HUGE)
		order = UHMM_PMD_SHIFT - UHMM_PAGE_SHIFT;
	f |= order << UHMM_PFN_ORDER_SHIFT;
	return f | ((st & UHMM_PTE_ZERO) ? UHMM_ZERO_PFN : addr >> UHMM_PAGE_SHIFT);
}

/*
 * The range owner's device page at @addr. Writable only where the VMA is:
 * the kernel's mprotect() takes the write bit off device-private entries,
 * and a device told WRITE for a page of read-only memory would write into
 * it through its own mapping, never asking again (seen in make stress: a
 * device READ after mprotect(PROT_READ) mapped the page writable, and the
 * device WRITE that followed succeeded).
 */
static uint64_t device_pfn(struct uhmm_mm *mm, const struct uhmm_vma *v, uint64_t addr)
{
	struct uhmm_page *page = DP_PAGE(uhmm_dp_get(mm, addr));

	uint64_t order;

	/* Gone since the pass looked: not present (the sequence check catches it). */
	if (!page)
		return 0;
	/* a 2 MiB unit on the device, mapped where a PMD could map it: PMD order, as for a device THP */
	order = uhmm_page_order(page);
	if (uhmm_page_index(page) % UHMM_PMD_PAGES != (addr >> UHMM_PAGE_SHIFT) % UHMM_PMD_PAGES)
		order = 0;
	return UHMM_PFN_VALID | ((v->flags & UHMM_VMA_WRITE) ? UHMM_PFN_WRITE : 0) |
	       (order << UHMM_PFN_ORDER_SHIFT) | uhmm_page_to_pfn(page);
}

static void ctx_fill(struct fault_ctx *c)
{
	struct uhmm_range *r = c->range;
	uint64_t addr = r->start;

	for (int i = 0; i <= c->nvmas; i++) {
		uint64_t hole_end = i < c->nvmas && c->vmas[i].start < r->end ? c->vmas[i].start : r->end;

		for (; addr < hole_end; addr += UHMM_PAGE_SIZE)
			r->hmm_pfns[page_index(r, addr)] = UHMM_PFN_ERROR;
		if (i == c->nvmas)
			break;
		const struct uhmm_vma *v = &c->vmas[i];
		uint64_t e = v->end < r->end ? v->end : r->end;

		for (; addr < e; addr += UHMM_PAGE_SIZE) {
			uint64_t idx = page_index(r, addr);
			uint8_t st = c->state[idx];

			if (!vma_usable(v))
				r->hmm_pfns[idx] = UHMM_PFN_ERROR;
			else if (st & UHMM_PTE_DEVICE)
				r->hmm_pfns[idx] = device_pfn(r->notifier->mm, v, addr);
			else if (!(st & UHMM_PTE_PRESENT))
				r->hmm_pfns[idx] = 0;
			else
				r->hmm_pfns[idx] = page_pfn(v, addr, st);
		}
	}
}

/*
 * A device page where the pagemap read showed the CPU page present: a
 * migration claimed it before this call's read_begin() (its invalidation
 * was over) and committed since, zapping the CPU page with no new
 * invalidation. Reporting the stale "present" would let the device map a
 * page that is gone (seen: a device READ through such a mapping failed
 * with EFAULT unprivileged). Read the page table again.
 */
#define DP_SCAN_CHANGED 2

/* What the device-private table says of a range, gathered under dp_lock. */
struct dp_scan {
	struct fault_ctx *c;
	uint64_t first;		/* the range's first virtual page number */
	uint64_t fault_at;	/* the page to migrate back (walk returned 1) or held (-EBUSY) */
};

static int dp_scan_entry(void *arg, uint64_t key, uint64_t *val)
{
	struct dp_scan *s = arg;
	struct uhmm_range *r = s->c->range;
	uint64_t i = key - s->first;
	struct uhmm_page *page = DP_PAGE(*val);

	if (*val & DP_BUSY) {
		/*
		 * A migration holds the page: the kernel's migration entry. Not
		 * present, even where the CPU page is still mapped (write-
		 * protected until the commit zaps it): a device that mapped it
		 * would keep a mapping the commit removes without another
		 * invalidation. Where a fault is requested, wait (-EBUSY).
		 */
		if (req_of(r, i) & REQ_BITS) {
			s->fault_at = key;	/* the caller waits for it */
			return -EBUSY;
		}
		s->c->state[i] = 0;
		return 0;
	}
	if (!page)
		return 0;
	if (s->c->state[i] & UHMM_PTE_PRESENT)
		return DP_SCAN_CHANGED;
	if (page->pgmap->owner == r->dev_private_owner && r->dev_private_owner) {
		s->c->state[i] |= UHMM_PTE_DEVICE;
		return 0;
	}
	if (!(req_of(r, i) & UHMM_PFN_REQ_FAULT))
		return 0;
	s->fault_at = key;
	return 1;
}

/*
 * Pages in the device-private table (one walk over its entries in the
 * range, under dp_lock). The range owner's device pages are reported as
 * theirs (VALID, WRITE, device pfn); another owner's are migrated back where
 * a fault is requested (like do_swap_page() calling migrate_to_ram()), from
 * this thread so that user-mode-only userfaultfd works too, outside the
 * lock; pages a migration holds are not present (-EBUSY where a fault is
 * requested). Returns 1 if a page came back (go round again), 0, or -errno.
 */
static int ctx_device_pages(struct fault_ctx *c)
{
	struct uhmm_range *r = c->range;
	struct uhmm_mm *mm = r->notifier->mm;
	struct dp_scan s = { .c = c, .first = r->start >> UHMM_PAGE_SHIFT };
	uint64_t from = s.first, last = s.first + c->npages - 1;
	int back = 0, ret;

	if (!uhmm_dp_any(mm))
		return 0;
	for (;;) {
		pthread_mutex_lock(&mm->dp_lock);
		ret = uhmm_radix_walk(&mm->devpriv, from, last, dp_scan_entry, &s);
		pthread_mutex_unlock(&mm->dp_lock);
		if (ret == -EBUSY)
			uhmm_dp_wait_unclaimed(mm, s.fault_at << UHMM_PAGE_SHIFT);
		if (ret <= 0)
			return ret ? ret : back;
		if (ret == DP_SCAN_CHANGED)
			return 1;
		uint64_t i = s.fault_at - s.first;

		ret = uhmm_dp_fault(mm, s.fault_at << UHMM_PAGE_SHIFT,
				    (req_of(r, i) & UHMM_PFN_REQ_WRITE) ? UHMM_FAULT_WRITE : 0, 0);
		if (ret == -EBUSY)
			uhmm_dp_wait_unclaimed(mm, s.fault_at << UHMM_PAGE_SHIFT);
		if (ret) {
			c->step_err = ret;
			return ret == -EBUSY ? -EBUSY : -EFAULT;
		}
		back = 1;
		if (s.fault_at == last)
			return back;
		from = s.fault_at + 1;
	}
}

/* One pass: returns 1 if something was faulted (go round again), 0, or -errno. */
static int ctx_pass(struct fault_ctx *c)
{
	struct uhmm_range *r = c->range;
	unsigned int need = 0;
	int ret, faulted = 0;

	c->why = "vmas";
	ret = ctx_load_vmas(c);
	if (ret)
		return ret;
	c->why = "requests";
	ret = ctx_check_requests(c);
	if (ret)
		return ret;
	/* what page_writable() asks of a private writable mapping's pages */
	for (int i = 0; i < c->nvmas; i++)
		if ((c->vmas[i].flags & (UHMM_VMA_WRITE | UHMM_VMA_SHARED)) == UHMM_VMA_WRITE)
			need |= UHMM_PM_EXCL | ((c->vmas[i].flags & UHMM_VMA_FILE) ? UHMM_PM_FILE : 0);
	c->why = "pagemap";
	ret = uhmm_pagemap_read(r->start, r->end, c->state, need);
	if (ret)
		return ret;
	(void)uhmm_inject(UHMM_INJECT_RANGE_FAULT_DELAY);	/* a thread preempted here, when asked */
	c->why = "device_pages";
	ret = ctx_device_pages(c);
	if (ret)
		return ret;
	c->why = "fault";
	if (!(req_any(r, 0, c->npages) & REQ_BITS))
		return 0;
	for (int i = 0; i < c->nvmas; i++) {
		uint64_t s = c->vmas[i].start > r->start ? c->vmas[i].start : r->start;
		uint64_t e = c->vmas[i].end < r->end ? c->vmas[i].end : r->end;

		if (!vma_usable(&c->vmas[i]))
			continue;
		ret = ctx_fault_vma(c, &c->vmas[i], s, e);
		if (ret == -EAGAIN) {
			c->transient = -ENOMEM;
			return 1;
		}
		if (ret < 0)
			return ret;
		faulted += ret;
	}
	return faulted > 0;
}

/*
 * The zero page a device is told about must not change silently: the
 * kernel invalidates when a CPU write replaces it (copy-on-write), but user
 * space sees no such event. So uhmm write-protects (userfaultfd WP) the
 * zero-page runs it reports; the CPU's first write then faults to the
 * service thread, which invalidates the page before letting the write go
 * on (uhmm_fault_wp). A page that stopped being the zero page before the
 * protection took is read again and reported as it is now.
 */
static int ctx_protect_zero(struct fault_ctx *c)
{
	struct uhmm_range *r = c->range;

	for (uint64_t i = 0, j; i < c->npages; i = j) {
		for (j = i + 1; (c->state[i] & UHMM_PTE_ZERO) && j < c->npages && (c->state[j] & UHMM_PTE_ZERO);)
			j++;
		if (!(c->state[i] & UHMM_PTE_ZERO))
			continue;
		uint64_t s = r->start + (i << UHMM_PAGE_SHIFT), e = r->start + (j << UHMM_PAGE_SHIFT);
		struct uffdio_writeprotect wp = { .range = { .start = s, .len = e - s }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };

		if (ioctl(r->notifier->mm->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
			int err = errno;

			if (uhmm_tracing())
				uhmm_trace_span("protect_zero_failed", "mirror", uhmm_now_ns(), uhmm_now_ns(),
						"\"start\":\"%#llx\",\"end\":\"%#llx\",\"errno\":%d",
						(unsigned long long)s, (unsigned long long)e, err);
			if (err == EAGAIN)
				return -EBUSY;	/* the mm is changing: the caller starts over */
			continue;	/* not trappable (a file mapping, no WP): as before */
		}
		int ret = uhmm_pagemap_read(s, e, c->state + i, 0);	/* no longer the zero page: read-only */

		if (ret)
			return ret;
	}
	return 0;
}

static int range_validate(const struct uhmm_range *r)
{
	const struct uhmm_interval_notifier *n;

	if (!r || !r->notifier || !r->hmm_pfns)
		return -EINVAL;
	if (uhmm_check_range(r->start, r->end))
		return -EINVAL;
	if (r->default_flags & ~REQ_BITS)
		return -EINVAL;
	n = r->notifier;
	if (!n->mm || !uhmm_mm_is_current(n->mm))
		return -EINVAL;
	if (r->start < n->start || r->end - 1 > n->last)
		return -EINVAL;
	return 0;
}

static int range_fault(struct uhmm_range *range, const char **why, int *step_err)
{
	struct fault_ctx c = { .range = range, .why = "validate" };
	int ret, pass;

	ret = range_validate(range);
	if (ret)
		return ret;
	*why = "kmem";
	if (uhmm_kmem_owns(range->start, range->end))
		return -EFAULT;	/* uhmm's own memory: as kernel memory is to the kernel's */
	*why = "register";
	ret = uhmm_mm_register(range->notifier->mm, range->start, range->end);
	if (ret)
		return ret;
	c.npages = (range->end - range->start) >> UHMM_PAGE_SHIFT;
	c.state = uhmm_kmalloc(c.npages);
	if (!c.state)
		return -ENOMEM;
	for (pass = 0; pass < RANGE_FAULT_MAX_PASSES; pass++) {
		if (uhmm_interval_check_retry(range->notifier, range->notifier_seq)) {
			ret = -EBUSY;
			break;
		}
		ret = ctx_pass(&c);
		if (ret <= 0)
			break;
	}
	if (ret == 0) {
		c.why = "protect_zero";
		ret = ctx_protect_zero(&c);
	}
	if (ret == 0) {
		ctx_fill(&c);
		if (uhmm_interval_check_retry(range->notifier, range->notifier_seq))
			ret = -EBUSY;
	} else if (ret > 0) {
		/* the pages kept changing under us, or memory ran short */
		ret = c.transient ? c.transient : -EBUSY;
	}
	*why = c.why;
	*step_err = c.step_err;
	uhmm_kfree(c.vmas);
	uhmm_kfree(c.state);
	return ret;
}

UHMM_EXPORT int uhmm_range_fault(struct uhmm_range *range)
{
	uint64_t t0 = uhmm_now_ns();
	const char *why = "validate";
	int step_err = 0;
	int ret = range_fault(range, &why, &step_err);

	uhmm_stat_add(UHMM_STAT(range_faults), 1);
	if (ret == 0)
		uhmm_stat_add(UHMM_STAT(range_fault_pages), (range->end - range->start) >> UHMM_PAGE_SHIFT);
	else if (ret == -EBUSY)
		uhmm_stat_add(UHMM_STAT(range_fault_busy), 1);
	if (uhmm_tracing() && ret != -EINVAL)
		uhmm_trace_span("range_fault", "mirror", t0, uhmm_now_ns(),
				"\"start\":\"%#llx\",\"npages\":%llu,\"ret\":%d,\"why\":\"%s\",\"step_err\":%d",
				(unsigned long long)range->start,
				(unsigned long long)((range->end - range->start) >> UHMM_PAGE_SHIFT), ret,
				ret ? why : "", step_err);
	return ret;
}

/*
 * process_vm_readv()/writev() move at most MAX_RW_COUNT (2 GiB less a page)
 * per call and return a short count beyond it: a longer access goes in
 * pieces of at most ACCESS_MAX bytes and ACCESS_IOVS iovecs (a 4 GiB
 * MIGRATE_TO_DEV's read-back failed with EFAULT on memory that was fine).
 */
#define ACCESS_MAX (1ULL << 30)
#define ACCESS_IOVS 256

static ssize_t access_pieces(uint64_t addr, const struct iovec *local, unsigned long n, size_t len,
			     unsigned int flags)
{
	struct iovec remote = { (void *)(uintptr_t)addr, len };
	ssize_t got = (flags & UHMM_ACCESS_WRITE) ? process_vm_writev(uhmm_self_pid(), local, n, &remote, 1, 0)
						  : process_vm_readv(uhmm_self_pid(), local, n, &remote, 1, 0);

	if (got < 0)
		return -errno;
	return (size_t)got == len ? got : -EFAULT;
}

UHMM_EXPORT ssize_t uhmm_access_vm(uint64_t addr, void *buf, size_t len, unsigned int flags)
{
	struct iovec one = { buf, len };

	if (!buf || (flags & ~UHMM_ACCESS_WRITE))
		return -EINVAL;
	return len ? uhmm_access_vm_iov(addr, &one, 1, flags) : 0;	/* which checks the range */
}

UHMM_EXPORT ssize_t uhmm_access_vm_iov(uint64_t addr, const struct iovec *iov, int iovcnt,
				       unsigned int flags)
{
	struct iovec batch[ACCESS_IOVS];
	ssize_t total = 0;
	size_t off = 0, sum = 0;	/* off: bytes of iov[i] already in an earlier piece */

	if (!iov || iovcnt <= 0 || (flags & ~UHMM_ACCESS_WRITE))
		return -EINVAL;
	/* Refused before a byte moves: the pieces before a bad one would have. */
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > (size_t)SSIZE_MAX - sum || (!iov[i].iov_base && iov[i].iov_len))
			return -EINVAL;
		sum += iov[i].iov_len;
	}
	if (addr + sum < addr)
		return -EINVAL;
	for (int i = 0; i < iovcnt;) {
		unsigned long n = 0;
		size_t len = 0;
		ssize_t got;

		while (i < iovcnt && n < ACCESS_IOVS && len < ACCESS_MAX) {
			size_t take = iov[i].iov_len - off;

			take = take > ACCESS_MAX - len ? ACCESS_MAX - len : take;
			batch[n++] = (struct iovec){ (char *)iov[i].iov_base + off, take };
			len += take;
			off += take;
			if (off == iov[i].iov_len) {
				i++;
				off = 0;
			}
		}
		got = access_pieces(addr + (uint64_t)total, batch, n, len, flags);
		if (got < 0)
			return got;
		total += got;
	}
	return total;
}
