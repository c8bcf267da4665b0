/* SPDX-License-Identifier: MIT */
/* The OpenCL C kernels of the examples (also used by uhmm-opencl's tests and uhmm-cl-bench). */
#ifndef UHMM_EXAMPLES_OPENCL_KERNELS_H
#define UHMM_EXAMPLES_OPENCL_KERNELS_H

#define SAXPY_KERNEL_SRC                                                                    \
	"__kernel void saxpy(float a, __global const float *x, __global float *y, uint n)\n"   \
	"{ size_t i = get_global_id(0); if (i < n) y[i] = a * x[i] + y[i]; }\n"

/* One sweep of a 2-D 5-point stencil (heat diffusion); the border is copied. */
#define STENCIL_KERNEL_SRC                                                                   \
	"__kernel void stencil(__global const float *in, __global float *out, uint w, uint h)\n" \
	"{\n"                                                                                    \
	"	size_t x = get_global_id(0), y = get_global_id(1), i = y * w + x;\n"            \
	"	if (x >= w || y >= h) return;\n"                                                \
	"	if (x == 0 || y == 0 || x == w - 1 || y == h - 1) { out[i] = in[i]; return; }\n" \
	"	out[i] = 0.2f * (in[i] + in[i - 1] + in[i + 1] + in[i - w] + in[i + w]);\n"     \
	"}\n"

#endif
