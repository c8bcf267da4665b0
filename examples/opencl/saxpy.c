// SPDX-License-Identifier: MIT
/*
 * SAXPY on malloc'ed arrays with uhmm-opencl: the kernel takes the host
 * pointers; their pages migrate to the OpenCL device, y's results stay
 * there, and the CPU's check below faults them back.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uhmm.h>
#include <uhmm/opencl.h>

#include "kernels.h"

static const char *src = SAXPY_KERNEL_SRC;

int main(int argc, char **argv)
{
	unsigned int n = argc > 1 ? (unsigned int)strtoul(argv[1], NULL, 0) : 1u << 20;
	float a = 2.0f, *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	size_t global = n, bad = 0;
	struct uhmm_cl_stats st;
	struct uhmm_cl *cl;
	cl_program prog;
	cl_kernel k;
	int ret;

	if (!x || !y)
		return 1;
	for (unsigned int i = 0; i < n; i++) {
		x[i] = (float)i;
		y[i] = 1.0f;
	}
	ret = uhmm_cl_context_create(&cl, NULL);
	if (ret) {
		fprintf(stderr, "saxpy: no OpenCL device for uhmm: %s\n", strerror(-ret));
		return ret == -ENODEV ? 77 : 1;
	}
	if ((ret = uhmm_cl_program_build(cl, src, NULL, &prog)) != 0)
		return 1;
	k = clCreateKernel(prog, "saxpy", NULL);
	for (int round = 0; round < 2; round++) {	/* y = 2x + 1, then y = 2x + (2x + 1) */
		struct uhmm_cl_arg args[] = { UHMM_CL_VALUE(a), UHMM_CL_PTR(x, n * sizeof(float)),
					      UHMM_CL_PTR(y, n * sizeof(float)), UHMM_CL_VALUE(n) };

		ret = uhmm_cl_launch(cl, k, 1, &global, NULL, args, 4);
		if (ret) {
			fprintf(stderr, "saxpy: launch: %s\n", strerror(-ret));
			return 1;
		}
	}
	for (unsigned int i = 0; i < n; i++)	/* the CPU reads the results: they fault back */
		bad += fabsf(y[i] - (4.0f * (float)i + 1.0f)) > 1e-3f * (4.0f * (float)i + 1.0f);
	uhmm_cl_stats(cl, &st);
	printf("saxpy of %u floats on %s: %s; %llu pages to the device, %llu back in %llu CPU faults\n", n,
	       "the OpenCL device", bad ? "WRONG" : "all correct", (unsigned long long)st.pages_to_device,
	       (unsigned long long)st.pages_to_host, (unsigned long long)st.faults);
	clReleaseKernel(k);
	clReleaseProgram(prog);
	uhmm_cl_context_destroy(cl);
	free(x);
	free(y);
	return bad ? 1 : 0;
}
