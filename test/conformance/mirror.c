// SPDX-License-Identifier: MIT
/*
 * The mirroring scenarios of the kernel's HMM self-test
 * (tools/testing/selftests/mm/hmm-tests.c), on the reference device, each
 * on device 0 and device 1.
 */
#include <sys/wait.h>

#include "../harness.h"

#define BUF_SIZE (1024 * PAGE)		/* 4 MiB, as in the kernel's tests */
#define NPAGES (BUF_SIZE / PAGE)

static void open_close(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);

	ASSERT_OK(uhmm_dmirror_close(d));
}
TEST(open_close) { open_close(0); open_close(1); }

TEST(open_bad_device)
{
	struct uhmm_dmirror *d = NULL;

	ASSERT_EQ(uhmm_dmirror_open(2, &d), -ENODEV);
	ASSERT_EQ(uhmm_dmirror_open(3, &d), -ENODEV);
	ASSERT_EQ(uhmm_dmirror_open(7, &d), -ENODEV);
	ASSERT_EQ(uhmm_dmirror_open(0, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_close(NULL), -EINVAL);
	ASSERT_TRUE(d == NULL);
}

/* Read private anonymous memory: two untouched pages (none, zero page), rest data. */
static void anon_read(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *mirror = malloc(BUF_SIZE);
	size_t i;

	for (i = 2 * PAGE / sizeof(int); i < BUF_SIZE / sizeof(int); i++)
		ptr[i] = (int)i;
	ASSERT_OK(mprotect(ptr, BUF_SIZE, PROT_READ));
	ASSERT_EQ(*(volatile int *)((char *)ptr + PAGE), 0);	/* map the zero page */
	memset(mirror, 0xa5, BUF_SIZE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	ASSERT_EQ(c.faults, 1);
	for (i = 0; i < 2 * PAGE / sizeof(int); i++)
		ASSERT_EQ(mirror[i], 0);
	for (; i < BUF_SIZE / sizeof(int); i++)
		ASSERT_EQ(mirror[i], (int)i);
	/* Everything is mapped on the device now: no fault the second time. */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.faults, 0);
	uhmm_dmirror_close(d);
}
TEST(anon_read) { anon_read(0); anon_read(1); }

static void anon_read_prot(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *mirror = malloc(BUF_SIZE);

	for (size_t i = 0; i < BUF_SIZE / sizeof(int); i++) {
		ptr[i] = (int)i;
		mirror[i] = -(int)i;
	}
	ASSERT_OK(mprotect(ptr, BUF_SIZE, PROT_NONE));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c), -EFAULT);
	ASSERT_EQ(c.cpages, 0xdead);	/* untouched on error */
	ASSERT_EQ(c.faults, 0xbeef);
	ASSERT_OK(mprotect(ptr, BUF_SIZE, PROT_READ));
	for (size_t i = 0; i < BUF_SIZE / sizeof(int); i++) {
		ASSERT_EQ(ptr[i], (int)i);
		ASSERT_EQ(mirror[i], -(int)i);
	}
	uhmm_dmirror_close(d);
}
TEST(anon_read_prot) { anon_read_prot(0); anon_read_prot(1); }

/*
 * A READ that fails part-way leaves the caller's buffer untouched: the
 * first half was read once (mapped on the device), the second half is
 * PROT_NONE, so the READ copies the first half and then fails. The
 * reference device reads straight into the caller's buffer only when
 * every page is mapped before it starts.
 */
TEST(read_failing_part_way_leaves_buffer_untouched)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *mirror = malloc(BUF_SIZE);

	fill_ints(ptr, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES / 2, &c));	/* first half mapped */
	ASSERT_OK(mprotect((char *)ptr + BUF_SIZE / 2, BUF_SIZE / 2, PROT_NONE));
	fill_ints(mirror, BUF_SIZE, -1);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c), -EFAULT);
	check_ints(mirror, BUF_SIZE, -1);
	free(mirror);
	uhmm_dmirror_close(d);
}

/*
 * A READ over system pages, device pages, the zero page and pages that
 * must be faulted in, twice (the second time every page is mapped and
 * runs of system pages go straight to the caller): the right data in
 * the right place both times.
 */
TEST(read_mixed_pages_twice)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *ptr = map_anon(64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *mirror = malloc(64 * PAGE), *scratch = malloc(64 * PAGE);

	for (int i = 0; i < 64; i++)
		if (i % 16 != 9)	/* page 9 of each 16 stays the zero page */
			memset(ptr + i * PAGE, 'a' + i % 26, PAGE);
	ASSERT_EQ(*(volatile char *)(ptr + 9 * PAGE), 0);
	/* Device pages in between: 2, 5-6, 30-33 and the last one. */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr + 2 * PAGE, scratch, 1, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr + 5 * PAGE, scratch, 2, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr + 30 * PAGE, scratch, 4, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr + 63 * PAGE, scratch, 1, &c));
	for (int round = 0; round < 2; round++) {
		memset(mirror, 0x7f, 64 * PAGE);
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, 64, &c));
		ASSERT_EQ(c.cpages, 64);
		if (round)
			ASSERT_EQ(c.faults, 0);
		for (int i = 0; i < 64; i++) {
			char want = i % 16 == 9 ? 0 : (char)('a' + i % 26);

			ASSERT_EQ(mirror[i * PAGE], want);
			ASSERT_EQ(mirror[i * PAGE + PAGE - 1], want);
		}
	}
	free(mirror);
	free(scratch);
	uhmm_dmirror_close(d);
}

/*
 * A READ of device pages goes from device memory straight to the caller's
 * buffer in runs (one system call per run of up to 256 pages, contiguous
 * device memory as one piece): pages migrated one at a time in a shuffled
 * order lie anywhere in device memory, runs span more than one batch, and
 * every page must still land at its own offset.
 */
TEST(read_device_pages_scattered_in_device_memory)
{
	enum { N = 600 };
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *ptr = map_page_patterns(N, 0), *mirror = malloc(N * PAGE), *scratch = malloc(PAGE);
	int order[N];

	for (int i = 0; i < N; i++)
		order[i] = i;
	for (int i = N / 2 - 1; i > 0; i--) {	/* a fixed shuffle of the first half */
		int j = (int)(((uint64_t)i * 2654435761u) % (uint64_t)(i + 1)), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (int i = 0; i < N / 2; i++)	/* the first half one page at a time ... */
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr + (size_t)order[i] * PAGE, scratch, 1, &c));
	/* ... the second half in one command: contiguous in device memory */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr + N / 2 * PAGE, mirror, N / 2, &c));
	for (int round = 0; round < 2; round++) {
		memset(mirror, 0x7f, N * PAGE);
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, N, &c));
		ASSERT_EQ(c.cpages, N);
		ASSERT_EQ(c.faults, 0);
		check_page_patterns(mirror, N, 0);
	}
	uint8_t snap[N];	/* still on the device: READ left them there */

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, ptr, snap, N, &c));
	for (int i = 0; i < N; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	check_page_patterns(ptr, N, 0);	/* and the CPU's copy, fetched back */
	free(mirror);
	free(scratch);
	uhmm_dmirror_close(d);
}

/*
 * A READ of device pages into a buffer that is on the device too, just
 * before them: the kernel faults the whole buffer in before it copies, and
 * the device's fault-around window, growing along the buffer, takes the
 * pages being read back to system memory (moved out of device memory, zero
 * copy) before they are copied. The READ must notice and read them again
 * where they are now, not hand out the hole they left.
 */
TEST(read_device_pages_that_go_back_while_read)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *b = page_patterns_on_device(d, 128, 128);
	struct uhmm_features f;
	int ret;

	uhmm_query_features(&f);
	ret = dmcmd(d, UHMM_DMIRROR_READ, b + 64 * PAGE, b, 64, &c);
	if (!(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS)) {
		ASSERT_EQ(ret, -EFAULT);	/* user-mode-only: the kernel cannot fault the buffer in */
		check_page_patterns(b, 64, 0);
	} else {
		ASSERT_OK(ret);
		check_page_patterns(b, 64, 64);
	}
	check_page_patterns(b + 64 * PAGE, 64, 64);
	uhmm_dmirror_close(d);
}

static void anon_write(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *mirror = malloc(BUF_SIZE);

	fill_ints(mirror, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	ASSERT_EQ(c.faults, 1);
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}
TEST(anon_write) { anon_write(0); anon_write(1); }

static void anon_write_prot(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(BUF_SIZE, PROT_READ, MAP_PRIVATE);
	int *mirror = malloc(BUF_SIZE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, 1, &c));
	ASSERT_EQ(c.cpages, 1);
	ASSERT_EQ(c.faults, 1);
	fill_ints(mirror, BUF_SIZE, 1);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPAGES, &c), -EPERM);
	for (size_t i = 0; i < BUF_SIZE / sizeof(int); i++)
		ASSERT_EQ(ptr[i], 0);
	ASSERT_OK(mprotect(ptr, BUF_SIZE, PROT_READ | PROT_WRITE));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	ASSERT_EQ(c.faults, 1);
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}
TEST(anon_write_prot) { anon_write_prot(0); anon_write_prot(1); }

struct child_shared_arg {
	int *ptr;
	unsigned int dev;
};

/* The child checks the parent's data, then writes -i through its own device. */
static void child_shared_body(void *p)
{
	struct child_shared_arg *a = p;
	struct uhmm_dmirror *d = dmirror(a->dev);
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(BUF_SIZE);

	check_ints(a->ptr, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, a->ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	for (size_t i = 0; i < BUF_SIZE / sizeof(int); i++) {
		ASSERT_EQ(mirror[i], (int)i);
		mirror[i] = -(int)i;
	}
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, a->ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	uhmm_dmirror_close(d);
}

static void anon_write_child_shared(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);	/* the parent mirrors too */
	struct child_shared_arg a = { map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED), dev };
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(BUF_SIZE);

	fill_ints(a.ptr, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, a.ptr, mirror, NPAGES, &c));
	ASSERT_EQ(run_child(child_shared_body, &a), 0);
	check_ints(a.ptr, BUF_SIZE, -1);
	/* The parent's device sees the child's writes too: shared pages. */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, a.ptr, mirror, NPAGES, &c));
	check_ints(mirror, BUF_SIZE, -1);
	uhmm_dmirror_close(d);
}
TEST(anon_write_child_shared)
{
	skip_if_asan_fork_threads();
	anon_write_child_shared(0);
	anon_write_child_shared(1);
}

static void anon_write_huge(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon_aligned(TWO_MB, TWO_MB);
	int *mirror = malloc(TWO_MB);

	madvise(ptr, TWO_MB, MADV_HUGEPAGE);
	fill_ints(mirror, TWO_MB, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, TWO_MB / PAGE, &c));
	ASSERT_EQ(c.cpages, TWO_MB / PAGE);
	ASSERT_EQ(c.faults, 1);
	check_ints(ptr, TWO_MB, 1);
	uhmm_dmirror_close(d);
}
TEST(anon_write_huge) { anon_write_huge(0); anon_write_huge(1); }

static void *map_hugetlb(size_t size)
{
	void *p;

	if (hugetlb_free_pages() < (long)(size / TWO_MB))
		SKIP("no free hugetlb pages (vm.nr_hugepages)");
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED)
		SKIP("MAP_HUGETLB failed: %s", strerror(errno));
	return p;
}

static void anon_write_hugetlbfs(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_hugetlb(TWO_MB);
	int *mirror = malloc(TWO_MB);

	fill_ints(mirror, TWO_MB, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, TWO_MB / PAGE, &c));
	ASSERT_EQ(c.cpages, TWO_MB / PAGE);
	ASSERT_EQ(c.faults, 1);
	check_ints(ptr, TWO_MB, 1);
	munmap(ptr, TWO_MB);
	uhmm_dmirror_close(d);
}
TEST(anon_write_hugetlbfs) { anon_write_hugetlbfs(0); anon_write_hugetlbfs(1); }

static void file_read(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int fd = make_tmpfile(0);
	int *data = malloc(BUF_SIZE), *mirror = malloc(BUF_SIZE), *ptr;

	fill_ints(data, BUF_SIZE, 1);
	ASSERT_EQ(pwrite(fd, data, BUF_SIZE, 0), (ssize_t)BUF_SIZE);
	ptr = mmap(NULL, BUF_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_TRUE(ptr != MAP_FAILED);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	ASSERT_EQ(c.faults, 1);
	check_ints(mirror, BUF_SIZE, 1);
	close(fd);
	uhmm_dmirror_close(d);
}
TEST(file_read) { file_read(0); file_read(1); }

static void file_write(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int fd = make_tmpfile(BUF_SIZE);
	int *data = malloc(BUF_SIZE), *mirror = malloc(BUF_SIZE), *ptr;

	ptr = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_TRUE(ptr != MAP_FAILED);
	fill_ints(mirror, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	ASSERT_EQ(c.faults, 1);
	check_ints(ptr, BUF_SIZE, 1);
	ASSERT_EQ(pread(fd, data, BUF_SIZE, 0), (ssize_t)BUF_SIZE);
	check_ints(data, BUF_SIZE, 1);
	close(fd);
	uhmm_dmirror_close(d);
}
TEST(file_write) { file_write(0); file_write(1); }

/* hugetlb: the snapshot reports PMD order everywhere, WRITE then READ. */
static void compound(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	size_t size = 2 * TWO_MB, npages = size / PAGE;
	int *ptr = map_hugetlb(size);
	uint8_t *snap = malloc(npages);

	fill_ints(ptr, size, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, ptr, snap, npages, &c));
	ASSERT_EQ(c.cpages, npages);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);
	ASSERT_OK(mprotect(ptr, size, PROT_READ));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, ptr, snap, npages, &c));
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_READ | UHMM_DMIRROR_PROT_PMD);
	munmap(ptr, size);
	uhmm_dmirror_close(d);
}
TEST(compound) { compound(0); compound(1); }

/* A THP mapped by a PMD: PMD order in the snapshot. */
TEST(snapshot_thp)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *ptr = map_anon_aligned(TWO_MB, TWO_MB);
	uint8_t snap[TWO_MB / PAGE];
	struct uhmm_features f;

	if (!thp_available())
		SKIP("transparent huge pages are off");
	uhmm_query_features(&f);
	if ((f.flags & UHMM_FEAT_FALLBACK_FORCED) && !(f.flags & UHMM_FEAT_KPAGEFLAGS))
		SKIP("fallback path without /proc/kpageflags cannot see THP (needs CAP_SYS_ADMIN)");
	ASSERT_OK(madvise(ptr, TWO_MB, MADV_HUGEPAGE));
	memset(ptr, 1, TWO_MB);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, ptr, snap, TWO_MB / PAGE, &c));
	for (size_t i = 0; i < TWO_MB / PAGE; i++)
		ASSERT_EQ(snap[i], UHMM_DMIRROR_PROT_WRITE | UHMM_DMIRROR_PROT_PMD);
	uhmm_dmirror_close(d);
}

/*
 * A device that mapped the zero page loses it when the CPU writes there
 * (the kernel's copy-on-write invalidation, which user space must make
 * itself): the next device READ faults again and sees the CPU's data.
 */
TEST(zero_page_then_cpu_write)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE), buf[PAGE];
	uint8_t snap;
	struct uhmm_stats a, b;

	ASSERT_EQ(*(volatile char *)p, 0);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 1, &c));
	ASSERT_EQ(buf[0], 0);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, &snap, 1, &c));
	ASSERT_EQ(uhmm_stats(&a, sizeof(a)), (long)sizeof(a));
	p[0] = 'x';
	ASSERT_EQ(uhmm_stats(&b, sizeof(b)), (long)sizeof(b));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 1, &c));
	ASSERT_EQ(buf[0], 'x');
	if (snap & UHMM_DMIRROR_PROT_ZERO) {	/* the fallback may not see the zero page */
		ASSERT_GE(b.invalidations[UHMM_NOTIFY_CLEAR] - a.invalidations[UHMM_NOTIFY_CLEAR], 1);
		ASSERT_EQ(c.faults, 1);	/* its mapping went: it faulted again */
	}
	uhmm_dmirror_close(d);
}

/* Every kind of page in one snapshot (CONFORMANCE.md section 2). */
/*
 * CONFORMANCE.md section 2's bytes for every kind of page in one range: no
 * VMA, PROT_NONE, the zero page, read-only and read-write data, untouched,
 * this device's page, another device's page (not VALID for this owner:
 * none), a page another device holds exclusive (not in the CPU's page
 * table: none), and this device's page after mprotect (read-only).
 */
TEST(snapshot_mixed)
{
	struct uhmm_dmirror *d = dmirror(0), *other = dmirror(1);
	struct uhmm_dmirror_cmd c;
	uint8_t snap[10];
	char buf[PAGE];
	struct uhmm_features f;
	char *p;

	uhmm_query_features(&f);
	/*
	 * Page 0 is a hole, free for anyone to map: a sanitizer's runtime or
	 * one of uhmm's threads may place a page there before the snapshot.
	 * Only a hole that is still one afterwards says anything: else again.
	 */
	for (int attempt = 0;; attempt++) {
		unsigned char v;

		p = map_anon(10 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
		for (int i = 6; i < 10; i++)
			p[i * PAGE] = (char)i;
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p + 6 * PAGE, buf, 1, &c));	/* 6: ours */
		ASSERT_OK(dmcmd(other, UHMM_DMIRROR_MIGRATE_TO_DEV, p + 7 * PAGE, buf, 1, &c));	/* 7: theirs */
		ASSERT_OK(dmcmd(other, UHMM_DMIRROR_EXCLUSIVE, p + 8 * PAGE, buf, 1, &c));	/* 8: theirs, exclusive */
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p + 9 * PAGE, buf, 1, &c));
		ASSERT_OK(mprotect(p + 9 * PAGE, PAGE, PROT_READ));	/* 9: ours, read-only */
		ASSERT_OK(munmap(p, PAGE));				/* 0: no VMA */
		ASSERT_OK(mprotect(p + PAGE, PAGE, PROT_NONE));		/* 1: PROT_NONE */
		ASSERT_EQ(*(volatile char *)(p + 2 * PAGE), 0);		/* 2: zero page */
		p[3 * PAGE] = 3;
		ASSERT_OK(mprotect(p + 3 * PAGE, PAGE, PROT_READ));	/* 3: read-only data */
		p[4 * PAGE] = 4;					/* 4: read-write data */
									/* 5: untouched */
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, snap, 10, &c));
		if (mincore(p, PAGE, &v) != 0 || attempt == 9)
			break;
		munmap(p + PAGE, 9 * PAGE);
	}
	ASSERT_EQ(c.cpages, 10);
	ASSERT_EQ(snap[0], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_EQ(snap[1], UHMM_DMIRROR_PROT_ERROR);
	/* The fallback sees the zero page only where PFNs are visible. */
	if (!(f.flags & UHMM_FEAT_FALLBACK_FORCED) || (f.flags & UHMM_FEAT_PFN_VISIBLE))
		ASSERT_EQ(snap[2], UHMM_DMIRROR_PROT_ZERO | UHMM_DMIRROR_PROT_READ);
	else
		ASSERT_EQ(snap[2] & UHMM_DMIRROR_PROT_READ, UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(snap[3], UHMM_DMIRROR_PROT_READ);
	ASSERT_EQ(snap[4], UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(snap[5], UHMM_DMIRROR_PROT_NONE);
	ASSERT_EQ(snap[6], UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(snap[7], UHMM_DMIRROR_PROT_NONE);
	ASSERT_EQ(snap[8], UHMM_DMIRROR_PROT_NONE);
	ASSERT_EQ(snap[9], UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_READ);
	for (int i = 6; i < 10; i++)	/* and nothing moved: every page still holds its data */
		ASSERT_EQ(p[i * PAGE], (char)i);
	uhmm_dmirror_close(d);
	uhmm_dmirror_close(other);
}

TEST(dmirror_bad_commands)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char buf[PAGE];

	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p + 1, buf, 1, &c), -EINVAL);
	ASSERT_EQ(c.cpages, 0xdead);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 0, &c), -EINVAL);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, buf, UINT64_MAX / 2, &c), -EINVAL);
	ASSERT_EQ(dmcmd(d, 99, p, buf, 1, &c), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_cmd(d, UHMM_DMIRROR_READ, NULL), -EINVAL);
	ASSERT_EQ(uhmm_dmirror_cmd(NULL, UHMM_DMIRROR_READ, &c), -EINVAL);
	/* A bad destination buffer is -EFAULT, like copy_to_user(). */
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, NULL, 1, &c), -EFAULT);
	ASSERT_EQ(c.cpages, 0xdead);
	uhmm_dmirror_close(d);
}

static void child_uses_parent_instance(void *arg)
{
	struct uhmm_dmirror *parent = arg;
	struct uhmm_dmirror *own = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char buf[PAGE];

	p[0] = 42;
	ASSERT_EQ(dmcmd(parent, UHMM_DMIRROR_READ, p, buf, 1, &c), -EBADF);
	ASSERT_OK(dmcmd(own, UHMM_DMIRROR_READ, p, buf, 1, &c));
	ASSERT_EQ(buf[0], 42);
	uhmm_dmirror_close(own);
	uhmm_dmirror_close(parent);	/* frees the child's copy only */
}

TEST(fork_child_own_instance)
{
	skip_if_asan_fork_threads();

	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char buf[PAGE];

	p[0] = 7;
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 1, &c));
	ASSERT_EQ(run_child(child_uses_parent_instance, d), 0);
	/* The parent's instance still works after the child closed its copy. */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 1, &c));
	ASSERT_EQ(buf[0], 7);
	uhmm_dmirror_close(d);
}
