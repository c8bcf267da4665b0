// SPDX-License-Identifier: MIT
/*
 * CONFORMANCE.md §3 with the OpenCL device: munmap, madvise, mremap, fork,
 * kernel-mode accesses and MAP_SHARED. A later launch never sees stale
 * device data, and no CPU access ever loses the device's results.
 */
#include <fcntl.h>
#include <sys/wait.h>

#include "cl_util.h"

static void check_plus(const int *p, unsigned int n, int k, const char *file, int line)
{
	for (unsigned int i = 0; i < n; i++)
		if (p[i] != (int)i + k)
			test_fail(file, line, "int %u is %d, want %d", i, p[i], (int)i + k);
}
#define CHECK_PLUS(p, n, k) check_plus(p, n, k, __FILE__, __LINE__)

#define N (256 * 1024)	/* 1 MiB of ints */

/*
 * munmap() of device-resident results, new memory at the same address: the
 * launch sees the new data. Another thread (the runtime's, a sanitizer's)
 * may map something into the hole first: then the address is not reused,
 * and the scenario runs again elsewhere.
 */
TEST(cl_munmap_then_reuse_address)
{
	struct cl_fixture f;
	int *q = MAP_FAILED;

	cl_open(&f, NULL);
	for (int tries = 0; q == MAP_FAILED && tries < 8; tries++) {
		int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
		struct uhmm_cl_stats before = cl_stats(&f);

		fill_ints(p, N * sizeof(int), 1);
		ASSERT_OK(cl_incr(&f, p, N, 10));
		ASSERT_EQ(cl_stats(&f).resident_pages, 256);
		ASSERT_OK(munmap(p, N * sizeof(int)));
		ASSERT_EQ(cl_stats(&f).resident_pages, 0);	/* freed, not copied back */
		ASSERT_EQ(cl_stats(&f).pages_to_host, before.pages_to_host);
		q = mmap(p, N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			 -1, 0);
		ASSERT_TRUE(q == p || (q == MAP_FAILED && errno == EEXIST));
	}
	ASSERT_TRUE(q != MAP_FAILED);
	fill_ints(q, N * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, q, N, 1));
	CHECK_PLUS(q, N, 1);
	cl_close(&f);
}

/* free() and malloc() of the same size (glibc gives the same block back): no stale data. */
TEST(cl_free_then_malloc_again)
{
	struct cl_fixture f;

	cl_open(&f, NULL);
	for (int round = 0; round < 4; round++) {
		unsigned int n = round % 2 ? 3000 : N;	/* heap and mmap'ed blocks */
		int *p = malloc(n * sizeof(int));

		ASSERT_TRUE(p);
		fill_ints(p, n * sizeof(int), 1);
		ASSERT_OK(cl_incr(&f, p, n, round));
		ASSERT_OK(cl_incr(&f, p, n, 1));
		if (round >= 2)
			CHECK_PLUS(p, n, round + 1);
		free(p);	/* rounds 0 and 1: freed with the results still on the device */
	}
	cl_close(&f);
}

/* madvise(DONTNEED) drops device-resident results: the CPU and the next launch see zeros. */
TEST(cl_madvise_dontneed_drops)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, N, 1));
	ASSERT_OK(madvise(p, N * sizeof(int), MADV_DONTNEED));
	ASSERT_EQ(p[12345], 0);
	ASSERT_OK(cl_incr(&f, p, N, 3));
	for (unsigned int i = 0; i < N; i++)
		ASSERT_EQ(p[i], 3);
	cl_close(&f);
}

/* mremap() carries device-resident pages; the launch at the new address finds the data. */
TEST(cl_mremap_moves_results)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE), *q;
	int *dst = map_anon(N * sizeof(int), PROT_NONE, MAP_PRIVATE);
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, N, 2));
	q = mremap(p, N * sizeof(int), N * sizeof(int), MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(q == dst);
	ASSERT_OK(cl_incr(&f, q, N, 3));
	CHECK_PLUS(q, N, 5);
	cl_close(&f);
}

struct fork_arg {
	int *p;
};

static void child_reads(void *arg)
{
	struct fork_arg *a = arg;

	for (unsigned int i = 0; i < N; i++)
		if (a->p[i] != (int)i + 4)
			_exit(1);
	a->p[0] = -1;	/* the parent's copy is its own */
	_exit(0);
}

/* fork() brings the device's results back first: parent and child both see them. */
TEST(cl_fork_sees_results)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct fork_arg a = { p };
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, N, 4));
	ASSERT_EQ(run_child(child_reads, &a), 0);
	CHECK_PLUS(p, N, 4);
	ASSERT_OK(cl_incr(&f, p, N, 1));	/* and the parent goes on using the device */
	CHECK_PLUS(p, N, 5);
	cl_close(&f);
}

/* A system call reading device-resident results (write(2)) gets the data (EFAULT when user-mode only). */
TEST(cl_write_syscall_from_results)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *back = malloc(N * sizeof(int));
	int fd = make_tmpfile(0);
	struct uhmm_features feat;
	struct cl_fixture f;
	ssize_t w;

	ASSERT_TRUE(back);
	ASSERT_OK(uhmm_query_features(&feat));
	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_OK(cl_incr(&f, p, N, 6));
	w = write(fd, p, N * sizeof(int));
	if (!(feat.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS)) {
		ASSERT_TRUE(w < (ssize_t)(N * sizeof(int)));	/* EFAULT, or short, in user-mode-only */
		CHECK_PLUS(p, N, 6);				/* a CPU touch still brings them back */
	} else {
		ASSERT_EQ(w, (ssize_t)(N * sizeof(int)));
		ASSERT_EQ(pread(fd, back, N * sizeof(int), 0), (ssize_t)(N * sizeof(int)));
		CHECK_PLUS(back, N, 6);
	}
	close(fd);
	free(back);
	cl_close(&f);
}

/* MAP_SHARED memory cannot hold device pages: -EFAULT, memory unchanged. */
TEST(cl_shared_memory_refused)
{
	int *p = map_anon(N * sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED);
	int *ro = map_anon(N * sizeof(int), PROT_READ, MAP_PRIVATE);
	struct cl_fixture f;

	cl_open(&f, NULL);
	fill_ints(p, N * sizeof(int), 1);
	ASSERT_EQ(cl_incr(&f, p, N, 1), -EFAULT);
	CHECK_PLUS(p, N, 0);
	ASSERT_EQ(cl_incr(&f, ro, N, 1), -EFAULT);	/* read-only */
	ASSERT_EQ(ro[77], 0);
	ASSERT_OK(munmap(ro, N * sizeof(int)));
	ASSERT_EQ(cl_incr(&f, ro, N, 1), -EFAULT);	/* unmapped */
	ASSERT_EQ(cl_stats(&f).pages_to_device, 0);
	cl_close(&f);
}
