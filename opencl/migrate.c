// SPDX-License-Identifier: MIT
/*
 * Pages between system memory and the OpenCL device, through the runtime's
 * own queues, with uhmm's three steps (setup, pages, finalize):
 *
 *  - to the device (launch thread): each run of collected pages is one
 *    clEnqueueWriteBuffer straight from the program's pages (write-
 *    protected by setup, still readable), a run of holes one
 *    clEnqueueFillBuffer; one clFinish per 2 MiB batch, then commit.
 *  - back (uhmm's worker for a CPU touch, the launch thread for an
 *    eviction or a prefetch): each run of device pages whose staging pages
 *    are contiguous is one clEnqueueReadBuffer on the fault queue; a run
 *    whose read failed is not committed (it stays on the device, or, for
 *    the page the CPU touched, uhmm poisons it: SIGBUS, never zeros). With
 *    SVM device memory uhmm copies the pages straight from it instead
 *    (uhmm_migrate_pfn_data(): one copy, no staging; devio.c).
 *
 * A migration back waits while a launch's kernel may use the region
 * (r->busy) and counts itself in r->returning, which a launch waits for
 * before it lets its kernel run (launch.c): a kernel never runs on a page
 * that is being copied out, and a copy never reads a page a kernel writes.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

#define BATCH UCL_BLOCK_PAGES

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static struct ucl_region *page_region(const struct uhmm_page *page)
{
	return uhmm_page_zone_device_data(page);
}

void ucl_page_free(struct uhmm_page *page)
{
	struct ucl_region *r = page_region(page);
	struct uhmm_cl *ctx = uhmm_pagemap_driver_data(uhmm_page_pgmap(page));

	uhmm_page_set_zone_device_data(page, NULL);
	pthread_mutex_lock(&ctx->lock);
	r->resident--;
	ctx->stats.resident_pages--;
	pthread_mutex_unlock(&ctx->lock);
}

/* ---- system -> device ---- */

/* Take the slot page of each collected entry of the batch; returns how many were taken. */
static uint64_t take_pages(struct uhmm_cl *ctx, struct ucl_region *r, const struct uhmm_migrate_vma *m,
			   uint64_t *dst)
{
	uint64_t taken = 0;

	for (uint64_t i = 0; i < m->npages; i++) {
		struct uhmm_page *page;

		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		page = ucl_slot_page(ctx, r, m->start + i * UCL_PAGE);
		if (!page || uhmm_page_init(page))
			continue;	/* the slot's page is still in use (it moved with an mremap) */
		uhmm_page_set_zone_device_data(page, r);
		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
		taken++;
	}
	pthread_mutex_lock(&ctx->lock);
	r->resident += taken;
	ctx->stats.resident_pages += taken;
	pthread_mutex_unlock(&ctx->lock);
	return taken;
}

/* Enqueue the copies of one batch: a write per run of data pages, a fill per run of holes. */
static cl_int enqueue_to_device(struct uhmm_cl *ctx, struct ucl_region *r, const struct uhmm_migrate_vma *m)
{
	for (uint64_t i = 0, j; i < m->npages; i = j) {
		bool data = m->src[i] & UHMM_MIGRATE_PFN_VALID;
		uint64_t addr = m->start + i * UCL_PAGE, off = ucl_region_dev_offset(r, addr);
		cl_int err;

		if (!m->dst[i] || (m->dst[i] & UHMM_MIGRATE_PFN_MOVE)) {	/* uhmm moves it in */
			j = i + 1;
			continue;
		}
		for (j = i + 1; j < m->npages && m->dst[j] && !(m->dst[j] & UHMM_MIGRATE_PFN_MOVE) &&
				!(m->src[j] & UHMM_MIGRATE_PFN_VALID) == !data;
		     j++)
			;
		if (data)
			err = ucl_dev_write(ctx, ctx->queue, r, off, (j - i) * UCL_PAGE, (const void *)(uintptr_t)addr);
		else
			err = ucl_dev_zero(ctx, ctx->queue, r, off, (j - i) * UCL_PAGE);
		if (err)
			return err;
	}
	return CL_SUCCESS;
}

/* Drop the pages of a batch whose copy failed: nothing of it migrates. */
static void untake_pages(uint64_t *dst, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(dst[i]);

		if (page)
			uhmm_page_put(page);	/* page_free fixes the count */
		dst[i] = 0;
	}
}

static int to_device_batch(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t start, uint64_t end)
{
	uint64_t src[BATCH], dst[BATCH], moved = 0;
	/* Where the chunk is host memory every page with data moves: no need to protect them meanwhile. */
	struct uhmm_migrate_vma m = {
		.mm = ctx->mm, .src = src, .dst = dst, .start = start, .end = end, .pgmap_owner = ctx,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM | (r->chunk->movable ? UHMM_MIGRATE_VMA_ZERO_COPY : 0),
	};
	cl_int err = CL_SUCCESS;
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	if (take_pages(ctx, r, &m, dst)) {
		/*
		 * The pages themselves go (zero copy); holes are filled. A
		 * write-only output's pages move too: a move copies nothing, and
		 * moving them is cheaper than zapping them (what the kernel does
		 * not write is undefined either way).
		 */
		for (uint64_t i = 0; r->chunk->movable && i < m.npages; i++)
			if (dst[i] && (src[i] & UHMM_MIGRATE_PFN_VALID))
				dst[i] |= UHMM_MIGRATE_PFN_MOVE;
		err = r->discard ? CL_SUCCESS : enqueue_to_device(ctx, r, &m);	/* overwritten whole: no copy */
		if (clFinish(ctx->queue) && !err)
			err = CL_OUT_OF_RESOURCES;
		if (err)
			untake_pages(dst, m.npages);
	}
	uhmm_migrate_vma_pages(&m);
	for (uint64_t i = 0; i < m.npages; i++)
		moved += (src[i] & UHMM_MIGRATE_PFN_MIGRATE) && dst[i];
	uhmm_migrate_vma_finalize(&m);
	pthread_mutex_lock(&ctx->lock);
	ctx->stats.pages_to_device += moved;
	pthread_mutex_unlock(&ctx->lock);
	return err ? ucl_errno(err) : 0;
}

/* Migrate the interior of @r to its slots (pages already there stay). */
int ucl_to_device(struct uhmm_cl *ctx, struct ucl_region *r)
{
	for (uint64_t at = r->ia; at < r->ib; at += BATCH * UCL_PAGE) {
		int ret = to_device_batch(ctx, r, at, min_u64(at + BATCH * UCL_PAGE, r->ib));

		if (ret)
			return ret;
	}
	return 0;
}

/* ---- device -> system ---- */

/*
 * Count us in on the regions of the collected pages, which no kernel may be
 * using meanwhile. If one is busy: wait (@may_wait: an eviction, a prefetch;
 * never on uhmm's worker) or return false, counting nothing.
 */
static bool returning_enter(struct uhmm_cl *ctx, const uint64_t *src, uint64_t n, bool may_wait)
{
	bool busy;

	pthread_mutex_lock(&ctx->lock);
	for (;;) {
		busy = false;
		for (uint64_t i = 0; i < n && !busy; i++) {
			struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);

			busy = (src[i] & UHMM_MIGRATE_PFN_MIGRATE) && page &&
			       (page_region(page)->busy || (!may_wait && page_region(page)->in_launch));
		}
		if (!busy || !may_wait)
			break;	/* (may_wait waits for a kernel, never for a launch being prepared) */
		pthread_cond_wait(&ctx->cond, &ctx->lock);
	}
	for (uint64_t i = 0; i < n && !busy; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);

		if ((src[i] & UHMM_MIGRATE_PFN_MIGRATE) && page)
			page_region(page)->returning++;
	}
	pthread_mutex_unlock(&ctx->lock);
	return !busy;
}

/* Nothing of this batch moves (a kernel is using it). */
static void drop_batch(uint64_t *src, struct ucl_region **regions, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		regions[i] = NULL;
	}
}

static void returning_leave(struct uhmm_cl *ctx, struct ucl_region **regions, uint64_t n, uint64_t moved)
{
	pthread_mutex_lock(&ctx->lock);
	for (uint64_t i = 0; i < n; i++)
		if (regions[i])
			regions[i]->returning--;
	ctx->stats.pages_to_host += moved;
	pthread_cond_broadcast(&ctx->cond);
	pthread_mutex_unlock(&ctx->lock);
}

static uint64_t page_dev_offset(const struct ucl_region *r, const struct uhmm_page *page)
{
	return (uhmm_page_index(page) - r->slot) * UCL_PAGE + r->shift;
}

struct run {
	uint64_t i, n;		/* entries [i, i + n) */
	uint64_t doff;		/* device offset of entry i in its region */
	cl_event ev;
};

/*
 * Copy the collected device pages of src[0..n) into fresh staging pages
 * (dst): one read per run of pages contiguous both on the device and in
 * staging. Entries whose copy failed lose MIGRATE (they stay on the
 * device; finalize frees their staging pages). @regions receives each
 * entry's region. Returns 0, or -EIO/-ENOMEM if entry @must failed.
 */
static int copy_back(struct uhmm_cl *ctx, uint64_t *src, uint64_t *dst, uint64_t n, uint64_t must,
		     struct ucl_region **regions)
{
	struct run runs[BATCH], *run = NULL;
	uint64_t nruns = 0;
	int ret = 0;

	for (uint64_t i = 0; i < n; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);
		struct ucl_region *r;
		const void *view;
		uint64_t doff;

		regions[i] = NULL;
		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !page)
			continue;
		r = regions[i] = page_region(page);
		doff = page_dev_offset(r, page);
		view = ucl_dev_host_view(ctx, r, doff);
		if (view) {
			/* SVM: uhmm takes it from the device's memory itself (no kernel runs on it now): moved, or copied */
			dst[i] = uhmm_migrate_pfn_data(view);
			if (dst[i] && r->chunk->movable)
				dst[i] |= UHMM_MIGRATE_PFN_MOVE;
			if (!dst[i]) {
				src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
				ret = i == must ? -ENOMEM : ret;
			}
			continue;
		}
		if (!uhmm_migrate_alloc_system_page(&dst[i])) {
			src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			ret = i == must ? -ENOMEM : ret;
			run = NULL;
			continue;
		}
		if (run && run->i + run->n == i && regions[run->i] == r && run->doff + run->n * UCL_PAGE == doff &&
		    uhmm_migrate_pfn_to_pfn(dst[i]) == uhmm_migrate_pfn_to_pfn(dst[i - 1]) + 1) {
			run->n++;
			continue;
		}
		run = &runs[nruns++];
		*run = (struct run){ .i = i, .n = 1, .doff = doff };
	}
	for (uint64_t k = 0; k < nruns; k++) {
		void *to = (void *)(uintptr_t)(uhmm_migrate_pfn_to_pfn(dst[runs[k].i]) * UCL_PAGE);

		if (ucl_dev_read(ctx, ctx->fault_queue, regions[runs[k].i], runs[k].doff, runs[k].n * UCL_PAGE, to, 0,
				 NULL, &runs[k].ev) != CL_SUCCESS)
			runs[k].ev = NULL;
	}
	clFlush(ctx->fault_queue);
	for (uint64_t k = 0; k < nruns; k++) {
		cl_int st = -1;

		if (runs[k].ev) {
			clWaitForEvents(1, &runs[k].ev);
			clGetEventInfo(runs[k].ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st, NULL);
			clReleaseEvent(runs[k].ev);
		}
		for (uint64_t x = runs[k].i; st != CL_COMPLETE && x < runs[k].i + runs[k].n; x++) {
			src[x] &= ~UHMM_MIGRATE_PFN_MIGRATE;
			ret = x == must ? -EIO : ret;
		}
	}
	return ret;
}

static uint64_t count_moved(const uint64_t *src, const uint64_t *dst, uint64_t n)
{
	uint64_t moved = 0;

	for (uint64_t i = 0; i < n; i++)
		moved += (src[i] & UHMM_MIGRATE_PFN_MIGRATE) && dst[i];
	return moved;
}

static int to_host_batch(struct uhmm_cl *ctx, uint64_t start, uint64_t end, struct uhmm_page *fault_page,
			 bool evict)
{
	uint64_t src[BATCH], dst[BATCH], must = BATCH, moved;
	struct ucl_region *regions[BATCH];
	struct uhmm_migrate_vma m = {
		.mm = ctx->mm, .src = src, .dst = dst, .start = start, .end = end, .pgmap_owner = ctx,
		.flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = fault_page,
	};
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	for (uint64_t i = 0; fault_page && i < m.npages; i++)
		if (uhmm_migrate_pfn_to_page(src[i]) == fault_page)
			must = i;
	if (returning_enter(ctx, src, m.npages, !fault_page || evict)) {
		ret = copy_back(ctx, src, dst, m.npages, must, regions);
	} else {
		drop_batch(src, regions, m.npages);
		ret = -EAGAIN;	/* uhmm retries the CPU access a moment later */
	}
	uhmm_migrate_vma_pages(&m);
	moved = count_moved(src, dst, m.npages);
	uhmm_migrate_vma_finalize(&m);
	returning_leave(ctx, regions, m.npages, moved);
	return ret;
}

/*
 * Bring this device's pages of [start, end) back (fault_page: the one a CPU
 * touched; -EAGAIN if a kernel is using it; @evict: wait for the kernel).
 */
int ucl_to_host(struct uhmm_cl *ctx, uint64_t start, uint64_t end, struct uhmm_page *fault_page, bool evict)
{
	int ret = 0;

	for (uint64_t at = start; at < end; at += BATCH * UCL_PAGE) {
		uint64_t to = min_u64(at + BATCH * UCL_PAGE, end);
		int r = to_host_batch(ctx, at, to, fault_page, evict);

		if (r && !ret)
			ret = r;
	}
	return ret;
}

/* Every page of @r's slots back to system memory, wherever its address is now. */
int ucl_evict_region(struct uhmm_cl *ctx, struct ucl_region *r)
{
	uint64_t src[BATCH], dst[BATCH];
	struct ucl_region *regions[BATCH];
	int ret = 0;

	for (uint64_t s = 0; s < r->nslots; s += BATCH) {
		uint64_t n = min_u64(BATCH, r->nslots - s), pfn;
		int err;

		pfn = uhmm_page_to_pfn(uhmm_pagemap_page(ctx->pgmap, r->slot + s));
		memset(dst, 0, sizeof(dst));
		err = uhmm_migrate_device_range(src, pfn, n);
		if (err) {
			ret = ret ? ret : err;
			continue;
		}
		returning_enter(ctx, src, n, true);
		err = copy_back(ctx, src, dst, n, n, regions);
		uhmm_migrate_device_pages(src, dst, n);
		uhmm_migrate_device_finalize(src, dst, n);
		returning_leave(ctx, regions, n, count_moved(src, dst, n));
		ret = ret ? ret : err;
	}
	return ret;
}

/*
 * The window to bring back for a CPU fault at @addr in @r (under
 * ctx->lock): its 2 MiB block (NVIDIA UVM's unit) at first and after a
 * jump; doubled, up to 64 MiB, while the faults follow each other (a
 * scan): a sequential pass over an array takes a handful of faults instead
 * of one per block. Clipped to the region's interior.
 */
static void fault_window(struct ucl_region *r, uint64_t addr, uint64_t *start, uint64_t *end)
{
	uint64_t n, s = addr & ~(UCL_BLOCK_PAGES * UCL_PAGE - 1);

	s = s < r->ia ? r->ia : s;
	n = s == r->fa_next && r->fa_pages ? r->fa_pages * 2 : UCL_BLOCK_PAGES;
	n = n > UCL_FAULT_MAX_PAGES ? UCL_FAULT_MAX_PAGES : n;
	r->fa_pages = n;
	r->fa_next = s + n * UCL_PAGE;
	*start = s;
	*end = r->fa_next > r->ib ? r->ib : r->fa_next;
}

/*
 * The CPU touched a device page: bring back its window (fault_window()),
 * or the page alone for an eviction; if the touched page's copy fails,
 * uhmm poisons it. While a launch uses the region: -EAGAIN (uhmm retries
 * the access a moment later) for a CPU access; an eviction waits for the
 * kernel in returning_enter().
 */
int ucl_migrate_to_ram(struct uhmm_vm_fault *vmf)
{
	struct uhmm_cl *ctx = uhmm_pagemap_driver_data(uhmm_page_pgmap(vmf->page));
	struct ucl_region *r = page_region(vmf->page);
	bool evict = vmf->flags & UHMM_FAULT_EVICT, busy = false;
	uint64_t start = vmf->address, end = vmf->address + UCL_PAGE;

	if (!evict) {
		pthread_mutex_lock(&ctx->lock);
		busy = r->busy || r->in_launch;
		ctx->stats.faults += !busy;
		if (!busy && vmf->address >= r->ia && vmf->address < r->ib)
			fault_window(r, vmf->address, &start, &end);
		pthread_mutex_unlock(&ctx->lock);
	}
	return busy ? -EAGAIN : ucl_to_host(ctx, start, end, vmf->page, evict);
}
