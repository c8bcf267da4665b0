// SPDX-License-Identifier: MIT
/*
 * Device memory of uhmm-opencl: the device address space (slots), the
 * device buffers that back it (chunks), and regions (one per pointer
 * argument: its pages in consecutive slots of one chunk).
 *
 * Chunks and the region list change only under ctx->launch_lock (one
 * launch, prefetch or destroy at a time), so the worker never walks them:
 * it reaches a region from a device page (zone_device_data) or from its
 * notifier, and reads the fields it needs under ctx->lock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define region_of(sub) ((struct ucl_region *)((char *)(sub) - offsetof(struct ucl_region, notifier)))

static uint64_t page_down(uint64_t x) { return x & ~(UCL_PAGE - 1); }
static uint64_t page_up(uint64_t x) { return (x + UCL_PAGE - 1) & ~(UCL_PAGE - 1); }

/* ---- the notifier: the CPU's changes to a region's interior ---- */

/*
 * Bump the sequence (a launch being prepared retries) and, when the
 * interior is unmapped or moved away, retire the region: its pages were
 * freed or travelled with the mapping, and a later launch at the same
 * address builds a new one. Runs on the worker or in the changing thread.
 */
static bool region_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *range,
			      unsigned long cur_seq)
{
	struct ucl_region *r = region_of(sub);

	pthread_mutex_lock(&r->ctx->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	if (range->event == UHMM_NOTIFY_UNMAP || range->event == UHMM_NOTIFY_RELEASE)
		r->dead = true;
	pthread_mutex_unlock(&r->ctx->lock);
	return true;
}

const struct uhmm_interval_notifier_ops ucl_notifier_ops = { .invalidate = region_invalidate };

/* ---- slots and chunks (under launch_lock) ---- */

/* First fit of @n slots inside one chunk. */
static bool chunk_fit(struct ucl_chunk *c, uint64_t n, uint64_t *slot)
{
	uint64_t run = 0;

	if (c->nslots - c->nused < n)
		return false;
	for (uint64_t i = 0; i < c->nslots; i++) {
		run = c->used[i] ? 0 : run + 1;
		if (run == n) {
			*slot = c->slot0 + i + 1 - n;
			return true;
		}
	}
	return false;
}

/* The lowest gap of @n slots in the device address space not covered by a chunk. */
static bool space_gap(struct uhmm_cl *ctx, uint64_t n, uint64_t *slot0)
{
	uint64_t at = 0;

	for (struct ucl_chunk *c = ctx->chunks; c; c = c->next) {
		if (c->slot0 - at >= n)
			break;
		at = c->slot0 + c->nslots;
	}
	if (at + n > ctx->nslots)
		return false;
	*slot0 = at;
	return true;
}

static int chunk_new(struct uhmm_cl *ctx, uint64_t n, struct ucl_chunk **out)
{
	uint64_t want = n > ctx->chunk_slots ? n : ctx->chunk_slots, slot0;
	struct ucl_chunk *c, **pp;
	int err;

	if (!space_gap(ctx, want, &slot0)) {
		want = n;	/* a smaller buffer still fits */
		if (!space_gap(ctx, want, &slot0))
			return -ENOSPC;
	}
	c = uhmm_kzalloc(sizeof(*c));
	if (!c || !(c->used = uhmm_kzalloc(want))) {
		uhmm_kfree(c);
		return -ENOMEM;
	}
	err = ucl_chunk_alloc(ctx, c, want * UCL_PAGE);
	if (err) {
		uhmm_kfree(c->used);
		uhmm_kfree(c);
		return err;
	}
	c->slot0 = slot0;
	c->nslots = want;
	c->movable = ucl_chunk_movable(ctx, c);
	for (pp = &ctx->chunks; *pp && (*pp)->slot0 < slot0; pp = &(*pp)->next)
		;
	c->next = *pp;
	*pp = c;
	pthread_mutex_lock(&ctx->lock);
	ctx->stats.buffers++;
	ctx->stats.buffer_bytes += want * UCL_PAGE;
	pthread_mutex_unlock(&ctx->lock);
	*out = c;
	return 0;
}

/* Give back the buffers no region uses (they count against device_bytes). */
static bool chunks_trim(struct uhmm_cl *ctx)
{
	bool freed = false;

	for (struct ucl_chunk **pp = &ctx->chunks; *pp;) {
		struct ucl_chunk *c = *pp;

		if (c->nused) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		if (c->movable && ctx->pgmap)	/* unregistered before the runtime may reuse it */
			uhmm_pagemap_clear_host_range(ctx->pgmap, c->slot0, c->nslots);
		ucl_chunk_free(ctx, c);
		pthread_mutex_lock(&ctx->lock);
		ctx->stats.buffers--;
		ctx->stats.buffer_bytes -= c->nslots * UCL_PAGE;
		pthread_mutex_unlock(&ctx->lock);
		uhmm_kfree(c->used);
		uhmm_kfree(c);
		freed = true;
	}
	return freed;
}

void ucl_chunks_release(struct uhmm_cl *ctx)
{
	chunks_trim(ctx);
}

static int slots_alloc(struct uhmm_cl *ctx, uint64_t n, struct ucl_chunk **chunk, uint64_t *slot)
{
	struct ucl_chunk *c;
	int ret;

	for (c = ctx->chunks; c; c = c->next)
		if (chunk_fit(c, n, slot))
			break;
	if (!c) {
		ret = chunk_new(ctx, n, &c);
		if (ret)
			return ret;
		*slot = c->slot0;
	}
	memset(c->used + (*slot - c->slot0), 1, n);
	c->nused += n;
	*chunk = c;
	return 0;
}

static void slots_free(struct ucl_chunk *c, uint64_t slot, uint64_t n)
{
	memset(c->used + (slot - c->slot0), 0, n);
	c->nused -= n;
}

/* ---- regions ---- */

uint64_t ucl_region_dev_offset(const struct ucl_region *r, uint64_t addr)
{
	return addr - r->a + r->shift;
}

struct uhmm_page *ucl_slot_page(struct uhmm_cl *ctx, const struct ucl_region *r, uint64_t addr)
{
	return uhmm_pagemap_page(ctx->pgmap, r->slot + (addr - r->a) / UCL_PAGE);
}

/*
 * Only private anonymous read-write memory can hold device pages (uhmm's
 * rule: shared and file pages are never migrated): say -EFAULT at once for
 * anything else instead of retrying a migration that cannot happen.
 */
static bool private_anon(uint64_t start, uint64_t end)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	uint64_t at = start;

	if (!f)
		return true;	/* cannot tell: the migration decides */
	while (at < end && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi, ino;
		char perms[8];

		if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &ino) != 4 || hi <= at)
			continue;
		if (lo > at || perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || ino != 0)
			break;
		at = hi;
	}
	fclose(f);
	return at >= end;
}

static void region_destroy(struct uhmm_cl *ctx, struct ucl_region *r)
{
	if (r->tracked)
		ucl_track_stop(ctx, r);
	if (r->ib > r->ia)
		uhmm_interval_notifier_remove(&r->notifier);
	ucl_region_views_free(r);
	slots_free(r->chunk, r->slot, r->nslots);
	uhmm_kfree(r);
}

/*
 * Release retired regions that no page, launch or migration uses any more
 * (@all: every region without pages, for destroy).
 */
void ucl_region_reap(struct uhmm_cl *ctx, bool all)
{
	for (struct ucl_region **pp = &ctx->regions; *pp;) {
		struct ucl_region *r = *pp;
		bool go;

		pthread_mutex_lock(&ctx->lock);
		go = (r->dead || all) && !r->resident && !r->busy && !r->returning && !r->in_launch;
		pthread_mutex_unlock(&ctx->lock);
		if (!go) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		region_destroy(ctx, r);
	}
}

/* The least recently used region a new one may push out, or NULL. */
static struct ucl_region *lru_victim(struct uhmm_cl *ctx)
{
	struct ucl_region *best = NULL;

	for (struct ucl_region *r = ctx->regions; r; r = r->next)
		if (!r->in_launch && (!best || r->last_use < best->last_use))
			best = r;
	return best;
}

/* Push @r out: its pages back to system memory, its slots free. */
static int region_evict(struct uhmm_cl *ctx, struct ucl_region *r)
{
	int ret = ucl_evict_region(ctx, r);

	pthread_mutex_lock(&ctx->lock);
	r->dead = true;
	ctx->stats.evictions++;
	pthread_mutex_unlock(&ctx->lock);
	ucl_region_reap(ctx, false);
	return ret;
}

/* Slots for @n pages, evicting least recently used regions while it helps. */
static int region_place(struct uhmm_cl *ctx, uint64_t n, struct ucl_chunk **chunk, uint64_t *slot)
{
	for (int tries = 0; tries < 1024; tries++) {
		struct ucl_region *victim;
		int ret = slots_alloc(ctx, n, chunk, slot);

		if (ret != -ENOSPC)
			return ret;
		if (chunks_trim(ctx))
			continue;
		victim = lru_victim(ctx);
		if (!victim)
			return n > ctx->nslots ? -E2BIG : -ENOMEM;
		ret = region_evict(ctx, victim);
		if (ret)
			return ret;
	}
	return -ENOMEM;	/* victims that would not leave (pages held throughout) */
}

/* Retire live regions whose bytes overlap [ptr, ptr + size) (-EINVAL if one is an argument of this launch). */
static int retire_overlaps(struct uhmm_cl *ctx, uint64_t ptr, uint64_t size)
{
	for (struct ucl_region *r = ctx->regions; r; r = r->next) {
		bool dead;

		pthread_mutex_lock(&ctx->lock);
		dead = r->dead;
		pthread_mutex_unlock(&ctx->lock);
		if (dead || r->ptr >= ptr + size || ptr >= r->ptr + r->size)
			continue;
		if (r->in_launch)
			return -EINVAL;
		region_evict(ctx, r);
		return retire_overlaps(ctx, ptr, size);	/* the list changed */
	}
	return 0;
}

static struct ucl_region *region_find(struct uhmm_cl *ctx, uint64_t ptr, uint64_t size)
{
	for (struct ucl_region *r = ctx->regions; r; r = r->next) {
		bool dead;

		pthread_mutex_lock(&ctx->lock);
		dead = r->dead;
		pthread_mutex_unlock(&ctx->lock);
		if (!dead && r->ptr == ptr && r->size == size)
			return r;
	}
	return NULL;
}

static int region_new(struct uhmm_cl *ctx, uint64_t ptr, uint64_t size, struct ucl_region **out)
{
	struct ucl_region *r = uhmm_kzalloc(sizeof(*r));
	int ret;

	if (!r)
		return -ENOMEM;
	r->ctx = ctx;
	r->ptr = ptr;
	r->size = size;
	r->a = page_down(ptr);
	r->b = page_up(ptr + size);
	r->ia = page_up(ptr);
	r->ib = page_down(ptr + size);
	if (r->ib < r->ia)
		r->ib = r->ia;	/* inside one page: nothing to migrate */
	r->shift = (ctx->align - (ptr & (ctx->align - 1))) & (ctx->align - 1);
	r->nslots = (r->b - r->a) / UCL_PAGE + (r->shift != 0);
	r->in_launch = true;
	ret = region_place(ctx, r->nslots, &r->chunk, &r->slot);
	if (ret) {
		uhmm_kfree(r);
		return ret;
	}
	ret = ucl_region_views(ctx, r);
	if (!ret && r->ib > r->ia)
		ret = uhmm_interval_notifier_insert(&r->notifier, ctx->mm, r->ia, r->ib - r->ia, &ucl_notifier_ops);
	if (ret) {
		r->ib = r->ia;	/* no notifier to remove */
		region_destroy(ctx, r);
		return ret;
	}
	r->next = ctx->regions;
	ctx->regions = r;
	*out = r;
	return 0;
}

/*
 * The region of the argument (ptr, size), made if new. Marks it as an
 * argument of the launch being prepared (the caller clears in_launch).
 */
int ucl_region_get(struct uhmm_cl *ctx, uint64_t ptr, uint64_t size, struct ucl_region **out)
{
	struct ucl_region *r = region_find(ctx, ptr, size);
	int ret;

	if (!r) {
		ret = retire_overlaps(ctx, ptr, size);
		if (ret)
			return ret;
		ucl_region_reap(ctx, false);
		if (!private_anon(page_up(ptr), page_down(ptr + size)))
			return -EFAULT;
		ret = region_new(ctx, ptr, size, &r);
		if (ret)
			return ret;
	}
	pthread_mutex_lock(&ctx->lock);
	r->in_launch = true;	/* CPU faults on it wait (-EAGAIN) until the launch ends */
	pthread_mutex_unlock(&ctx->lock);
	r->last_use = ++ctx->tick;
	*out = r;
	return 0;
}
