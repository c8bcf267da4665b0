/* SPDX-License-Identifier: MIT */
/* Helpers of uhmm-opencl's tests: a context on the first OpenCL device and the test kernels. */
#ifndef UHMM_TEST_CL_UTIL_H
#define UHMM_TEST_CL_UTIL_H

#include "../harness.h"
#include "uhmm/opencl.h"

struct cl_fixture {
	struct uhmm_cl *cl;
	cl_program prog;
	cl_kernel incr, saxpy, stencil;
};

/* Open the device (SKIP with the reason if there is none) and build the test kernels. */
void cl_runtime_env(void);	/* POCL_CACHE_DIR where every mode can write */
void cl_open(struct cl_fixture *f, const struct uhmm_cl_config *config);
void cl_close(struct cl_fixture *f);
/* p[i] += by for n ints, through uhmm_cl_launch(); returns its result */
int cl_incr(struct cl_fixture *f, int *p, unsigned int n, int by);
struct uhmm_cl_stats cl_stats(struct cl_fixture *f);
/*
 * Do pages move to the device and back (UFFDIO_MOVE into fine-grained SVM:
 * the device has it, UHMM_CL_SVM=0 and UHMM_CL_MOVE=0 are not set, the
 * kernel has UFFDIO_MOVE), rather than being copied?
 */
bool cl_pages_move(struct cl_fixture *f);

#endif
