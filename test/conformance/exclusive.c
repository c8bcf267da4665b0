// SPDX-License-Identifier: MIT
/*
 * Device-exclusive access: the kernel self-test's exclusive,
 * exclusive_mprotect and exclusive_cow scenarios, and what
 * uhmm_make_device_exclusive() promises around them (revocation by any CPU
 * or other-device access, discards, the device's latest data, bad input).
 */
#include <fcntl.h>

#include "../harness.h"

#define NPG 64
#define SIZE (NPG * PAGE)

static int *filled(size_t size)
{
	int *p = map_anon(size, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	fill_ints(p, size, 1);
	return p;
}

/* EXCLUSIVE: every page taken, and what the device read back is the data. */
static void take_exclusive(struct uhmm_dmirror *d, int *ptr, uint64_t npages)
{
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(npages * PAGE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_EXCLUSIVE, ptr, mirror, npages, &c));
	ASSERT_EQ(c.cpages, npages);
	check_ints(mirror, npages * PAGE, 1);
	free(mirror);
}

/* The CPU increments every int (each page's first touch revokes it), then reads them all. */
static void increment_all(int *ptr)
{
	for (size_t i = 0; i < SIZE / sizeof(int); i++)
		ASSERT_EQ(ptr[i]++, (int)i);
	for (size_t i = 0; i < SIZE / sizeof(int); i++)
		ASSERT_EQ(ptr[i], (int)i + 1);
}

TEST(exclusive)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(SIZE);

	take_exclusive(d, ptr, NPG);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, ptr, NULL, NPG, &c), -EPERM);
	increment_all(ptr);	/* the CPU's touch revokes the device's access, then sees the data */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, ptr, NULL, NPG, &c));
	uhmm_dmirror_close(d);
}

TEST(exclusive_mprotect)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(SIZE), *mirror = malloc(SIZE);

	take_exclusive(d, ptr, NPG);
	ASSERT_OK(mprotect(ptr, SIZE, PROT_READ));
	fill_ints(mirror, SIZE, -1);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPG, &c), -EPERM);
	check_ints(ptr, SIZE, 1);	/* memory untouched */
	free(mirror);
	uhmm_dmirror_close(d);
}

/* fork: both sides fault their own copy back and write it (copy-on-write). */
static void child_increments(void *arg)
{
	increment_all(arg);
}

TEST(exclusive_cow)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *ptr = filled(SIZE);

	skip_if_asan_fork_threads();
	take_exclusive(d, ptr, NPG);
	ASSERT_EQ(run_child(child_increments, ptr), 0);
	increment_all(ptr);	/* the child's writes stayed in the child */
	uhmm_dmirror_close(d);
}

/* The device writes while it holds the pages; the CPU's revoking read sees that. */
TEST(exclusive_device_write_reaches_the_cpu)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(SIZE), *mirror = malloc(SIZE);

	take_exclusive(d, ptr, NPG);
	fill_ints(mirror, SIZE, -1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPG, &c));
	ASSERT_EQ(c.faults, 0);	/* through its atomic mappings */
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, ptr, NULL, NPG, &c), -EPERM);
	check_ints(ptr, SIZE, -1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, ptr, NULL, NPG, &c));
	free(mirror);
	uhmm_dmirror_close(d);
}

/* Another device's access revokes too (its range_fault brings the pages back). */
TEST(exclusive_other_device_revokes)
{
	struct uhmm_dmirror *d0 = dmirror(0), *d1 = dmirror(1);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(SIZE), *mirror = malloc(SIZE);
	uint8_t snap[NPG];

	take_exclusive(d0, ptr, NPG);
	ASSERT_OK(dmcmd(d1, UHMM_DMIRROR_SNAPSHOT, ptr, snap, NPG, &c));
	for (int i = 0; i < NPG; i++)	/* not in the CPU's page table: the kernel's snapshot says none */
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_NONE);
	ASSERT_OK(dmcmd(d1, UHMM_DMIRROR_READ, ptr, mirror, NPG, &c));
	check_ints(mirror, SIZE, 1);
	ASSERT_OK(dmcmd(d0, UHMM_DMIRROR_CHECK_EXCLUSIVE, ptr, NULL, NPG, &c));
	check_ints(ptr, SIZE, 1);
	free(mirror);
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d1);
}

/* Pages on a device are brought back first, then taken; a discard drops them. */
TEST(exclusive_of_migrated_then_discarded_pages)
{
	struct uhmm_dmirror *d0 = dmirror(0), *d1 = dmirror(1);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(SIZE), *mirror = malloc(SIZE);

	ASSERT_OK(dmcmd(d1, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPG, &c));
	take_exclusive(d0, ptr, NPG);
	take_exclusive(d0, ptr, NPG);	/* again: revoked and taken anew */
	ASSERT_OK(madvise(ptr, SIZE / 2, MADV_DONTNEED));
	ASSERT_OK(dmcmd(d0, UHMM_DMIRROR_CHECK_EXCLUSIVE, ptr, NULL, NPG / 2, &c));
	for (size_t i = 0; i < SIZE / 2 / sizeof(int); i++)
		ASSERT_EQ(ptr[i], 0);
	check_ints_from(ptr, SIZE / 2 / sizeof(int), SIZE / 2, 1);
	ASSERT_OK(munmap(ptr, SIZE));
	ptr = filled(SIZE);	/* the pool pages are used again */
	take_exclusive(d0, ptr, NPG);
	check_ints(ptr, SIZE, 1);
	free(mirror);
	uhmm_dmirror_close(d0);
	uhmm_dmirror_close(d1);
}

/* A system call on an exclusive buffer: the kernel's access revokes it, or (unprivileged) fails. */
TEST(exclusive_syscall_access)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_features f;
	int *ptr = filled(SIZE), fds[2];
	int *back = malloc(PAGE);

	uhmm_query_features(&f);
	take_exclusive(d, ptr, NPG);
	ASSERT_OK(pipe(fds));
	if (!(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS)) {
		ASSERT_EQ(write(fds[1], ptr, PAGE), -1);	/* documented: README, unprivileged use */
		ASSERT_EQ(errno, EFAULT);
	} else {
		ASSERT_EQ(write(fds[1], ptr, PAGE), (ssize_t)PAGE);
		ASSERT_EQ(read(fds[0], back, PAGE), (ssize_t)PAGE);
		check_ints(back, PAGE, 1);
	}
	check_ints(ptr, SIZE, 1);
	close(fds[0]);
	close(fds[1]);
	free(back);
	uhmm_dmirror_close(d);
}

/* Bad input: a clear errno, and memory untouched. */
TEST(exclusive_args)
{
	struct uhmm_mm *mm;
	int *ptr = filled(4 * PAGE), *shared = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	int *ro = map_anon(PAGE, PROT_READ, MAP_PRIVATE), fd;
	char path[] = "/tmp/uhmm-excl-XXXXXX";
	void *mem = NULL, *file;
	struct uhmm_dmirror_cmd c;
	struct uhmm_dmirror *d = dmirror(0);

	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(uhmm_make_device_exclusive(NULL, (uintptr_t)ptr, NULL, &mem), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive(mm, (uintptr_t)ptr, NULL, NULL), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive(mm, (uintptr_t)ptr + 8, NULL, &mem), -EINVAL);
	ASSERT_EQ(uhmm_make_device_exclusive(mm, 0, NULL, &mem), -EFAULT);
	ASSERT_EQ(uhmm_make_device_exclusive(mm, (uintptr_t)shared, NULL, &mem), -EOPNOTSUPP);
	ASSERT_EQ(uhmm_make_device_exclusive(mm, (uintptr_t)ro, NULL, &mem), -EFAULT);
	fd = mkstemp(path);
	ASSERT_GE(fd, 0);
	unlink(path);
	ASSERT_OK(ftruncate(fd, PAGE));
	file = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(file != MAP_FAILED);
	ASSERT_EQ(uhmm_make_device_exclusive(mm, (uintptr_t)file, NULL, &mem), -EOPNOTSUPP);
	ASSERT_TRUE(mem == NULL);
	check_ints(ptr, 4 * PAGE, 1);
	/* and through the device: MAP_SHARED is -EOPNOTSUPP, nothing taken */
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_EXCLUSIVE, shared, NULL, 1, &c), -EOPNOTSUPP);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_CHECK_EXCLUSIVE, shared, NULL, 1, &c));
	/* a good call: the data is at *mem, and the CPU's read brings it back */
	ASSERT_OK(uhmm_make_device_exclusive(mm, (uintptr_t)ptr, NULL, &mem));
	check_ints((int *)mem, PAGE, 1);
	check_ints(ptr, 4 * PAGE, 1);
	munmap(file, PAGE);
	close(fd);
	uhmm_mm_put(mm);
	uhmm_dmirror_close(d);
}

/* The last reference to the mm goes while pages are exclusive: they come back first. */
TEST(exclusive_pages_come_back_at_mm_teardown)
{
	struct uhmm_mm *mm;
	int *ptr = filled(8 * PAGE);
	struct uhmm_stats a, b;
	void *mem;

	ASSERT_OK(uhmm_mm_get(&mm));
	for (int i = 0; i < 8; i++)
		ASSERT_OK(uhmm_make_device_exclusive(mm, (uintptr_t)ptr + (size_t)i * PAGE, NULL, &mem));
	ASSERT_EQ(uhmm_stats(&a, sizeof(a)), sizeof(a));
	uhmm_mm_put(mm);	/* nothing else holds it: torn down */
	ASSERT_EQ(uhmm_stats(&b, sizeof(b)), sizeof(b));
	ASSERT_EQ(b.pages_leaked, a.pages_leaked);	/* every pool page came back: none left referenced */
	check_ints(ptr, 8 * PAGE, 1);
}
