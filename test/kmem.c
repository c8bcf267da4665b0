// SPDX-License-Identifier: MIT
/*
 * uhmm_kmalloc(): the memory no migration can take (uhmm's own, drivers').
 * The allocator's contract, that the memory is really out of every
 * migration's and device's reach, and that a device's whole life leaves
 * none of it behind (a leak check that needs no valgrind).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

#include "harness.h"
#include "../src/internal.h"

TEST(kmem_contract)
{
	void *p[40];
	char *q;

	errno = 0;
	ASSERT_TRUE(uhmm_kmalloc(0) == NULL);
	ASSERT_EQ(errno, ENOMEM);
	ASSERT_TRUE(uhmm_kmalloc((256UL << 20) + 1) == NULL);
	ASSERT_TRUE(uhmm_kcalloc(SIZE_MAX / 2, 4) == NULL);
	ASSERT_TRUE(uhmm_krealloc(NULL, 0) == NULL);
	uhmm_kfree(NULL);
	/* every size: aligned to its power of two, writable, distinct */
	for (int i = 0; i < 40; i++) {
		size_t size = (size_t)1 << (i % 22), align = size < 16 ? 16 : size;

		p[i] = uhmm_kzalloc(size);
		ASSERT_TRUE(p[i] != NULL);
		ASSERT_EQ((uintptr_t)p[i] & (align - 1), 0);
		for (size_t j = 0; j < size; j += 4096 > size ? 1 : 4096)
			ASSERT_EQ(((unsigned char *)p[i])[j], 0);
		memset(p[i], i + 1, size);
	}
	for (int i = 0; i < 40; i++) {
		size_t size = (size_t)1 << (i % 22);

		ASSERT_EQ(((unsigned char *)p[i])[size - 1], i + 1);
		uhmm_kfree(p[i]);
	}
	/* realloc keeps the data, growing across classes and shrinking */
	q = uhmm_kmalloc(100);
	ASSERT_TRUE(q != NULL);
	for (int i = 0; i < 100; i++)
		q[i] = (char)i;
	q = uhmm_krealloc(q, 70000);
	ASSERT_TRUE(q != NULL);
	q[69999] = 9;
	q = uhmm_krealloc(q, 50);
	for (int i = 0; i < 50; i++)
		ASSERT_EQ(q[i], (char)i);
	ASSERT_TRUE(uhmm_krealloc(q, 0) == NULL);
	/* a freed big block comes back zero-filled (fresh memory) */
	q = uhmm_kmalloc(1 << 20);
	memset(q, 0x5a, 1 << 20);
	uhmm_kfree(q);
	q = uhmm_kzalloc(1 << 20);
	for (size_t j = 0; j < (1 << 20); j += 512)
		ASSERT_EQ(q[j], 0);
	uhmm_kfree(q);
}

struct churn {
	int id;
	atomic_long bad;
};

/* Allocate, fill, check and free blocks of random sizes; realloc some. */
static void *churn_thread(void *arg)
{
	struct churn *c = arg;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(c->id + 1);
	unsigned char *held[64] = { NULL };
	size_t size[64] = { 0 };

	for (int round = 0; round < 20000; round++) {
		int k = (int)((x >> 40) % 64);

		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		if (held[k]) {
			for (size_t j = 0; j < size[k]; j += 61)
				if (held[k][j] != (unsigned char)(c->id + k))
					atomic_fetch_add(&c->bad, 1);
			if (x & 1) {
				uhmm_kfree(held[k]);
				held[k] = NULL;
				continue;
			}
			size[k] = 1 + (size_t)((x >> 20) % 70000);
			held[k] = uhmm_krealloc(held[k], size[k]);	/* keeps the old prefix */
		} else {
			size[k] = 1 + (size_t)((x >> 20) % 70000);
			held[k] = uhmm_kmalloc(size[k]);
		}
		if (!held[k]) {
			atomic_fetch_add(&c->bad, 1);
			continue;
		}
		memset(held[k], c->id + k, size[k]);
	}
	for (int k = 0; k < 64; k++)
		uhmm_kfree(held[k]);
	return NULL;
}

/* Four threads allocating at once: no block is handed out twice, none loses its bytes (TSan and ASan watch). */
TEST(kmem_threads)
{
	struct churn c[4];
	pthread_t t[4];
	uint64_t before = uhmm_kmem_live_bytes();

	for (int i = 0; i < 4; i++) {
		c[i].id = i * 64;
		atomic_init(&c[i].bad, 0);
		ASSERT_OK(pthread_create(&t[i], NULL, churn_thread, &c[i]));
	}
	for (int i = 0; i < 4; i++) {
		ASSERT_OK(pthread_join(t[i], NULL));
		ASSERT_EQ(atomic_load(&c[i].bad), 0);
	}
	ASSERT_EQ(uhmm_kmem_live_bytes(), before);
}

/* A device cannot take it, nor map it: a stale pointer into it is only an error. */
TEST(kmem_is_never_migrated)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	struct uhmm_mm *mm;
	uint64_t src[16], dst[16];
	int *k = uhmm_kzalloc(16 * PAGE), *buf = map_anon(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_migrate_vma m = {
		.src = src, .dst = dst, .start = (uintptr_t)k, .end = (uintptr_t)k + 16 * PAGE,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};

	ASSERT_TRUE(k != NULL);
	fill_ints(k, 16 * PAGE, 1);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, k, buf, 16, &c), -EFAULT);	/* none moved, none readable */
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, k, buf, 16, &c), -EFAULT);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, k, buf, 16, &c), -EFAULT);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_EXCLUSIVE, k, buf, 1, &c), -EFAULT);
	/* the driver-facing call: nothing collected */
	ASSERT_OK(uhmm_mm_get(&mm));
	m.mm = mm;
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 0);
	for (int i = 0; i < 16; i++)
		ASSERT_FALSE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	uhmm_mm_put(mm);
	check_ints(k, 16 * PAGE, 1);	/* untouched, and never faulted */
	uhmm_kfree(k);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* One device's life: open, migrate both ways, exclusive, fault back, close. */
static void device_life(int *p, void *buf)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;

	fill_ints(p, 64 * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 64, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, p, buf, 32, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_EXCLUSIVE, p + 48 * PAGE / sizeof(int), buf, 4, &c));
	check_ints(p, 64 * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 64, &c));
	ASSERT_EQ(madvise(p, 64 * PAGE, MADV_DONTNEED), 0);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/*
 * Leak check without valgrind: uhmm's memory in use is counted; after a
 * first life has warmed every cache (staging slabs, spare blocks), more
 * lives leave the count where it was.
 */
TEST(device_life_leaves_no_memory_behind)
{
	int *p = map_anon(64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	void *buf = map_anon(64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t warm;

	device_life(p, buf);
	warm = uhmm_kmem_live_bytes();
	for (int i = 0; i < 5; i++)
		device_life(p, buf);
	ASSERT_EQ(uhmm_kmem_live_bytes(), warm);
}

/*
 * The reservation is ~51 GiB of address space; where RLIMIT_AS is lower,
 * uhmm reserves smaller slices instead of failing. A fresh process (this
 * test program, re-executed) under a 2 GiB limit runs the allocator's
 * contract and a device's life. Sanitizer runtimes need terabytes of
 * address space for their shadow, so those builds leave this test out.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

/* Child: this test program, re-executed under the limit, runs the tests @arg names. */
static void run_limited(void *arg)
{
	struct rlimit lim = { 2UL << 30, 2UL << 30 };

	int null = open("/dev/null", O_WRONLY);

	if (setrlimit(RLIMIT_AS, &lim) || null < 0)
		_exit(90);
	/* its own "N passed" line must not reach the suite's output: CI counts those lines */
	dup2(null, STDOUT_FILENO);
	dup2(null, STDERR_FILENO);
	execl("/proc/self/exe", "uhmm-tests", "--mode", "fast", "--filter", (const char *)arg, (char *)NULL);
	_exit(91);
}

TEST(kmem_under_an_address_space_limit)
{
	ASSERT_EQ(run_child(run_limited, "kmem_contract"), 0);
	ASSERT_EQ(run_child(run_limited, "device_life_leaves"), 0);
}
#endif
