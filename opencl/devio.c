// SPDX-License-Identifier: MIT
/*
 * The runtime seam: every access to device memory goes through these, in
 * one of two forms of OpenCL memory:
 *
 *  - buffers (OpenCL 1.2): chunks are cl_mem, a region is a sub-buffer of
 *    its slots, the kernel gets a sub-buffer starting at the argument
 *    (whose origin must be aligned: the region's shift);
 *  - fine-grained SVM buffers (OpenCL 2.0, where the device offers them):
 *    chunks are clSVMAlloc() memory, the kernel gets a plain pointer into
 *    it (no alignment rule, so no shift: device pages are page-aligned),
 *    and the CPU may read them when no kernel runs: a page coming back is
 *    copied by uhmm straight from there (uhmm_migrate_pfn_data()), one
 *    copy instead of the runtime's read into staging plus uhmm's install.
 *
 * A CUDA backend would be these functions again (architecture §13).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int ucl_chunk_alloc(struct uhmm_cl *ctx, struct ucl_chunk *c, uint64_t bytes)
{
	cl_int err = CL_MEM_OBJECT_ALLOCATION_FAILURE;

	if (ctx->svm) {
		/* runtimes need not honour a page alignment (PoCL: 128 bytes at most): allocate a page more */
		c->svm_raw = clSVMAlloc(ctx->context, CL_MEM_READ_WRITE | CL_MEM_SVM_FINE_GRAIN_BUFFER, bytes + UCL_PAGE, 0);
		c->svm = c->svm_raw ? (void *)(((uintptr_t)c->svm_raw + UCL_PAGE - 1) & ~(UCL_PAGE - 1)) : NULL;
		/*
		 * Populate it now: uhmm reads these pages under its dp_lock when
		 * they come back (uhmm_migrate_pfn_data()), where no read may fault
		 * into a userfaultfd; the runtime may have carved the allocation
		 * out of heap memory a migration once registered and emptied.
		 */
		if (c->svm)
			memset(c->svm, 0, bytes);
		return c->svm ? 0 : -ENOSPC;
	}
	c->mem = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
	return c->mem ? 0 : err == CL_INVALID_BUFFER_SIZE ? -ENOSPC : ucl_errno(err);
}

/*
 * Fine-grained SVM is host memory: given to uhmm (uhmm_pagemap_set_host_range()),
 * pages move into it and out of it with UFFDIO_MOVE instead of being copied.
 * Not where the runtime's allocation is not private anonymous memory, or
 * without UFFDIO_MOVE, or with UHMM_CL_MOVE=0: then they are copied.
 */
bool ucl_chunk_movable(struct uhmm_cl *ctx, struct ucl_chunk *c)
{
	const char *env = getenv("UHMM_CL_MOVE");

	if (!ctx->svm || (env && !strcmp(env, "0")))
		return false;
	return uhmm_pagemap_set_host_range(ctx->pgmap, c->slot0, c->nslots, c->svm) == 0;
}

void ucl_chunk_free(struct uhmm_cl *ctx, struct ucl_chunk *c)
{
	if (c->svm_raw)
		clSVMFree(ctx->context, c->svm_raw);
	if (c->mem)
		clReleaseMemObject(c->mem);
}

/* The region's views: its slots, and the kernel argument at ptr. */
int ucl_region_views(struct uhmm_cl *ctx, struct ucl_region *r)
{
	uint64_t base = (r->slot - r->chunk->slot0) * UCL_PAGE;
	cl_buffer_region whole = { base, r->nslots * UCL_PAGE };
	cl_buffer_region arg = { base + ucl_region_dev_offset(r, r->ptr), r->size };
	cl_int err;

	if (ctx->svm) {
		r->svm = (char *)r->chunk->svm + base;
		return 0;
	}
	r->sub = clCreateSubBuffer(r->chunk->mem, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &whole, &err);
	if (r->sub)
		r->arg = clCreateSubBuffer(r->chunk->mem, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &arg, &err);
	return r->arg ? 0 : ucl_errno(err);
}

void ucl_region_views_free(struct ucl_region *r)
{
	if (r->arg)
		clReleaseMemObject(r->arg);
	if (r->sub)
		clReleaseMemObject(r->sub);
}

cl_int ucl_dev_write(struct uhmm_cl *ctx, cl_command_queue q, struct ucl_region *r, uint64_t off, uint64_t len,
		     const void *host)
{
	if (ctx->svm)
		return clEnqueueSVMMemcpy(q, CL_FALSE, r->svm + off, host, len, 0, NULL, NULL);
	return clEnqueueWriteBuffer(q, r->sub, CL_FALSE, off, len, host, 0, NULL, NULL);
}

cl_int ucl_dev_zero(struct uhmm_cl *ctx, cl_command_queue q, struct ucl_region *r, uint64_t off, uint64_t len)
{
	static const cl_uchar zero;

	if (ctx->svm)
		return clEnqueueSVMMemFill(q, r->svm + off, &zero, 1, len, 0, NULL, NULL);
	return clEnqueueFillBuffer(q, r->sub, &zero, 1, off, len, 0, NULL, NULL);
}

cl_int ucl_dev_read(struct uhmm_cl *ctx, cl_command_queue q, struct ucl_region *r, uint64_t off, uint64_t len,
		    void *host, cl_uint nwait, const cl_event *wait, cl_event *ev)
{
	if (ctx->svm)
		return clEnqueueSVMMemcpy(q, CL_FALSE, host, r->svm + off, len, nwait, wait, ev);
	return clEnqueueReadBuffer(q, r->sub, CL_FALSE, off, len, host, nwait, wait, ev);
}

cl_int ucl_dev_set_arg(struct uhmm_cl *ctx, cl_kernel kernel, unsigned int i, struct ucl_region *r)
{
	if (ctx->svm)
		return clSetKernelArgSVMPointer(kernel, i, r->svm + ucl_region_dev_offset(r, r->ptr));
	return clSetKernelArg(kernel, i, sizeof(cl_mem), &r->arg);
}

/* The device memory of the page at @off in @r, for the CPU to read (SVM only), else NULL. */
const void *ucl_dev_host_view(struct uhmm_cl *ctx, struct ucl_region *r, uint64_t off)
{
	return ctx->svm ? r->svm + off : NULL;
}
