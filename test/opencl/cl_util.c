// SPDX-License-Identifier: MIT
#define CL_TARGET_OPENCL_VERSION 200	/* CL_DEVICE_SVM_CAPABILITIES (a query only) */
#include <stdlib.h>
#include <string.h>

#include "cl_util.h"
#include "../../examples/opencl/kernels.h"

static const char *kernels =
	"__kernel void incr(__global int *p, uint n, int by)\n"
	"{ size_t i = get_global_id(0); if (i < n) p[i] += by; }\n"
	SAXPY_KERNEL_SRC STENCIL_KERNEL_SRC;

/* The runtime caches compiled kernels under $HOME, which the unprivileged mode cannot write. */
void cl_runtime_env(void)
{
	if (!getenv("POCL_CACHE_DIR")) {
		char dir[64];

		snprintf(dir, sizeof(dir), "/tmp/uhmm-pocl-cache-%u", (unsigned int)getuid());
		setenv("POCL_CACHE_DIR", dir, 1);
	}
}

void cl_open(struct cl_fixture *f, const struct uhmm_cl_config *config)
{
	int ret;

	cl_runtime_env();
	ret = uhmm_cl_context_create(&f->cl, config);
	if (ret == -ENODEV)
		SKIP("no OpenCL device (install pocl-opencl-icd)");
	if (ret == -EPERM || ret == -ENOSYS)
		SKIP("no userfaultfd here (%s)", strerror(-ret));
	ASSERT_OK(ret);
	ASSERT_OK(uhmm_cl_program_build(f->cl, kernels, NULL, &f->prog));
	f->incr = clCreateKernel(f->prog, "incr", NULL);
	f->saxpy = clCreateKernel(f->prog, "saxpy", NULL);
	f->stencil = clCreateKernel(f->prog, "stencil", NULL);
	ASSERT_TRUE(f->incr && f->saxpy && f->stencil);
}

void cl_close(struct cl_fixture *f)
{
	clReleaseKernel(f->incr);
	clReleaseKernel(f->saxpy);
	clReleaseKernel(f->stencil);
	clReleaseProgram(f->prog);
	uhmm_cl_context_destroy(f->cl);
}

int cl_incr(struct cl_fixture *f, int *p, unsigned int n, int by)
{
	size_t global = n;
	struct uhmm_cl_arg args[] = { UHMM_CL_PTR(p, n * sizeof(int)), UHMM_CL_VALUE(n), UHMM_CL_VALUE(by) };

	return uhmm_cl_launch(f->cl, f->incr, 1, &global, NULL, args, 3);
}

struct uhmm_cl_stats cl_stats(struct cl_fixture *f)
{
	struct uhmm_cl_stats s;

	ASSERT_OK(uhmm_cl_stats(f->cl, &s));
	return s;
}

bool cl_pages_move(struct cl_fixture *f)
{
	cl_device_svm_capabilities caps = 0;
	const char *env = getenv("UHMM_CL_SVM"), *move = getenv("UHMM_CL_MOVE");
	struct uhmm_features feat;

	ASSERT_OK(uhmm_query_features(&feat));
	if (clGetDeviceInfo(uhmm_cl_get_device(f->cl), CL_DEVICE_SVM_CAPABILITIES, sizeof(caps), &caps, NULL))
		caps = 0;
	return (caps & CL_DEVICE_SVM_FINE_GRAIN_BUFFER) && !(env && !strcmp(env, "0")) &&
	       !(move && !strcmp(move, "0")) && (feat.flags & UHMM_FEAT_UFFD_MOVE);
}
