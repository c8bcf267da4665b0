// SPDX-License-Identifier: MIT
/*
 * uhmm_cl_launch() and uhmm_cl_prefetch(): the sequence protocol of
 * Documentation/mm/hmm.rst with a kernel launch as the "device page-table
 * update":
 *
 *   migrate each argument's interior to its slots (migrate.c)
 *   seq = read_begin(); snapshot with uhmm_range_fault(): every interior
 *   page must be this device's page in the expected slot
 *   enqueue the edge copies in
 *   under ctx->lock: wait until no migration back is in progress; if
 *   read_retry(seq), start again; else mark the regions busy
 *   enqueue the kernel and the edge copies out, wait, unmark
 *
 * While a region is busy a CPU touch of its pages gets -EAGAIN from
 * migrate_to_ram() (uhmm retries the fault a moment later: the kernel's
 * VM_FAULT_RETRY) rather than waiting on uhmm's worker: the runtime calls
 * made in the busy window may themselves fault on memory only the worker
 * can serve (a page of a freed array, reused by malloc).
 */
#include <errno.h>
#include <time.h>

#include "internal.h"

#define RETRY_NS 1000000000LL	/* -EBUSY after a second of invalidations */

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static bool has_interior(const struct ucl_region *r)
{
	return r->ib > r->ia;
}

/* Pages of @r migrate in this launch (not a copied read-only argument, not inside one page). */
static bool migrates(const struct ucl_region *r)
{
	return has_interior(r) && !r->copy_mode;
}

/* ---- residency ---- */

/*
 * Is every interior page of @r this device's page in its slot? -EAGAIN if
 * not (or if the sequence moved: try again), after sending a page of ours
 * that sits in the wrong slot (an mremap carried it) back to system memory.
 */
static int verify_region(struct uhmm_cl *ctx, struct ucl_region *r, unsigned long seq, uint64_t *pfns)
{
	struct uhmm_range range = {
		.notifier = &r->notifier, .notifier_seq = seq, .start = r->ia, .end = r->ib,
		.hmm_pfns = pfns, .dev_private_owner = ctx,
	};
	uint64_t n = (r->ib - r->ia) / UCL_PAGE;
	int ret = uhmm_range_fault(&range);

	if (ret)
		return ret == -EBUSY ? -EAGAIN : ret;
	for (uint64_t j = 0, run = n; j <= n; j++) {	/* run: first of pages of ours in the wrong slot */
		uint64_t addr = r->ia + j * UCL_PAGE;
		struct uhmm_page *want = j < n ? ucl_slot_page(ctx, r, addr) : NULL, *got = NULL;
		bool misplaced;

		if (j < n && (pfns[j] & UHMM_PFN_VALID))
			got = uhmm_pfn_to_page(uhmm_pfn_to_pfn(pfns[j]));	/* NULL for a system page */
		if (got != want)
			ret = -EAGAIN;
		misplaced = got && got != want && uhmm_page_pgmap(got) == ctx->pgmap;
		if (misplaced && run == n)
			run = j;
		if (!misplaced && run < n) {
			ucl_to_host(ctx, r->ia + run * UCL_PAGE, addr, NULL, true);
			run = n;
		}
	}
	return ret;
}

static uint64_t interior_pages(const struct ucl_region *r)
{
	return (r->ib - r->ia) / UCL_PAGE;
}

/*
 * Nothing to do for @r: the last launch found every interior page in its
 * slot at sequence @seq, and no invalidation (a fault-back, an munmap, a
 * madvise...) has happened since. The device page table's validity, as a
 * kernel driver keeps it with the same sequence.
 */
static bool still_resident(struct uhmm_cl *ctx, struct ucl_region *r, unsigned long seq)
{
	bool yes;

	pthread_mutex_lock(&ctx->lock);
	yes = r->verified && r->verified_seq == seq && r->resident == interior_pages(r);
	pthread_mutex_unlock(&ctx->lock);
	return yes;
}

/* Migrate, then snapshot under the sequence: 0 with @seqs set, -EAGAIN to retry, or an error. */
int ucl_make_resident(struct uhmm_cl *ctx, struct ucl_region **regions, unsigned int n, unsigned long *seqs)
{
	uint64_t most = 0, *pfns;
	bool skip[UCL_MAX_ARGS];
	int ret = 0;

	for (unsigned int k = 0; k < n; k++) {
		struct ucl_region *r = regions[k];

		skip[k] = !migrates(r);
		if (skip[k])
			continue;
		seqs[k] = uhmm_interval_read_begin(&r->notifier);
		skip[k] = still_resident(ctx, r, seqs[k]);
		if (skip[k])
			continue;
		ret = ucl_to_device(ctx, r);
		if (ret)
			return ret;
		most = interior_pages(r) > most ? interior_pages(r) : most;
	}
	if (!most)
		return 0;
	pfns = uhmm_kcalloc(most, sizeof(*pfns));
	if (!pfns)
		return -ENOMEM;
	for (unsigned int k = 0; k < n; k++)
		if (!skip[k])
			seqs[k] = uhmm_interval_read_begin(&regions[k]->notifier);
	for (unsigned int k = 0; k < n && !ret; k++)
		if (!skip[k])
			ret = verify_region(ctx, regions[k], seqs[k], pfns);
	uhmm_kfree(pfns);
	return ret;
}

/* After a launch or prefetch whose check passed: remember what was verified. */
static void mark_verified(struct ucl_region **regions, unsigned int n, const unsigned long *seqs)
{
	for (unsigned int k = 0; k < n; k++) {
		regions[k]->verified = migrates(regions[k]);
		regions[k]->verified_seq = seqs[k];
	}
}

/* ---- the kernel ---- */

struct edge {
	uint64_t lo, hi;	/* bytes of the argument on a partly covered page */
};

/* The argument's bytes outside its interior: none, one or two ranges. */
static unsigned int region_edges(const struct ucl_region *r, struct edge e[2])
{
	uint64_t end = r->ptr + r->size;
	unsigned int n = 0;

	if (!has_interior(r)) {
		e[n++] = (struct edge){ r->ptr, end };
		return n;
	}
	if (r->ptr < r->ia)
		e[n++] = (struct edge){ r->ptr, r->ia };
	if (r->ib < end)
		e[n++] = (struct edge){ r->ib, end };
	return n;
}

static cl_int write_bytes(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t lo, uint64_t hi, uint64_t *bytes)
{
	*bytes += hi - lo;
	return ucl_dev_write(ctx, ctx->queue, r, ucl_region_dev_offset(r, lo), hi - lo, (const void *)(uintptr_t)lo);
}

struct copy_arg {
	uint64_t *bytes;
	uint64_t written;	/* pages the scan reported */
	cl_int err;
};

/* The argument's bytes on pages [start, end), written since the last copy: to the device. */
static int copy_written(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t start, uint64_t end, void *arg)
{
	struct copy_arg *c = arg;
	uint64_t lo = start > r->ptr ? start : r->ptr, hi = end < r->ptr + r->size ? end : r->ptr + r->size;

	c->written += (end - start) / UCL_PAGE;
	if (lo < hi)
		c->err = write_bytes(ctx, r, lo, hi, c->bytes);
	return c->err ? -EIO : 0;
}

#define REWRITES_TO_PAUSE 2	/* launches in a row that found most pages written */
#define PAUSED_LAUNCHES 8	/* then copy everything this many times without watching */

/*
 * A read-only argument: copy what the CPU wrote since the last launch (all
 * of it the first time, or if the scan fails). The scan protects the pages
 * again as it reports them, so a write after it is seen next time. An
 * input the CPU rewrites before every launch gains nothing from watching
 * and pays a fault per page for it: after REWRITES_TO_PAUSE such launches
 * it is copied whole without watching for PAUSED_LAUNCHES launches.
 */
static cl_int copy_readonly(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t *bytes)
{
	struct copy_arg c = { .bytes = bytes };
	uint64_t npages = (r->b - r->a) / UCL_PAGE;

	if (r->tracked && r->copy_valid && ucl_track_written(ctx, r, copy_written, &c) == 0) {
		r->rewrites = c.written * 2 >= npages ? r->rewrites + 1 : 0;
		if (r->rewrites >= REWRITES_TO_PAUSE) {
			ucl_track_stop(ctx, r);
			r->watch_paused = true;
			r->rewrites = r->paused_launches = 0;
		}
		return c.err;
	}
	if (c.err) {
		r->copy_valid = false;	/* pages reported and protected again were not copied */
		return c.err;
	}
	if (r->tracked && r->copy_valid) {
		/*
		 * The scan refused: the range is no longer registered (freed and
		 * mapped again since: a copied argument raises no event). Watch
		 * the new mapping, and copy it all.
		 */
		ucl_track_stop(ctx, r);
		ucl_track_start(ctx, r);
	} else if (r->watch_paused && ++r->paused_launches >= PAUSED_LAUNCHES) {
		r->watch_paused = !ucl_track_start(ctx, r);	/* watch again, from before this copy */
	}
	r->copy_valid = false;
	c.err = write_bytes(ctx, r, r->ptr, r->ptr + r->size, bytes);
	r->copy_valid = r->tracked && !c.err;
	return c.err;
}

/*
 * Copies around the kernel: in (before it, @after NULL) the edges of each
 * migrating argument and what a read-only one needs; out (after it, @after
 * its event) the edges of each migrating argument.
 */
static cl_int enqueue_edges(struct uhmm_cl *ctx, struct ucl_region **regions, unsigned int n, bool out,
			    cl_event *after, uint64_t *bytes, uint64_t *ro_bytes)
{
	for (unsigned int k = 0; k < n; k++) {
		struct ucl_region *r = regions[k];
		struct edge e[2];
		unsigned int ne;
		cl_int err;

		if (r->copy_mode) {
			err = out ? CL_SUCCESS : copy_readonly(ctx, r, ro_bytes);
			if (err)
				return err;
			continue;
		}
		ne = out || !r->discard ? region_edges(r, e) : 0;	/* an output overwritten whole: nothing in */
		for (unsigned int x = 0; x < ne; x++) {
			void *host = (void *)(uintptr_t)e[x].lo;

			if (out) {
				*bytes += e[x].hi - e[x].lo;
				err = ucl_dev_read(ctx, ctx->queue, r, ucl_region_dev_offset(r, e[x].lo), e[x].hi - e[x].lo,
						   host, 1, after, NULL);
			} else {
				err = write_bytes(ctx, r, e[x].lo, e[x].hi, bytes);
			}
			if (err)
				return err;
		}
	}
	return CL_SUCCESS;
}

static int set_args(struct uhmm_cl *ctx, cl_kernel kernel, const struct uhmm_cl_arg *args, unsigned int nargs,
		    struct ucl_region **argreg)
{
	for (unsigned int i = 0; i < nargs; i++) {
		cl_int err;

		if (args[i].kind == UHMM_CL_ARG_PTR || args[i].kind == UHMM_CL_ARG_PTR_WO)
			err = ucl_dev_set_arg(ctx, kernel, i, argreg[i]);
		else
			err = clSetKernelArg(kernel, i, args[i].size,
					     args[i].kind == UHMM_CL_ARG_LOCAL ? NULL : args[i].ptr);
		if (err)
			return ucl_errno(err);
	}
	return 0;
}

/* Under ctx->lock: no migration back in progress, then has anything changed since the snapshot? */
static bool regions_changed(struct uhmm_cl *ctx, struct ucl_region **regions, unsigned int n,
			    const unsigned long *seqs)
{
	for (unsigned int k = 0; k < n; k++)
		while (regions[k]->returning)
			pthread_cond_wait(&ctx->cond, &ctx->lock);
	for (unsigned int k = 0; k < n; k++)
		if (migrates(regions[k]) && uhmm_interval_read_retry(&regions[k]->notifier, seqs[k]))
			return true;
	return false;
}

static void set_busy(struct uhmm_cl *ctx, struct ucl_region **regions, unsigned int n, int by)
{
	for (unsigned int k = 0; k < n; k++)
		regions[k]->busy += by;
	if (by < 0)
		pthread_cond_broadcast(&ctx->cond);
}

struct launch {
	cl_kernel kernel;
	unsigned int dims;
	const size_t *global, *local;
	const struct uhmm_cl_arg *args;
	unsigned int nargs;
	struct ucl_region *argreg[UCL_MAX_ARGS];	/* each pointer argument's region */
	struct ucl_region *regions[UCL_MAX_ARGS];	/* distinct */
	bool readonly[UCL_MAX_ARGS];			/* each only read by the kernel */
	unsigned long seqs[UCL_MAX_ARGS];
	unsigned int nregions;
};

/* Enqueue and run once: 0, -EAGAIN (the pages changed: nothing ran), or an error. */
static int run_kernel(struct uhmm_cl *ctx, struct launch *l)
{
	cl_event kev = NULL;
	uint64_t edge_bytes = 0, ro_bytes = 0;
	cl_int err, st = CL_COMPLETE;
	int ret = set_args(ctx, l->kernel, l->args, l->nargs, l->argreg);

	if (ret)
		return ret;
	err = enqueue_edges(ctx, l->regions, l->nregions, false, NULL, &edge_bytes, &ro_bytes);
	if (err) {
		clFinish(ctx->queue);
		return ucl_errno(err);
	}
	clFlush(ctx->queue);

	pthread_mutex_lock(&ctx->lock);
	if (regions_changed(ctx, l->regions, l->nregions, l->seqs)) {
		pthread_mutex_unlock(&ctx->lock);
		clFinish(ctx->queue);	/* the edge copies only wrote device memory */
		return -EAGAIN;
	}
	set_busy(ctx, l->regions, l->nregions, 1);
	mark_verified(l->regions, l->nregions, l->seqs);
	pthread_mutex_unlock(&ctx->lock);

	err = clEnqueueNDRangeKernel(ctx->queue, l->kernel, l->dims, NULL, l->global, l->local, 0, NULL, &kev);
	if (!err)
		err = enqueue_edges(ctx, l->regions, l->nregions, true, &kev, &edge_bytes, &ro_bytes);
	if (clFinish(ctx->queue) && !err)
		err = CL_OUT_OF_RESOURCES;
	if (kev) {
		clGetEventInfo(kev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st, NULL);
		clReleaseEvent(kev);
	}

	pthread_mutex_lock(&ctx->lock);
	set_busy(ctx, l->regions, l->nregions, -1);
	ctx->stats.launches += !err && st == CL_COMPLETE;
	ctx->stats.edge_bytes += edge_bytes;
	ctx->stats.readonly_bytes += ro_bytes;
	pthread_mutex_unlock(&ctx->lock);
	if (err)
		return ucl_errno(err);
	return st == CL_COMPLETE ? 0 : -EIO;
}

/* ---- arguments ---- */

static int check_args(const struct uhmm_cl_arg *args, unsigned int nargs)
{
	if (nargs > UCL_MAX_ARGS || (nargs && !args))
		return -EINVAL;
	for (unsigned int i = 0; i < nargs; i++) {
		switch (args[i].kind) {
		case UHMM_CL_ARG_PTR:
		case UHMM_CL_ARG_PTR_WO:
			if (!args[i].ptr || !args[i].size ||
			    (uintptr_t)args[i].ptr + args[i].size < (uintptr_t)args[i].ptr)
				return -EINVAL;
			break;
		case UHMM_CL_ARG_VALUE:
			if (!args[i].ptr || !args[i].size)
				return -EINVAL;
			break;
		case UHMM_CL_ARG_LOCAL:
			if (!args[i].size)
				return -EINVAL;
			break;
		default:
			return -EINVAL;
		}
	}
	return 0;
}

/* Is pointer argument @i of @kernel `const` (only read)? false when the program has no argument info. */
static bool arg_readonly(cl_kernel kernel, unsigned int i)
{
	cl_kernel_arg_type_qualifier q = 0;

	return kernel && clGetKernelArgInfo(kernel, i, CL_KERNEL_ARG_TYPE_QUALIFIER, sizeof(q), &q, NULL) == CL_SUCCESS &&
	       (q & CL_KERNEL_ARG_TYPE_CONST);
}

static void add_region(struct launch *l, struct ucl_region *r, bool readonly, bool discard)
{
	for (unsigned int k = 0; k < l->nregions; k++) {
		if (l->regions[k] == r) {
			l->readonly[k] = l->readonly[k] && readonly;
			r->discard = r->discard && discard;
			return;
		}
	}
	l->readonly[l->nregions] = readonly;
	r->discard = discard;
	l->regions[l->nregions++] = r;
}

/*
 * Copy or migrate: a region only read by this kernel, with no page on the
 * device, is copied if its pages can be watched for writes (track.c), or
 * while watching it is paused (copy_readonly()); anything else migrates
 * (and stops being watched).
 */
static void choose_modes(struct uhmm_cl *ctx, struct launch *l)
{
	for (unsigned int k = 0; k < l->nregions; k++) {
		struct ucl_region *r = l->regions[k];
		bool on_device;

		pthread_mutex_lock(&ctx->lock);
		on_device = r->resident != 0;
		pthread_mutex_unlock(&ctx->lock);
		r->copy_mode = l->readonly[k] && !on_device && (r->watch_paused || ucl_track_start(ctx, r));
		if (!r->copy_mode && r->tracked)
			ucl_track_stop(ctx, r);
		if (!r->copy_mode)
			r->watch_paused = false;
	}
}

static int collect_regions(struct uhmm_cl *ctx, struct launch *l)
{
	for (unsigned int i = 0; i < l->nargs; i++) {
		int ret;

		if (l->args[i].kind != UHMM_CL_ARG_PTR && l->args[i].kind != UHMM_CL_ARG_PTR_WO)
			continue;
		ret = ucl_region_get(ctx, (uintptr_t)l->args[i].ptr, l->args[i].size, &l->argreg[i]);
		if (ret)
			return ret;
		add_region(l, l->argreg[i], arg_readonly(l->kernel, i), l->args[i].kind == UHMM_CL_ARG_PTR_WO);
	}
	choose_modes(ctx, l);
	return 0;
}

static void release_regions(struct uhmm_cl *ctx, struct launch *l)
{
	pthread_mutex_lock(&ctx->lock);
	for (unsigned int k = 0; k < l->nregions; k++) {
		l->regions[k]->in_launch = false;
		l->regions[k]->discard = false;
	}
	pthread_mutex_unlock(&ctx->lock);
	ucl_region_reap(ctx, false);
}

/* A prefetch to the device: the same check as before a kernel, nothing to run. */
static int check_prefetched(struct uhmm_cl *ctx, struct launch *l)
{
	bool changed;

	pthread_mutex_lock(&ctx->lock);
	changed = regions_changed(ctx, l->regions, l->nregions, l->seqs);
	if (!changed)
		mark_verified(l->regions, l->nregions, l->seqs);
	pthread_mutex_unlock(&ctx->lock);
	return changed ? -EAGAIN : 0;
}

/* Make resident and (with a kernel) run, retrying while the pages change under us. */
static int launch_locked(struct uhmm_cl *ctx, struct launch *l)
{
	long long deadline = now_ns() + RETRY_NS;
	int ret = collect_regions(ctx, l);

	while (!ret) {
		ret = ucl_make_resident(ctx, l->regions, l->nregions, l->seqs);
		if (!ret && l->kernel)
			ret = run_kernel(ctx, l);
		else if (!ret)
			ret = check_prefetched(ctx, l);
		if (ret != -EAGAIN)
			break;
		ret = now_ns() > deadline ? -EBUSY : 0;
	}
	release_regions(ctx, l);
	return ret;
}

UHMM_CL_EXPORT int uhmm_cl_launch(struct uhmm_cl *ctx, cl_kernel kernel, unsigned int dims, const size_t *global,
		   const size_t *local, const struct uhmm_cl_arg *args, unsigned int nargs)
{
	struct launch l = { .kernel = kernel, .dims = dims, .global = global, .local = local,
			    .args = args, .nargs = nargs };
	int ret;

	if (!ctx || !kernel || !global || dims < 1 || dims > 3)
		return -EINVAL;
	for (unsigned int d = 0; d < dims; d++)
		if (!global[d])
			return -EINVAL;
	ret = check_args(args, nargs);
	if (ret)
		return ret;
	pthread_mutex_lock(&ctx->launch_lock);
	ret = launch_locked(ctx, &l);
	pthread_mutex_unlock(&ctx->launch_lock);
	return ret;
}

UHMM_CL_EXPORT int uhmm_cl_prefetch(struct uhmm_cl *ctx, const void *ptr, size_t len, enum uhmm_cl_where where)
{
	struct uhmm_cl_arg arg = UHMM_CL_PTR(ptr, len);
	struct launch l = { .args = &arg, .nargs = 1 };
	uint64_t start = (uintptr_t)ptr & ~(UCL_PAGE - 1), end;
	int ret;

	if (!ctx || (where != UHMM_CL_TO_DEVICE && where != UHMM_CL_TO_HOST) || check_args(&arg, 1))
		return -EINVAL;
	end = ((uintptr_t)ptr + len + UCL_PAGE - 1) & ~(UCL_PAGE - 1);
	pthread_mutex_lock(&ctx->launch_lock);
	ret = where == UHMM_CL_TO_DEVICE ? launch_locked(ctx, &l) : ucl_to_host(ctx, start, end, NULL, true);
	pthread_mutex_unlock(&ctx->launch_lock);
	return ret;
}
