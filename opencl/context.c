// SPDX-License-Identifier: MIT
/*
 * uhmm-opencl contexts: the OpenCL device, its queues, and the uhmm
 * pagemap whose backing store is the device's buffers.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_CHUNK (64UL << 20)
#define DEFAULT_MAX_DEVICE (1UL << 30)

int ucl_errno(cl_int err)
{
	switch (err) {
	case CL_SUCCESS:
		return 0;
	case CL_OUT_OF_HOST_MEMORY:
	case CL_MEM_OBJECT_ALLOCATION_FAILURE:
		return -ENOMEM;
	case CL_DEVICE_NOT_FOUND:
	case CL_DEVICE_NOT_AVAILABLE:
		return -ENODEV;
	case CL_BUILD_PROGRAM_FAILURE:
		return -ENOEXEC;
	default:
		/* CL_INVALID_* (-30 .. -72): the caller's kernel, arguments or sizes */
		return err <= -30 && err >= -72 ? -EINVAL : -EIO;
	}
}

static const struct uhmm_pagemap_ops ucl_pagemap_ops = {
	.page_free = ucl_page_free,
	.migrate_to_ram = ucl_migrate_to_ram,
};

static int pick_device(struct uhmm_cl *ctx, unsigned int platform, unsigned int device)
{
	cl_platform_id plats[16];
	cl_device_id devs[16];
	cl_uint np = 0, nd = 0;

	if (clGetPlatformIDs(16, plats, &np) != CL_SUCCESS || platform >= np || platform >= 16)
		return -ENODEV;
	if (clGetDeviceIDs(plats[platform], CL_DEVICE_TYPE_ALL, 16, devs, &nd) != CL_SUCCESS || device >= nd ||
	    device >= 16)
		return -ENODEV;
	ctx->platform = plats[platform];
	ctx->device = devs[device];
	return 0;
}

/*
 * Fine-grained SVM buffers where the device (OpenCL 2.0+) offers them,
 * unless the config or UHMM_CL_SVM=0 says buffers (devio.c).
 */
static bool use_svm(struct uhmm_cl *ctx, const struct uhmm_cl_config *cfg)
{
	cl_device_svm_capabilities caps = 0;
	const char *env = getenv("UHMM_CL_SVM");

	if ((cfg && cfg->memory == UHMM_CL_MEMORY_BUFFERS) || (env && strcmp(env, "0") == 0))
		return false;
	if (clGetDeviceInfo(ctx->device, CL_DEVICE_SVM_CAPABILITIES, sizeof(caps), &caps, NULL) != CL_SUCCESS)
		return false;	/* an OpenCL 1.2 device */
	return caps & CL_DEVICE_SVM_FINE_GRAIN_BUFFER;
}

/* Device memory sizes and the sub-buffer alignment, from the device and @cfg. */
static int size_device(struct uhmm_cl *ctx, const struct uhmm_cl_config *cfg)
{
	cl_ulong global = 0, max_alloc = 0;
	cl_uint align_bits = 0;
	size_t bytes = cfg ? cfg->device_bytes : 0, chunk = cfg ? cfg->chunk_bytes : 0;

	clGetDeviceInfo(ctx->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof(global), &global, NULL);
	clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof(max_alloc), &max_alloc, NULL);
	clGetDeviceInfo(ctx->device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof(align_bits), &align_bits, NULL);
	ctx->align = align_bits / 8 ? align_bits / 8 : 1;
	ctx->svm = use_svm(ctx, cfg);
	if (ctx->svm)
		ctx->align = 1;	/* a kernel argument is a plain pointer: no shift */
	if (ctx->align > UCL_PAGE || (ctx->align & (ctx->align - 1)))
		return -ENODEV;	/* a region's shift must fit in one slot */
	if (!bytes)
		bytes = global / 4 < DEFAULT_MAX_DEVICE ? global / 4 : DEFAULT_MAX_DEVICE;
	if (!chunk)
		chunk = DEFAULT_CHUNK;
	if (chunk > bytes)
		chunk = bytes;
	if (max_alloc && chunk > max_alloc)
		chunk = max_alloc;
	ctx->nslots = bytes / UCL_PAGE;
	ctx->chunk_slots = chunk / UCL_PAGE;
	return ctx->nslots && ctx->chunk_slots ? 0 : -EINVAL;
}

static int open_runtime(struct uhmm_cl *ctx)
{
	cl_int err;

	ctx->context = clCreateContext(NULL, 1, &ctx->device, NULL, NULL, &err);
	if (!ctx->context)
		return ucl_errno(err);
	ctx->queue = clCreateCommandQueue(ctx->context, ctx->device, 0, &err);
	if (ctx->queue)
		ctx->fault_queue = clCreateCommandQueue(ctx->context, ctx->device, 0, &err);
	return ctx->fault_queue ? 0 : ucl_errno(err);
}

static void close_runtime(struct uhmm_cl *ctx)
{
	if (ctx->fault_queue)
		clReleaseCommandQueue(ctx->fault_queue);
	if (ctx->queue)
		clReleaseCommandQueue(ctx->queue);
	if (ctx->context)
		clReleaseContext(ctx->context);
}

/*
 * Faults served in the faulting thread (UHMM_FAULTS_IN_THREAD) would run
 * ucl_migrate_to_ram() in a SIGBUS handler, and it calls the OpenCL
 * runtime, which allocates with malloc() and takes locks of its own (TSan
 * reported both from PoCL): a fault taken inside malloc() would deadlock.
 * Not offered: the process's mode is the service threads'.
 */
static int refuse_faults_in_thread(void)
{
	struct uhmm_features f;

	return uhmm_query_features(&f) == 0 && (f.flags & UHMM_FEAT_FAULTS_IN_THREAD) ? -EOPNOTSUPP : 0;
}

UHMM_CL_EXPORT int uhmm_cl_context_create(struct uhmm_cl **out, const struct uhmm_cl_config *config)
{
	struct uhmm_cl *ctx;
	int ret;

	if (!out || (config && config->size < sizeof(*config)))
		return -EINVAL;
	*out = NULL;
	ctx = uhmm_kzalloc(sizeof(*ctx));	/* the worker reads it: uhmm's own memory */
	if (!ctx)
		return -ENOMEM;
	pthread_mutex_init(&ctx->launch_lock, NULL);
	pthread_mutex_init(&ctx->lock, NULL);
	pthread_cond_init(&ctx->cond, NULL);
	ret = pick_device(ctx, config ? config->platform : 0, config ? config->device : 0);
	if (!ret)
		ret = size_device(ctx, config);
	if (!ret)
		ret = open_runtime(ctx);
	if (!ret)
		ret = uhmm_mm_get(&ctx->mm);
	if (!ret)
		ret = refuse_faults_in_thread();
	if (!ret)
		ret = uhmm_pagemap_add(ctx->mm, ctx->nslots, ctx, &ucl_pagemap_ops, ctx, &ctx->pgmap);
	ucl_track_open(ctx);	/* optional: without it read-only arguments migrate too */
	if (ret) {
		ucl_track_close(ctx);
		uhmm_mm_put(ctx->mm);
		close_runtime(ctx);
		uhmm_kfree(ctx);
		return ret;
	}
	*out = ctx;
	return 0;
}

UHMM_CL_EXPORT void uhmm_cl_context_destroy(struct uhmm_cl *ctx)
{
	if (!ctx)
		return;
	pthread_mutex_lock(&ctx->launch_lock);
	for (struct ucl_region *r = ctx->regions; r; r = r->next)
		ucl_evict_region(ctx, r);
	/* Anything left (a page held by a migration a moment ago) goes back through migrate_to_ram(). */
	if (uhmm_pagemap_remove(ctx->pgmap)) {
		/* A page is still referenced: its region and buffers must outlive it. */
		pthread_mutex_unlock(&ctx->launch_lock);
		fprintf(stderr, "uhmm-opencl: device pages still in use; the context is left in place\n");
		return;
	}
	ctx->pgmap = NULL;	/* freed, with what was left of its host memory */
	ucl_region_reap(ctx, true);
	ucl_chunks_release(ctx);
	pthread_mutex_unlock(&ctx->launch_lock);
	ucl_track_close(ctx);
	close_runtime(ctx);
	uhmm_mm_put(ctx->mm);
	pthread_mutex_destroy(&ctx->launch_lock);
	pthread_mutex_destroy(&ctx->lock);
	pthread_cond_destroy(&ctx->cond);
	uhmm_kfree(ctx);
}

UHMM_CL_EXPORT cl_context uhmm_cl_get_context(const struct uhmm_cl *ctx)
{
	return ctx ? ctx->context : NULL;
}

UHMM_CL_EXPORT cl_device_id uhmm_cl_get_device(const struct uhmm_cl *ctx)
{
	return ctx ? ctx->device : NULL;
}

UHMM_CL_EXPORT int uhmm_cl_program_build(struct uhmm_cl *ctx, const char *src, const char *options,
					 cl_program *out)
{
	cl_program prog;
	cl_int err;
	char opts[1024];

	if (!ctx || !src || !out || (options && strlen(options) > sizeof(opts) - 32))
		return -EINVAL;
	prog = clCreateProgramWithSource(ctx->context, 1, &src, NULL, &err);
	if (!prog)
		return ucl_errno(err);
	/* with the arguments' qualifiers: a `const` pointer is copied, not migrated (track.c) */
	snprintf(opts, sizeof(opts), "-cl-kernel-arg-info %s", options ? options : "");
	err = clBuildProgram(prog, 1, &ctx->device, opts, NULL, NULL);
	if (err) {
		char log[4096] = "";

		clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, sizeof(log) - 1, log, NULL);
		fprintf(stderr, "uhmm-opencl: build failed:\n%s\n", log);
		clReleaseProgram(prog);
		return err == CL_BUILD_PROGRAM_FAILURE ? -ENOEXEC : ucl_errno(err);
	}
	*out = prog;
	return 0;
}

UHMM_CL_EXPORT int uhmm_cl_stats(struct uhmm_cl *ctx, struct uhmm_cl_stats *out)
{
	if (!ctx || !out)
		return -EINVAL;
	uhmm_mm_sync(ctx->mm);	/* faults taken so far are counted */
	pthread_mutex_lock(&ctx->lock);
	*out = ctx->stats;
	pthread_mutex_unlock(&ctx->lock);
	return 0;
}
