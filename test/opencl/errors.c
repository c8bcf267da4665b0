// SPDX-License-Identifier: MIT
/*
 * Bad input gets a clear -errno and leaves memory untouched; errors from the
 * runtime surface as documented; a page that cannot come back is poisoned
 * (SIGBUS), never handed back as zeros.
 */
#include "cl_util.h"

#define N 4096	/* 4 pages of ints */

TEST(cl_bad_arguments)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_cl_config small = { .size = 4 };
	size_t global = N, zero = 0, g3[3] = { 1, 1, 1 };
	unsigned int n = N;
	struct uhmm_cl_arg ok[] = { UHMM_CL_PTR(p, N * sizeof(int)), UHMM_CL_VALUE(n), UHMM_CL_VALUE(n) };
	struct uhmm_cl_arg bad[3];
	struct uhmm_cl *none;
	struct cl_fixture f;

	ASSERT_EQ(uhmm_cl_context_create(NULL, NULL), -EINVAL);
	ASSERT_EQ(uhmm_cl_context_create(&none, &small), -EINVAL);
	{
		struct uhmm_cl_config far = { .size = sizeof(far), .platform = 99 };

		ASSERT_EQ(uhmm_cl_context_create(&none, &far), -ENODEV);
	}
	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_EQ(uhmm_cl_launch(NULL, f.incr, 1, &global, NULL, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, NULL, 1, &global, NULL, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 0, &global, NULL, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 4, g3, NULL, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, NULL, NULL, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &zero, NULL, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, NULL, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, ok, 65), -EINVAL);
	memcpy(bad, ok, sizeof(ok));
	bad[0] = UHMM_CL_PTR(NULL, 16);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, bad, 3), -EINVAL);
	bad[0] = UHMM_CL_PTR(p, 0);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, bad, 3), -EINVAL);
	bad[0] = UHMM_CL_PTR((void *)(uintptr_t)-4096, 8192);	/* wraps */
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, bad, 3), -EINVAL);
	bad[0] = ok[0];
	bad[1].kind = 99;
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, bad, 3), -EINVAL);
	bad[1] = UHMM_CL_LOCAL(0);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, bad, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_stats(f.cl, NULL), -EINVAL);
	ASSERT_EQ(uhmm_cl_program_build(f.cl, NULL, NULL, &f.prog), -EINVAL);
	check_ints(p, N * sizeof(int), 1);
	ASSERT_EQ(cl_stats(&f).pages_to_device, 0);
	cl_close(&f);
}

/*
 * With faults served in the faulting thread, the CPU fault-back would call
 * the OpenCL runtime in a signal handler (it allocates): the context is
 * refused, in every mode (this program does not run the harness's thread
 * mode: harness_skip_mode below).
 */
TEST(cl_context_refused_with_faults_in_thread)
{
	struct uhmm_cl *none = NULL;

	cl_runtime_env();
	ASSERT_OK(uhmm_set_fault_mode(UHMM_FAULTS_IN_THREAD));
	ASSERT_EQ(uhmm_cl_context_create(&none, NULL), -EOPNOTSUPP);
	ASSERT_TRUE(none == NULL);
}

const char *harness_skip_mode = "thread";

/* Two pointer arguments whose bytes overlap (and are not the same argument): -EINVAL, nothing moved. */
TEST(cl_overlapping_arguments)
{
	float *x = map_anon(N * sizeof(float), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	size_t global = N / 2;
	float a = 2;
	unsigned int n = N / 2;
	struct uhmm_cl_arg args[] = { UHMM_CL_VALUE(a), UHMM_CL_PTR(x, n * sizeof(float)),
				      UHMM_CL_PTR(x + 1, n * sizeof(float)), UHMM_CL_VALUE(n) };
	struct cl_fixture f;

	cl_open(&f, NULL);
	for (unsigned int i = 0; i < N; i++)
		x[i] = (float)i;
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.saxpy, 1, &global, NULL, args, 4), -EINVAL);
	for (unsigned int i = 0; i < N; i++)
		ASSERT_TRUE(x[i] == (float)i);
	/* the same argument twice is fine: y = 2y + y */
	args[2] = args[1];
	ASSERT_OK(uhmm_cl_launch(f.cl, f.saxpy, 1, &global, NULL, args, 4));
	for (unsigned int i = 0; i < n; i++)
		ASSERT_TRUE(x[i] == 3.0f * (float)i);
	cl_close(&f);
}

/* A kernel the runtime rejects (an argument of the wrong size): -EINVAL; the pages it moved keep their data. */
TEST(cl_runtime_error_keeps_data)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	size_t global = N, local = 3;	/* N is not a multiple of 3 */
	unsigned int n = N;
	char tiny = 1;
	struct uhmm_cl_arg wrong[] = { UHMM_CL_PTR(p, N * sizeof(int)), UHMM_CL_VALUE(n), UHMM_CL_VALUE(tiny) };
	struct uhmm_cl_arg ok[] = { UHMM_CL_PTR(p, N * sizeof(int)), UHMM_CL_VALUE(n), UHMM_CL_VALUE(n) };
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, NULL, wrong, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_launch(f.cl, f.incr, 1, &global, &local, ok, 3), -EINVAL);
	ASSERT_EQ(uhmm_cl_stats(f.cl, &(struct uhmm_cl_stats){ 0 }), 0);
	ASSERT_EQ(cl_stats(&f).launches, 0);
	ASSERT_GT(cl_stats(&f).resident_pages, 0);	/* migrated before the runtime said no */
	check_ints(p, N * sizeof(int), 1);		/* and back, intact */
	cl_close(&f);
}

/* A page that cannot come back (no system memory for it): the CPU access gets SIGBUS, the others their data. */
TEST(cl_page_that_cannot_return_is_poisoned)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, N, 1));
	ASSERT_OK(uhmm_fault_inject("staging_alloc:ENOMEM"));
	ASSERT_TRUE(read_sigbus(&p[0]));
	ASSERT_OK(uhmm_fault_inject(NULL));
	for (unsigned int i = 1024; i < N; i++)	/* pages 1..3: intact */
		ASSERT_EQ(p[i], (int)i + 1);
	cl_close(&f);
}
