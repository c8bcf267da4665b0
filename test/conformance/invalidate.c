// SPDX-License-Identifier: MIT
/*
 * CONFORMANCE.md section 3.3 with the device: after munmap, madvise,
 * mremap, fork and mprotect the device either re-faults or gets the right
 * error, and never reads stale data. Each change is made twice: through the
 * libc call uhmm interposes (invalidation before the change), and as a raw
 * system call that only the userfaultfd event reports (after the change).
 */
#include <sys/syscall.h>
#include <sys/wait.h>

#include "../harness.h"

#define NP 64
#define SZ (NP * PAGE)

static int do_munmap(void *p, size_t len, bool raw)
{
	return raw ? (int)syscall(SYS_munmap, p, len) : munmap(p, len);
}

static int do_madvise(void *p, size_t len, int advice, bool raw)
{
	return raw ? (int)syscall(SYS_madvise, p, len, advice) : madvise(p, len, advice);
}

static void *do_mremap(void *old, size_t len, void *to, bool raw)
{
	if (raw)
		return (void *)syscall(SYS_mremap, old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	return mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
}

/* Map the device onto @p (one fault pass) and check it saw @seed. */
static void device_reads(struct uhmm_dmirror *d, void *p, uint32_t seed, uint64_t faults)
{
	struct uhmm_dmirror_cmd c;
	char *buf = malloc(SZ);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, NP, &c));
	ASSERT_EQ(c.cpages, NP);
	ASSERT_EQ(c.faults, faults);
	check_pattern(buf, SZ, seed);
	free(buf);
}

static void munmap_case(bool raw)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE), *q;
	char buf[PAGE];

	fill_pattern(p, SZ, 1);
	device_reads(d, p, 1, 1);
	device_reads(d, p, 1, 0);
	ASSERT_OK(do_munmap(p, SZ, raw));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 1, &c), -EFAULT);
	/* New memory at the same address: the device sees the new data. */
	q = mmap(p, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT_TRUE(q == p);
	fill_pattern(q, SZ, 2);
	device_reads(d, q, 2, 1);
	uhmm_dmirror_close(d);
}
TEST(invalidate_munmap) { munmap_case(false); }
TEST(invalidate_munmap_raw) { munmap_case(true); }

static void madvise_case(int advice, bool raw)
{
	struct uhmm_dmirror *d = dmirror(0);
	char *p = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *zeros = calloc(1, SZ);

	fill_pattern(p, SZ, 3);
	device_reads(d, p, 3, 1);
	ASSERT_OK(do_madvise(p, SZ, advice, raw));
	if (advice == MADV_FREE) {
		/* Freed pages may survive until reclaim; a write makes them stay. */
		fill_pattern(p, SZ, 4);
		device_reads(d, p, 4, 1);
	} else {
		struct uhmm_dmirror_cmd c;
		char *buf = malloc(SZ);

		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, NP, &c));
		ASSERT_EQ(c.faults, 1);
		ASSERT_EQ(memcmp(buf, zeros, SZ), 0);
		free(buf);
	}
	free(zeros);
	uhmm_dmirror_close(d);
}
TEST(invalidate_madvise_dontneed) { madvise_case(MADV_DONTNEED, false); }
TEST(invalidate_madvise_dontneed_raw) { madvise_case(MADV_DONTNEED, true); }
TEST(invalidate_madvise_free) { madvise_case(MADV_FREE, false); }
TEST(invalidate_madvise_free_raw) { madvise_case(MADV_FREE, true); }

static void mremap_case(bool raw)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *to = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE), *q;
	char buf[PAGE];

	fill_pattern(p, SZ, 5);
	fill_pattern(to, SZ, 6);
	device_reads(d, p, 5, 1);
	device_reads(d, to, 6, 1);
	q = do_mremap(p, SZ, to, raw);
	ASSERT_TRUE(q == to);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 1, &c), -EFAULT);
	/* The device's old view of @to is gone: it now holds @p's data. */
	device_reads(d, to, 5, 1);
	uhmm_dmirror_close(d);
}
TEST(invalidate_mremap) { mremap_case(false); }
TEST(invalidate_mremap_raw) { mremap_case(true); }

/*
 * fork(): the parent's device had write access; afterwards a device write
 * must break copy-on-write, never land in the page the child shares.
 */
TEST(invalidate_fork)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *buf = malloc(SZ);
	int go[2], done[2], status;
	pid_t pid;

	fill_pattern(p, SZ, 7);
	fill_pattern(buf, SZ, 7);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, p, buf, NP, &c));	/* write mapping */
	ASSERT_EQ(c.faults, 1);
	ASSERT_OK(pipe(go));
	ASSERT_OK(pipe(done));
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		char x;

		/* Wait until the parent's device has written, then check our copy. */
		if (read(go[0], &x, 1) != 1)
			_exit(2);
		check_pattern(p, SZ, 7);
		_exit(0);
	}
	fill_pattern(buf, SZ, 8);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, p, buf, NP, &c));
	ASSERT_EQ(c.faults, 1);		/* write access was dropped by the fork */
	check_pattern(p, SZ, 8);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	uhmm_dmirror_close(d);
}

TEST(invalidate_mprotect)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *buf = malloc(SZ);

	fill_pattern(buf, SZ, 9);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, p, buf, NP, &c));
	ASSERT_OK(mprotect(p, SZ, PROT_READ));
	fill_pattern(buf, SZ, 10);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, p, buf, NP, &c), -EPERM);
	check_pattern(p, SZ, 9);	/* memory untouched */
	device_reads(d, p, 9, 1);	/* the mapping was dropped: re-fault */
	ASSERT_OK(mprotect(p, SZ, PROT_NONE));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, buf, NP, &c), -EFAULT);
	uhmm_dmirror_close(d);
}

/* A device copying while another thread unmaps never crashes. */
struct race_arg {
	struct uhmm_dmirror *d;
	char *p;
	int stop;	/* atomic */
	int errors, oks;
};

#include <pthread.h>
static void *race_reader(void *arg)
{
	struct race_arg *a = arg;
	char *buf = malloc(SZ);

	while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
		struct uhmm_dmirror_cmd c;
		int ret = dmcmd(a->d, UHMM_DMIRROR_READ, a->p, buf, NP, &c);

		if (ret == 0)
			a->oks++;
		else if (ret == -EFAULT)
			a->errors++;
		else
			test_fail(__FILE__, __LINE__, "unexpected %d", ret);
	}
	free(buf);
	return NULL;
}

/*
 * Replace the mapping under the device, behind uhmm's back (raw mmap with
 * MAP_FIXED: an atomic unmap + map the kernel reports as UNMAP), alternately
 * with an inaccessible and a fresh one. munmap() + MAP_FIXED would not do:
 * in between, another thread's allocation may take the hole.
 */
static void *raw_replace(void *p, size_t len, int prot)
{
	return (void *)syscall(SYS_mmap, p, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
}

TEST(device_access_races_munmap)
{
	struct race_arg a = { .d = dmirror(0) };
	pthread_t t;

	a.p = map_anon(SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	ASSERT_OK(pthread_create(&t, NULL, race_reader, &a));
	for (int i = 0; i < 300; i++) {
		fill_pattern(a.p, SZ, 11);
		ASSERT_TRUE(raw_replace(a.p, SZ, PROT_NONE) == a.p);
		ASSERT_TRUE(raw_replace(a.p, SZ, PROT_READ | PROT_WRITE) == a.p);
	}
	__atomic_store_n(&a.stop, 1, __ATOMIC_RELEASE);
	pthread_join(t, NULL);
	ASSERT_GT(a.oks + a.errors, 0);
	uhmm_dmirror_close(a.d);
}
