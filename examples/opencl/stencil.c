// SPDX-License-Identifier: MIT
/*
 * A 2-D 5-point stencil (heat diffusion) on two malloc'ed grids with
 * uhmm-opencl: the sweeps ping-pong on the device without a copy in
 * between, the CPU reads the final grid where it is, and checks it against
 * its own computation.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uhmm/opencl.h>

#include "kernels.h"

static const char *src = STENCIL_KERNEL_SRC;

static void sweep_cpu(const float *in, float *out, unsigned int w, unsigned int h)
{
	for (unsigned int y = 0; y < h; y++)
		for (unsigned int x = 0; x < w; x++) {
			unsigned int i = y * w + x;

			out[i] = (x == 0 || y == 0 || x == w - 1 || y == h - 1) ? in[i] :
				 0.2f * (in[i] + in[i - 1] + in[i + 1] + in[i - w] + in[i + w]);
		}
}

int main(void)
{
	unsigned int w = 1000, h = 800, sweeps = 20;
	size_t cells = (size_t)w * h, bytes = cells * sizeof(float), global[2] = { w, h }, bad = 0;
	float *a = calloc(cells, sizeof(float)), *b = calloc(cells, sizeof(float));
	float *ca = calloc(cells, sizeof(float)), *cb = calloc(cells, sizeof(float));
	struct uhmm_cl_stats st;
	struct uhmm_cl *cl;
	cl_program prog;
	cl_kernel k;
	int ret;

	if (!a || !b || !ca || !cb)
		return 1;
	for (unsigned int x = 0; x < w; x++)	/* a hot top edge */
		a[x] = ca[x] = 100.0f;
	ret = uhmm_cl_context_create(&cl, NULL);
	if (ret) {
		fprintf(stderr, "stencil: no OpenCL device for uhmm: %s\n", strerror(-ret));
		return ret == -ENODEV ? 77 : 1;
	}
	if (uhmm_cl_program_build(cl, src, NULL, &prog))
		return 1;
	k = clCreateKernel(prog, "stencil", NULL);
	for (unsigned int s = 0; s < sweeps; s++) {
		float *in = s % 2 ? b : a, *out = s % 2 ? a : b;
		struct uhmm_cl_arg args[] = { UHMM_CL_PTR(in, bytes), UHMM_CL_PTR_WO(out, bytes), UHMM_CL_VALUE(w),
					      UHMM_CL_VALUE(h) };

		if ((ret = uhmm_cl_launch(cl, k, 2, global, NULL, args, 4)) != 0) {
			fprintf(stderr, "stencil: launch: %s\n", strerror(-ret));
			return 1;
		}
		sweep_cpu(s % 2 ? cb : ca, s % 2 ? ca : cb, w, h);
	}
	for (size_t i = 0; i < cells; i++)	/* the CPU reads the device's grid: it faults back */
		bad += fabsf(a[i] - ca[i]) > 1e-4f * (1.0f + fabsf(ca[i]));
	uhmm_cl_stats(cl, &st);
	printf("stencil %ux%u, %u sweeps: %s; %llu launches, %llu pages to the device, %llu back\n", w, h, sweeps,
	       bad ? "WRONG" : "matches the CPU", (unsigned long long)st.launches,
	       (unsigned long long)st.pages_to_device, (unsigned long long)st.pages_to_host);
	clReleaseKernel(k);
	clReleaseProgram(prog);
	uhmm_cl_context_destroy(cl);
	return bad ? 1 : 0;
}
