// SPDX-License-Identifier: MIT
/*
 * uhmm-opencl computes on ordinary memory: SAXPY and a 2-D stencil over
 * malloc'ed arrays checked against the CPU, results that stay on the device
 * until the CPU touches them, a CPU touch mid-way, stack arrays, prefetch,
 * and buffers bigger than a device chunk (eviction).
 */
#include <math.h>

#include "cl_util.h"

static void saxpy_cpu(float a, const float *x, float *y, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		y[i] = a * x[i] + y[i];
}

static int saxpy_dev(struct cl_fixture *f, float a, const float *x, float *y, unsigned int n)
{
	size_t global = n;
	struct uhmm_cl_arg args[] = { UHMM_CL_VALUE(a), UHMM_CL_PTR(x, n * sizeof(float)),
				      UHMM_CL_PTR(y, n * sizeof(float)), UHMM_CL_VALUE(n) };

	return uhmm_cl_launch(f->cl, f->saxpy, 1, &global, NULL, args, 4);
}

/* Several sizes: inside one page, across two, many pages with partial ends. */
TEST(cl_saxpy_malloc)
{
	static const unsigned int sizes[] = { 1, 1000, 1025, 4096, 100003, 1u << 20 };
	struct cl_fixture f;

	cl_open(&f, NULL);
	for (unsigned int s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		unsigned int n = sizes[s];
		float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));

		ASSERT_TRUE(x && y && want);
		for (unsigned int i = 0; i < n; i++) {
			x[i] = (float)(i % 1000) * 0.5f;
			y[i] = want[i] = (float)(i % 77);
		}
		for (int round = 0; round < 3; round++) {
			ASSERT_OK(saxpy_dev(&f, 1.5f, x, y, n));
			saxpy_cpu(1.5f, x, want, n);
		}
		for (unsigned int i = 0; i < n; i++)
			if (y[i] != want[i])
				test_fail(__FILE__, __LINE__, "n %u: y[%u] = %g, want %g", n, i, y[i], want[i]);
		free(x);
		free(y);
		free(want);
	}
	ASSERT_GT(cl_stats(&f).pages_to_device, 0);
	ASSERT_GE(cl_stats(&f).launches, 18);
	cl_close(&f);
}

static void check_plus(const int *p, unsigned int first, unsigned int n, int k, const char *file, int line)
{
	for (unsigned int i = first; i < first + n; i++)
		if (p[i] != (int)i + k)
			test_fail(file, line, "int %u is %d, want %d", i, p[i], (int)i + k);
}
#define CHECK_PLUS(p, first, n, k) check_plus(p, first, n, k, __FILE__, __LINE__)

/* Results stay on the device: no page comes back until the CPU reads; then the 2 MiB blocks do. */
TEST(cl_results_stay_on_device)
{
	unsigned int n = 1024 * 1024;	/* 4 MiB */
	int *p = map_anon(n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_cl_stats s0, s1;
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, n * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, n, 5));
	ASSERT_OK(cl_incr(&f, p, n, 2));
	s0 = cl_stats(&f);
	ASSERT_EQ(s0.pages_to_device, 1024);	/* the second launch found them there */
	ASSERT_EQ(s0.resident_pages, 1024);
	ASSERT_EQ(s0.pages_to_host, 0);
	ASSERT_EQ(s0.edge_bytes, 0);		/* page-aligned: nothing copied by hand */
	CHECK_PLUS(p, 0, 1, 7);			/* one touch brings its 2 MiB block back */
	s1 = cl_stats(&f);
	ASSERT_EQ(s1.pages_to_host, 512);
	ASSERT_EQ(s1.faults, 1);
	ASSERT_EQ(s1.resident_pages, 512);
	CHECK_PLUS(p, 0, n, 7);
	ASSERT_EQ(cl_stats(&f).pages_to_host, 1024);
	cl_close(&f);
}

/* uhmm's counters: pages_moved (zero copy) */
static uint64_t uhmm_pages_moved(void)
{
	struct uhmm_stats s;
	struct uhmm_mm *mm;

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_mm_sync(mm));
	uhmm_mm_put(mm);
	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), (long)sizeof(s));
	return s.pages_moved;
}

/*
 * Fine-grained SVM is host memory: the pages move to the device and back
 * (UFFDIO_MOVE), they are not copied. With cl_mem buffers, or without
 * UFFDIO_MOVE (fallback mode), they are copied. The data is the same.
 */
TEST(cl_svm_pages_move_not_copied)
{
	unsigned int n = 1024 * 1024;	/* 4 MiB */
	int *p = map_anon(n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct cl_fixture f;
	uint64_t m0, m1;
	bool moves;

	cl_open(&f, NULL);
	moves = cl_pages_move(&f);
	fill_ints(p, n * sizeof(int), 1);
	m0 = uhmm_pages_moved();
	ASSERT_OK(cl_incr(&f, p, n, 5));
	m1 = uhmm_pages_moved();
	ASSERT_EQ(m1 - m0, moves ? 1024 : 0);	/* in */
	CHECK_PLUS(p, 0, n, 5);			/* back by CPU faults */
	ASSERT_EQ(uhmm_pages_moved() - m1, moves ? 1024 : 0);
	ASSERT_EQ(cl_stats(&f).pages_to_host, 1024);
	ASSERT_OK(cl_incr(&f, p, n, 1));	/* again, into the memory the pages left */
	CHECK_PLUS(p, 0, n, 6);
	cl_close(&f);
}

/* The CPU touches part of the results between launches: they come back, change, and go again. */
TEST(cl_touch_midway_and_launch_again)
{
	unsigned int n = 300000;
	int *p = malloc(n * sizeof(int));
	struct cl_fixture f;

	ASSERT_TRUE(p);
	cl_open(&f, NULL);
	fill_ints(p, n * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, n, 1));
	for (unsigned int i = 0; i < n; i += 4096)	/* every 4th page, by stride: the CPU takes them back */
		p[i] += 100;
	ASSERT_GT(cl_stats(&f).faults, 0);
	ASSERT_OK(cl_incr(&f, p, n, 1));
	for (unsigned int i = 0; i < n; i++)
		ASSERT_EQ(p[i], (int)i + 2 + (i % 4096 == 0 ? 100 : 0));
	free(p);
	cl_close(&f);
}

#define W 700
#define H 500

static void stencil_cpu(const float *in, float *out)
{
	for (unsigned int y = 0; y < H; y++)
		for (unsigned int x = 0; x < W; x++) {
			unsigned int i = y * W + x;

			out[i] = (x == 0 || y == 0 || x == W - 1 || y == H - 1) ? in[i] :
				 0.2f * (in[i] + in[i - 1] + in[i + 1] + in[i - W] + in[i + W]);
		}
}

/* A 2-D 5-point stencil, ten sweeps ping-ponging between two malloc'ed grids. */
TEST(cl_stencil_2d)
{
	float *a = malloc(W * H * sizeof(float)), *b = malloc(W * H * sizeof(float));
	float *ca = malloc(W * H * sizeof(float)), *cb = malloc(W * H * sizeof(float));
	size_t global[2] = { W, H };
	unsigned int w = W, h = H;
	struct cl_fixture f;

	ASSERT_TRUE(a && b && ca && cb);
	for (unsigned int i = 0; i < W * H; i++)
		a[i] = ca[i] = (float)((i * 2654435761u) >> 24);
	memset(b, 0, W * H * sizeof(float));
	cl_open(&f, NULL);
	for (int sweep = 0; sweep < 10; sweep++) {
		float *in = sweep % 2 ? b : a, *out = sweep % 2 ? a : b;
		struct uhmm_cl_arg args[] = { UHMM_CL_PTR(in, W * H * sizeof(float)),
					      UHMM_CL_PTR(out, W * H * sizeof(float)), UHMM_CL_VALUE(w), UHMM_CL_VALUE(h) };

		ASSERT_OK(uhmm_cl_launch(f.cl, f.stencil, 2, global, NULL, args, 4));
		stencil_cpu(sweep % 2 ? cb : ca, sweep % 2 ? ca : cb);
	}
	for (unsigned int i = 0; i < W * H; i++)
		if (fabsf(a[i] - ca[i]) > 1e-3f * (1.0f + fabsf(ca[i])))
			test_fail(__FILE__, __LINE__, "cell %u: %g, want %g", i, a[i], ca[i]);
	ASSERT_EQ(cl_stats(&f).launches, 10);
	free(a);
	free(b);
	free(ca);
	free(cb);
	cl_close(&f);
}

/* Arrays on the stack are ordinary memory too. */
TEST(cl_stack_array)
{
	int a[5000];
	struct cl_fixture f;

	fill_ints(a, sizeof(a), 1);
	cl_open(&f, NULL);
	ASSERT_OK(cl_incr(&f, a, 5000, 3));
	ASSERT_OK(cl_incr(&f, a, 5000, 3));
	CHECK_PLUS(a, 0, 5000, 6);
	cl_close(&f);
}

/* uhmm_cl_prefetch(): to the device moves the pages now; to the host brings them back without faults. */
TEST(cl_prefetch_both_ways)
{
	unsigned int n = 512 * 1024;	/* 2 MiB */
	int *p = map_anon(n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_cl_stats s;
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, n * sizeof(int), 1);
	ASSERT_OK(uhmm_cl_prefetch(f.cl, p, n * sizeof(int), UHMM_CL_TO_DEVICE));
	s = cl_stats(&f);
	ASSERT_EQ(s.resident_pages, 512);
	ASSERT_EQ(s.launches, 0);
	ASSERT_OK(cl_incr(&f, p, n, 4));
	ASSERT_EQ(cl_stats(&f).pages_to_device, 512);	/* the launch found them there */
	ASSERT_OK(uhmm_cl_prefetch(f.cl, p, n * sizeof(int), UHMM_CL_TO_HOST));
	s = cl_stats(&f);
	ASSERT_EQ(s.resident_pages, 0);
	ASSERT_EQ(s.pages_to_host, 512);
	CHECK_PLUS(p, 0, n, 4);
	ASSERT_EQ(cl_stats(&f).faults, 0);
	ASSERT_EQ(uhmm_cl_prefetch(f.cl, p, n * sizeof(int), 0), -EINVAL);
	ASSERT_EQ(uhmm_cl_prefetch(f.cl, NULL, 4096, UHMM_CL_TO_DEVICE), -EINVAL);
	ASSERT_EQ(uhmm_cl_prefetch(NULL, p, 4096, UHMM_CL_TO_HOST), -EINVAL);
	cl_close(&f);
}

/*
 * Device memory of 4 MiB in 1 MiB buffers: a 3 MiB array is bigger than a
 * buffer (it gets one of its own), and a second one pushes the first out.
 * Both results are right, and the device's buffers never exceed 4 MiB.
 */
TEST(cl_eviction_buffer_larger_than_chunk)
{
	struct uhmm_cl_config cfg = { .size = sizeof(cfg), .device_bytes = 4 << 20, .chunk_bytes = 1 << 20 };
	unsigned int n = 3 * 256 * 1024;	/* 3 MiB of ints */
	int *a = map_anon(n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *b = map_anon(n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_cl_stats s;
	struct cl_fixture f;

	cl_open(&f, &cfg);
	fill_ints(a, n * sizeof(int), 1);
	fill_ints(b, n * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, a, n, 1));
	ASSERT_LE(cl_stats(&f).buffer_bytes, 4 << 20);
	ASSERT_OK(cl_incr(&f, b, n, 2));
	s = cl_stats(&f);
	ASSERT_GE(s.evictions, 1);
	ASSERT_EQ(s.pages_to_host, 768);	/* a came back whole, without a CPU fault */
	ASSERT_EQ(s.faults, 0);
	ASSERT_LE(s.buffer_bytes, 4 << 20);
	ASSERT_OK(cl_incr(&f, a, n, 1));	/* and b goes out for a */
	CHECK_PLUS(a, 0, n, 2);
	CHECK_PLUS(b, 0, n, 2);
	/* an argument bigger than the whole device memory */
	{
		int *big = map_anon(5 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE);

		ASSERT_EQ(cl_incr(&f, big, (5 << 20) / sizeof(int), 1), -E2BIG);
		ASSERT_EQ(big[0], 0);
	}
	cl_close(&f);
}

/*
 * The fault-back window: a 2 MiB block for a touch out of sequence, doubling
 * while the CPU scans: 32 MiB read in order come back in 5 faults (2, 4, 8,
 * 16 and the last 2 MiB), not 16.
 */
TEST(cl_fault_back_window_grows_on_scans)
{
	unsigned int n = 8 * 1024 * 1024;	/* 32 MiB of ints */
	int *p = map_anon_aligned(n * sizeof(int), TWO_MB);
	struct uhmm_cl_stats s;
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, n * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, n, 1));
	CHECK_PLUS(p, 20 * 262144, 1, 1);	/* one touch at 20 MiB: its block only */
	s = cl_stats(&f);
	ASSERT_EQ(s.faults, 1);
	ASSERT_EQ(s.pages_to_host, 512);
	ASSERT_OK(cl_incr(&f, p, n, 1));	/* all on the device again */
	CHECK_PLUS(p, 0, n, 2);			/* a scan */
	s = cl_stats(&f);
	ASSERT_EQ(s.pages_to_host, 512 + 8192);
	ASSERT_LE(s.faults, 1 + 5);
	cl_close(&f);
}

/*
 * A `const` pointer argument is copied, not migrated, and the copy is kept
 * while the CPU does not write it: SAXPY's x stays in system memory, a
 * second launch copies nothing, a CPU write to two of its pages makes the
 * next launch copy those two pages only. Used as an output later, it
 * migrates like any other.
 */
TEST(cl_readonly_argument_copied_while_unchanged)
{
	unsigned int n = 256 * 1024;	/* 1 MiB */
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
	struct uhmm_cl_stats s0, s1, s2;
	struct cl_fixture f;

	ASSERT_TRUE(x && y && want);
	cl_open(&f, NULL);
	for (unsigned int i = 0; i < n; i++) {
		x[i] = (float)(i % 100);
		y[i] = want[i] = 1.0f;
	}
	ASSERT_OK(saxpy_dev(&f, 2.0f, x, y, n));
	saxpy_cpu(2.0f, x, want, n);
	s0 = cl_stats(&f);
	if (s0.readonly_bytes == 0)
		SKIP("no asynchronous write-protect userfaultfd here: read-only arguments migrate");
	ASSERT_EQ(s0.readonly_bytes, n * sizeof(float));
	ASSERT_LE(s0.pages_to_device, 256);		/* y's pages only */
	ASSERT_OK(saxpy_dev(&f, 2.0f, x, y, n));	/* x unchanged: nothing copied */
	saxpy_cpu(2.0f, x, want, n);
	s1 = cl_stats(&f);
	ASSERT_EQ(s1.readonly_bytes, s0.readonly_bytes);
	ASSERT_EQ(s1.faults, 0);			/* x never left: reading it is free */
	x[10] = 5.0f;					/* two pages written */
	x[100000] = 7.0f;
	ASSERT_OK(saxpy_dev(&f, 2.0f, x, y, n));
	saxpy_cpu(2.0f, x, want, n);
	s2 = cl_stats(&f);
	ASSERT_GT(s2.readonly_bytes, s1.readonly_bytes);
	ASSERT_LE(s2.readonly_bytes - s1.readonly_bytes, 2 * PAGE);
	for (unsigned int i = 0; i < n; i++)
		if (y[i] != want[i])
			test_fail(__FILE__, __LINE__, "y[%u] = %g, want %g", i, y[i], want[i]);
	ASSERT_OK(saxpy_dev(&f, 1.0f, y, x, n));	/* x is the output now (x += y): it migrates */
	ASSERT_GT(cl_stats(&f).pages_to_device, s2.pages_to_device);
	for (unsigned int i = 0; i < n; i++) {
		float xi = i == 10 ? 5.0f : i == 100000 ? 7.0f : (float)(i % 100);

		if (x[i] != want[i] + xi)
			test_fail(__FILE__, __LINE__, "x[%u] = %g, want %g", i, x[i], want[i] + xi);
	}
	free(x);
	free(y);
	free(want);
	cl_close(&f);
}

/*
 * A read-only argument freed and allocated again at the same address (by
 * glibc, without telling anyone: no munmap for a heap block; an munmap
 * uhmm does not see for a big one) with new contents: the launch never
 * uses the old copy.
 */
TEST(cl_readonly_argument_reused_memory)
{
	static const unsigned int sizes[] = { 3000, 300000 };	/* a heap block, an mmap'ed one */
	struct cl_fixture f;

	cl_open(&f, NULL);
	for (unsigned int s = 0; s < 2; s++) {
		unsigned int n = sizes[s];
		float *y = malloc(n * sizeof(float));

		ASSERT_TRUE(y);
		for (int round = 0; round < 4; round++) {
			float *x = malloc(n * sizeof(float));

			ASSERT_TRUE(x);
			for (unsigned int i = 0; i < n; i++) {
				x[i] = (float)(round * 10 + (int)(i % 7));
				y[i] = 0.0f;
			}
			ASSERT_OK(saxpy_dev(&f, 1.0f, x, y, n));
			for (unsigned int i = 0; i < n; i++)
				if (y[i] != (float)(round * 10 + (int)(i % 7)))
					test_fail(__FILE__, __LINE__, "n %u round %d: y[%u] = %g", n, round, i, y[i]);
			free(x);
		}
		free(y);
	}
	cl_close(&f);
}

/*
 * An input the CPU rewrites before every launch stops being watched (it
 * would cost a fault per page for nothing) and is copied whole; watching
 * resumes later. Whatever the mode, every launch sees the CPU's latest data.
 */
TEST(cl_readonly_argument_rewritten_every_launch)
{
	unsigned int n = 256 * 1024;
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	struct cl_fixture f;

	ASSERT_TRUE(x && y);
	cl_open(&f, NULL);
	for (int launch = 0; launch < 24; launch++) {
		bool whole = launch < 12;	/* then only one element changes */

		for (unsigned int i = 0; i < n; i++) {
			if (whole || i == (unsigned int)launch * 1000)
				x[i] = (float)(launch + (int)(i % 5));
			y[i] = 0.0f;
		}
		ASSERT_OK(saxpy_dev(&f, 1.0f, x, y, n));
		for (unsigned int i = 0; i < n; i++) {
			float want = whole || i == (unsigned int)launch * 1000 ? (float)(launch + (int)(i % 5)) : x[i];

			if (y[i] != want)
				test_fail(__FILE__, __LINE__, "launch %d: y[%u] = %g, want %g", launch, i, y[i], want);
		}
	}
	free(x);
	free(y);
	cl_close(&f);
}

/*
 * UHMM_CL_PTR_WO: an output the kernel overwrites whole is not copied to
 * the device. A stencil sweep writes every cell of its output: the results
 * are right. A kernel that breaks the promise (it reads the output) sees
 * what the device memory held, not the CPU's data: proof nothing was copied.
 */
TEST(cl_write_only_output)
{
	unsigned int w = 512, h = 300, n = 256 * 1024;
	size_t cells = (size_t)w * h, global[2] = { w, h };
	float *in = malloc(cells * sizeof(float)), *out = malloc(cells * sizeof(float)), *want = malloc(cells * sizeof(float));
	int *p = map_anon(n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	size_t g = n;
	int by = 1;
	unsigned int differ = 0;
	struct uhmm_cl_arg bad[] = { UHMM_CL_PTR_WO(p, n * sizeof(int)), UHMM_CL_VALUE(n), UHMM_CL_VALUE(by) };
	struct cl_fixture f;

	ASSERT_TRUE(in && out && want);
	for (size_t i = 0; i < cells; i++) {
		in[i] = (float)(i % 97);
		out[i] = -1.0f;
	}
	cl_open(&f, NULL);
	{
		struct uhmm_cl_arg args[] = { UHMM_CL_PTR(in, cells * sizeof(float)), UHMM_CL_PTR_WO(out, cells * sizeof(float)),
					      UHMM_CL_VALUE(w), UHMM_CL_VALUE(h) };

		ASSERT_OK(uhmm_cl_launch(f.cl, f.stencil, 2, global, NULL, args, 4));
	}
	for (unsigned int y = 0; y < h; y++)
		for (unsigned int x = 0; x < w; x++) {
			size_t i = (size_t)y * w + x;

			want[i] = (x == 0 || y == 0 || x == w - 1 || y == h - 1) ? in[i] :
				  0.2f * (in[i] + in[i - 1] + in[i + 1] + in[i - w] + in[i + w]);
			if (fabsf(out[i] - want[i]) > 1e-3f * (1.0f + fabsf(want[i])))
				test_fail(__FILE__, __LINE__, "cell %zu: %g, want %g", i, out[i], want[i]);
		}
	for (unsigned int i = 0; i < n; i++)
		p[i] = 0x5a5a5a5a;
	ASSERT_OK(uhmm_cl_launch(f.cl, f.incr, 1, &g, NULL, bad, 3));
	for (unsigned int i = 0; i < n; i++)
		differ += p[i] != 0x5a5a5a5a + 1;
	/*
	 * Copied, the device never had the CPU's data. Moved (SVM), the pages
	 * themselves went, at no cost, and the misused kernel found them.
	 */
	if (cl_pages_move(&f))
		ASSERT_EQ(differ, 0);
	else
		ASSERT_GT(differ, 0);
	free(in);
	free(out);
	free(want);
	cl_close(&f);
}
