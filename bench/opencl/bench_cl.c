// SPDX-License-Identifier: MIT
/*
 * uhmm-cl-bench: SAXPY and a 2-D stencil written three ways, timed in one
 * run on the same OpenCL device:
 *
 *   uhmm     uhmm-opencl on malloc'ed arrays (uhmm_cl_launch; results read
 *            by the CPU where they are: the pages fault back)
 *   hand     explicit clCreateBuffer + clEnqueueWriteBuffer/ReadBuffer, the
 *            best a careful programmer does (buffers made once, reused)
 *   svm      clSVMAlloc'ed arrays (fine-grained if the device offers it,
 *            else coarse-grained with map/unmap), where the device has SVM
 *
 * Each version says what it knows: the hand-written one uploads only the
 * stencil's input grid, uhmm-opencl marks the output UHMM_CL_PTR_WO (a sweep
 * writes every cell) and SAXPY's x is `const` in the kernel (copied, not
 * migrated).
 *
 * Two workloads each: "one-shot" (the CPU writes fresh inputs, one kernel,
 * the CPU reads every result: every byte crosses both ways) and
 * "resident" (inputs written once, K kernels in a row, the CPU reads the
 * results once: data stays on the device between kernels). Every figure is
 * the median of REPS repetitions, with min and max; the ratio is to "hand".
 */
#define CL_TARGET_OPENCL_VERSION 200
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uhmm/opencl.h>

#include "../../examples/opencl/kernels.h"

#define REPS 7
#define RESIDENT_KERNELS 10

static const char *kernel_src = SAXPY_KERNEL_SRC STENCIL_KERNEL_SRC;

struct env {
	struct uhmm_cl *cl;
	cl_context ctx;
	cl_device_id dev;
	cl_command_queue q;
	cl_kernel saxpy, stencil;
	cl_device_svm_capabilities svm;
	size_t n;		/* SAXPY elements */
	unsigned int w, h;	/* stencil grid */
	double sink;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define CHECK(call)                                                                        \
	do {                                                                               \
		cl_int _e = (call);                                                        \
		if (_e != CL_SUCCESS) {                                                    \
			fprintf(stderr, "uhmm-cl-bench: %s: %d\n", #call, (int)_e);        \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

/* ---- the CPU's part, the same in every version ---- */

static void fill(float *p, size_t n, float base)
{
	for (size_t i = 0; i < n; i++)
		p[i] = base + (float)(i % 1024);
}

static double sum(const float *p, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += p[i];
	return s;
}

/* ---- SAXPY ---- */

enum way { UHMM, HAND, SVM };
static const char *way_name[] = { "uhmm-opencl (malloc)", "hand (Write/ReadBuffer)", "SVM (clSVMAlloc)" };

static void saxpy_launch(struct env *e, enum way way, float *x, float *y, cl_mem bx, cl_mem by)
{
	float a = 2.0f;
	cl_uint n = (cl_uint)e->n;
	size_t global = e->n;

	if (way == UHMM) {
		struct uhmm_cl_arg args[] = { UHMM_CL_VALUE(a), UHMM_CL_PTR(x, e->n * sizeof(float)),
					      UHMM_CL_PTR(y, e->n * sizeof(float)), UHMM_CL_VALUE(n) };

		if (uhmm_cl_launch(e->cl, e->saxpy, 1, &global, NULL, args, 4)) {
			fprintf(stderr, "uhmm-cl-bench: launch failed\n");
			exit(1);
		}
		return;
	}
	CHECK(clSetKernelArg(e->saxpy, 0, sizeof(a), &a));
	if (way == HAND) {
		CHECK(clSetKernelArg(e->saxpy, 1, sizeof(bx), &bx));
		CHECK(clSetKernelArg(e->saxpy, 2, sizeof(by), &by));
	} else {
		CHECK(clSetKernelArgSVMPointer(e->saxpy, 1, x));
		CHECK(clSetKernelArgSVMPointer(e->saxpy, 2, y));
	}
	CHECK(clSetKernelArg(e->saxpy, 3, sizeof(n), &n));
	CHECK(clEnqueueNDRangeKernel(e->q, e->saxpy, 1, NULL, &global, NULL, 0, NULL, NULL));
	CHECK(clFinish(e->q));
}

/* SVM without fine-grained sharing: the host maps around its accesses. */
static void svm_host(struct env *e, void *p, size_t bytes, bool map)
{
	if (e->svm & CL_DEVICE_SVM_FINE_GRAIN_BUFFER)
		return;
	if (map)
		CHECK(clEnqueueSVMMap(e->q, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, p, bytes, 0, NULL, NULL));
	else
		CHECK(clEnqueueSVMUnmap(e->q, p, 0, NULL, NULL));
	CHECK(clFinish(e->q));
}

/* One repetition of a workload: seconds. */
static double saxpy_rep(struct env *e, enum way way, bool resident, float *x, float *y, cl_mem bx, cl_mem by)
{
	size_t bytes = e->n * sizeof(float);
	int kernels = resident ? RESIDENT_KERNELS : 1;
	double t0 = now_s();

	if (way == SVM)
		svm_host(e, x, bytes, true), svm_host(e, y, bytes, true);
	fill(x, e->n, 1.0f);
	fill(y, e->n, 2.0f);
	if (way == SVM)
		svm_host(e, x, bytes, false), svm_host(e, y, bytes, false);
	if (way == HAND) {
		CHECK(clEnqueueWriteBuffer(e->q, bx, CL_FALSE, 0, bytes, x, 0, NULL, NULL));
		CHECK(clEnqueueWriteBuffer(e->q, by, CL_FALSE, 0, bytes, y, 0, NULL, NULL));
	}
	for (int k = 0; k < kernels; k++)
		saxpy_launch(e, way, x, y, bx, by);
	if (way == HAND)
		CHECK(clEnqueueReadBuffer(e->q, by, CL_TRUE, 0, bytes, y, 0, NULL, NULL));
	if (way == SVM)
		svm_host(e, y, bytes, true);
	e->sink += sum(y, e->n);
	if (way == SVM)
		svm_host(e, y, bytes, false);
	return now_s() - t0;
}

/* ---- the stencil: ping-pong between two grids ---- */

static void stencil_launch(struct env *e, enum way way, float *in, float *out, cl_mem bin, cl_mem bout)
{
	size_t global[2] = { e->w, e->h }, bytes = (size_t)e->w * e->h * sizeof(float);
	cl_uint w = e->w, h = e->h;

	if (way == UHMM) {
		struct uhmm_cl_arg args[] = { UHMM_CL_PTR(in, bytes), UHMM_CL_PTR_WO(out, bytes), UHMM_CL_VALUE(w),
					      UHMM_CL_VALUE(h) };

		if (uhmm_cl_launch(e->cl, e->stencil, 2, global, NULL, args, 4)) {
			fprintf(stderr, "uhmm-cl-bench: launch failed\n");
			exit(1);
		}
		return;
	}
	if (way == HAND) {
		CHECK(clSetKernelArg(e->stencil, 0, sizeof(bin), &bin));
		CHECK(clSetKernelArg(e->stencil, 1, sizeof(bout), &bout));
	} else {
		CHECK(clSetKernelArgSVMPointer(e->stencil, 0, in));
		CHECK(clSetKernelArgSVMPointer(e->stencil, 1, out));
	}
	CHECK(clSetKernelArg(e->stencil, 2, sizeof(w), &w));
	CHECK(clSetKernelArg(e->stencil, 3, sizeof(h), &h));
	CHECK(clEnqueueNDRangeKernel(e->q, e->stencil, 2, NULL, global, NULL, 0, NULL, NULL));
	CHECK(clFinish(e->q));
}

static double stencil_rep(struct env *e, enum way way, bool resident, float *a, float *b, cl_mem ba, cl_mem bb)
{
	size_t cells = (size_t)e->w * e->h, bytes = cells * sizeof(float);
	int sweeps = resident ? RESIDENT_KERNELS : 1;
	double t0 = now_s();

	if (way == SVM)
		svm_host(e, a, bytes, true);
	fill(a, cells, 0.0f);
	if (way == SVM)
		svm_host(e, a, bytes, false);
	if (way == HAND)
		CHECK(clEnqueueWriteBuffer(e->q, ba, CL_FALSE, 0, bytes, a, 0, NULL, NULL));
	for (int s = 0; s < sweeps; s++)
		stencil_launch(e, way, s % 2 ? b : a, s % 2 ? a : b, s % 2 ? bb : ba, s % 2 ? ba : bb);
	{
		float *res = sweeps % 2 ? b : a;
		cl_mem bres = sweeps % 2 ? bb : ba;

		if (way == HAND)
			CHECK(clEnqueueReadBuffer(e->q, bres, CL_TRUE, 0, bytes, res, 0, NULL, NULL));
		if (way == SVM)
			svm_host(e, res, bytes, true);
		e->sink += sum(res, cells);
		if (way == SVM)
			svm_host(e, res, bytes, false);
	}
	return now_s() - t0;
}

/* ---- driver ---- */

struct result {
	double med, min, max;
};

static struct result measure(struct env *e, bool is_saxpy, enum way way, bool resident)
{
	size_t bytes = is_saxpy ? e->n * sizeof(float) : (size_t)e->w * e->h * sizeof(float);
	float *p, *q;
	cl_mem bp = NULL, bq = NULL;
	double t[REPS];
	struct result r;

	if (way == SVM) {
		cl_svm_mem_flags f = CL_MEM_READ_WRITE |
				     ((e->svm & CL_DEVICE_SVM_FINE_GRAIN_BUFFER) ? CL_MEM_SVM_FINE_GRAIN_BUFFER : 0);

		p = clSVMAlloc(e->ctx, f, bytes, 0);
		q = clSVMAlloc(e->ctx, f, bytes, 0);
	} else {
		p = malloc(bytes);
		q = malloc(bytes);
	}
	if (!p || !q) {
		fprintf(stderr, "uhmm-cl-bench: out of memory\n");
		exit(1);
	}
	if (way == HAND) {
		cl_int err;

		bp = clCreateBuffer(e->ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
		bq = clCreateBuffer(e->ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
		if (!bp || !bq)
			exit(1);
	}
	if (way == SVM)
		svm_host(e, q, bytes, true);
	memset(q, 0, bytes);
	if (way == SVM)
		svm_host(e, q, bytes, false);
	if (way == HAND && !is_saxpy)
		CHECK(clEnqueueWriteBuffer(e->q, bq, CL_TRUE, 0, bytes, q, 0, NULL, NULL));
	/* one warm-up repetition: first-touch page faults, buffer allocation, kernel compilation caches */
	for (int i = -1; i < REPS; i++) {
		double s = is_saxpy ? saxpy_rep(e, way, resident, p, q, bp, bq) : stencil_rep(e, way, resident, p, q, bp, bq);

		if (i >= 0)
			t[i] = s;
	}
	qsort(t, REPS, sizeof(t[0]), cmp_double);
	r = (struct result){ t[REPS / 2], t[0], t[REPS - 1] };
	if (way == SVM) {
		clSVMFree(e->ctx, p);
		clSVMFree(e->ctx, q);
	} else {
		if (way == UHMM) {	/* nothing left on the device for the next measurement */
			uhmm_cl_prefetch(e->cl, p, bytes, UHMM_CL_TO_HOST);
			uhmm_cl_prefetch(e->cl, q, bytes, UHMM_CL_TO_HOST);
		}
		free(p);
		free(q);
	}
	if (bp)
		clReleaseMemObject(bp);
	if (bq)
		clReleaseMemObject(bq);
	return r;
}

static void row(const char *work, enum way way, struct result r, double hand, bool json, bool *first)
{
	if (json) {
		printf("%s    {\"workload\": \"%s\", \"way\": \"%s\", \"median_ms\": %.3f, \"min_ms\": %.3f, "
		       "\"max_ms\": %.3f, \"ratio_to_hand\": %.3f}",
		       *first ? "" : ",\n", work, way_name[way], r.med * 1e3, r.min * 1e3, r.max * 1e3, r.med / hand);
		*first = false;
		return;
	}
	printf("%-34s %-26s %9.2f %9.2f %9.2f   %5.2fx\n", work, way_name[way], r.med * 1e3, r.min * 1e3,
	       r.max * 1e3, r.med / hand);
}

static void open_env(struct env *e)
{
	cl_program prog;
	cl_int err;
	int ret = uhmm_cl_context_create(&e->cl, NULL);

	if (ret) {
		fprintf(stderr, "uhmm-cl-bench: no OpenCL device for uhmm: %s\n", strerror(-ret));
		exit(ret == -ENODEV ? 77 : 1);
	}
	e->ctx = uhmm_cl_get_context(e->cl);
	e->dev = uhmm_cl_get_device(e->cl);
	e->q = clCreateCommandQueueWithProperties(e->ctx, e->dev, NULL, &err);
	if (!e->q || uhmm_cl_program_build(e->cl, kernel_src, NULL, &prog))
		exit(1);
	e->saxpy = clCreateKernel(prog, "saxpy", &err);
	e->stencil = clCreateKernel(prog, "stencil", &err);
	if (clGetDeviceInfo(e->dev, CL_DEVICE_SVM_CAPABILITIES, sizeof(e->svm), &e->svm, NULL) != CL_SUCCESS)
		e->svm = 0;
}

int main(int argc, char **argv)
{
	struct env e = { .n = 16u << 20, .w = 2048, .h = 2048 };
	bool json = false, first = true;
	int c, only = -1;

	while ((c = getopt(argc, argv, "n:g:o:jh")) != -1) {
		switch (c) {
		case 'o': only = atoi(optarg); break;
		case 'n': e.n = strtoul(optarg, NULL, 0); break;
		case 'g': e.w = e.h = (unsigned int)strtoul(optarg, NULL, 0); break;
		case 'j': json = true; break;
		default:
			printf("usage: %s [-n SAXPY_ELEMENTS] [-g GRID_SIDE] [-o WAY] [-j]\n"
			       "SAXPY and a 2-D stencil: uhmm-opencl on malloc'ed memory vs hand-written\n"
			       "clEnqueueWriteBuffer/ReadBuffer vs clSVMAlloc, in one run.\n"
			       "-o WAY: only uhmm (0) for a profile, ratios then to itself\n", argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	open_env(&e);
	if (json)
		printf("{\n  \"bench\": \"uhmm-cl-bench\", \"saxpy_elements\": %zu, \"grid\": %u, \"reps\": %d,\n"
		       "  \"rows\": [\n", e.n, e.w, REPS);
	else
		printf("uhmm-cl-bench: SAXPY of %zu floats (%zu MiB per array), stencil %ux%u; ms, median of %d;\n"
		       "one-shot: CPU writes inputs, 1 kernel, CPU reads results; resident: the same with %d kernels\n"
		       "%-34s %-26s %9s %9s %9s   %s\n", e.n, e.n * sizeof(float) >> 20, e.w, e.h, REPS,
		       RESIDENT_KERNELS, "workload", "way", "median", "min", "max", "vs hand");
	for (int w = 0; w < 4; w++) {
		bool is_saxpy = w < 2, resident = w % 2;
		const char *work = is_saxpy ? (resident ? "saxpy, resident (10 kernels)" : "saxpy, one-shot")
					    : (resident ? "stencil, resident (10 sweeps)" : "stencil, one-shot");
		struct result hand;

		if (only == UHMM) {
			hand = measure(&e, is_saxpy, UHMM, resident);
			row(work, UHMM, hand, hand.med, json, &first);
			continue;
		}
		hand = measure(&e, is_saxpy, HAND, resident);
		row(work, HAND, hand, hand.med, json, &first);
		row(work, UHMM, measure(&e, is_saxpy, UHMM, resident), hand.med, json, &first);
		if (e.svm)
			row(work, SVM, measure(&e, is_saxpy, SVM, resident), hand.med, json, &first);
	}
	if (json)
		printf("\n  ],\n  \"svm\": \"%s\", \"checksum\": %g\n}\n",
		       !e.svm ? "none" : (e.svm & CL_DEVICE_SVM_FINE_GRAIN_BUFFER) ? "fine-grained buffer" : "coarse-grained",
		       e.sink);
	else
		printf("SVM: %s. (checksum %g)\n",
		       !e.svm ? "not offered by this device" :
		       (e.svm & CL_DEVICE_SVM_FINE_GRAIN_BUFFER) ? "fine-grained buffers" : "coarse-grained buffers",
		       e.sink);
	uhmm_cl_context_destroy(e.cl);
	return 0;
}
