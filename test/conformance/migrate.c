// SPDX-License-Identifier: MIT
/*
 * The migration scenarios of the kernel's HMM self-test, and the rules of
 * CONFORMANCE.md section 3 items 4-7 and 9, on the reference device.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "../harness.h"

#define BUF_SIZE (1024 * PAGE)		/* 4 MiB */
#define NPAGES (BUF_SIZE / PAGE)

static int *filled(size_t size, int prot_flags)
{
	int *p = map_anon(size, PROT_READ | PROT_WRITE, prot_flags);

	fill_ints(p, size, 1);
	return p;
}

static void snapshot_all(struct uhmm_dmirror *d, void *p, uint64_t npages, uint8_t want)
{
	struct uhmm_dmirror_cmd c;
	uint8_t *snap = malloc(npages);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, snap, npages, &c));
	for (uint64_t i = 0; i < npages; i++)
		if (snap[i] != want)
			test_fail(__FILE__, __LINE__, "page %llu: snapshot %#x, expected %#x",
				  (unsigned long long)i, snap[i], want);
	free(snap);
}

static void migrate(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	check_ints(mirror, BUF_SIZE, 1);
	snapshot_all(d, ptr, NPAGES, UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	/* The CPU reads every page back (migrate_to_ram), data intact. */
	check_ints(ptr, BUF_SIZE, 1);
	snapshot_all(d, ptr, NPAGES, UHMM_DMIRROR_PROT_WRITE);
	uhmm_dmirror_close(d);
}
TEST(migrate) { migrate(0); migrate(1); }

/*
 * A private file mapping written by the CPU. The kernel migrates its
 * anonymous copy-on-write pages; uhmm cannot hold them on a device (once
 * zapped, a touch is refilled from the page cache without a userfaultfd
 * MISSING fault), so it refuses: -ENOENT and the data untouched, on tmpfs
 * (memfd) and on a disk file alike. A documented difference.
 */
static void file_private_case(int fd)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr, *mirror = malloc(BUF_SIZE);

	ASSERT_OK(ftruncate(fd, BUF_SIZE));
	ptr = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ASSERT_TRUE(ptr != MAP_FAILED);
	fill_ints(ptr, BUF_SIZE, 1);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c), -ENOENT);
	check_ints(ptr, BUF_SIZE, 1);
	close(fd);
	uhmm_dmirror_close(d);
}

TEST(migrate_file_private)
{
	int fd = memfd_create("uhmm-test", 0);

	ASSERT_GE(fd, 0);
	file_private_case(fd);
	file_private_case(make_tmpfile(0));
}

static void migrate_fault(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	check_ints(ptr, BUF_SIZE / 2, 1);	/* the first half comes back */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	check_ints(mirror, BUF_SIZE, 1);
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}
TEST(migrate_fault) { migrate_fault(0); migrate_fault(1); }

static void migrate_release(unsigned int dev)
{
	struct uhmm_dmirror *d = dmirror(dev);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_RELEASE, ptr, NULL, NPAGES, &c));
	snapshot_all(d, ptr, NPAGES, UHMM_DMIRROR_PROT_WRITE);	/* all back, no fault needed */
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}
TEST(migrate_release) { migrate_release(0); migrate_release(1); }

/*
 * Eviction (migrate_device_range) notifies like the kernel's
 * migrate_device_unmap(): every address it takes pages from gets a MIGRATE
 * invalidation carrying the pagemap's owner, so a device that looked the
 * pages up just before cannot map them after their data left.
 */
struct evict_watch {
	struct uhmm_interval_notifier n;
	int migrate_events;
	uint64_t lo, hi;	/* the span the MIGRATE invalidations covered */
	bool owner_given;
};

static bool evict_watch_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *r,
				   unsigned long seq)
{
	struct evict_watch *w = (struct evict_watch *)sub;

	uhmm_interval_set_seq(sub, seq);
	if (r->event == UHMM_NOTIFY_MIGRATE) {
		w->migrate_events++;
		w->lo = w->migrate_events == 1 || r->start < w->lo ? r->start : w->lo;
		w->hi = r->end > w->hi ? r->end : w->hi;
		w->owner_given = w->migrate_events == 1 ? r->owner != NULL : w->owner_given && r->owner;
	}
	return true;
}

static const struct uhmm_interval_notifier_ops evict_watch_ops = { .invalidate = evict_watch_invalidate };

TEST(release_notifies_every_address_it_evicts)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(64 * PAGE, MAP_PRIVATE), *mirror = malloc(64 * PAGE);
	struct evict_watch w = { 0 };
	struct uhmm_mm *mm;
	unsigned long seq;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 64, &c));
	ASSERT_EQ(c.cpages, 64);
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_interval_notifier_insert(&w.n, mm, (uintptr_t)ptr, 64 * PAGE, &evict_watch_ops));
	seq = uhmm_interval_read_begin(&w.n);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_RELEASE, ptr, NULL, 64, &c));
	ASSERT_GE(w.migrate_events, 1);
	ASSERT_LE(w.lo, (uintptr_t)ptr);
	ASSERT_GE(w.hi, (uintptr_t)ptr + 64 * PAGE);
	ASSERT_TRUE(w.owner_given);
	ASSERT_TRUE(uhmm_interval_read_retry(&w.n, seq));
	check_ints(ptr, 64 * PAGE, 1);	/* and every page came back */
	uhmm_interval_notifier_remove(&w.n);
	uhmm_mm_put(mm);
	free(mirror);
	uhmm_dmirror_close(d);
}

TEST(migrate_shared)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_SHARED), *mirror = malloc(BUF_SIZE);

	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c), -ENOENT);
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

TEST(migrate_multiple)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(BUF_SIZE);

	for (int round = 0; round < 10; round++) {
		int *ptr = filled(BUF_SIZE, MAP_PRIVATE);

		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
		ASSERT_EQ(c.cpages, NPAGES);
		check_ints(mirror, BUF_SIZE, 1);
		check_ints(ptr, BUF_SIZE, 1);
		ASSERT_OK(munmap(ptr, BUF_SIZE));
	}
	uhmm_dmirror_close(d);
}

TEST(migrate_to_sys_explicit)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_SYS, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	snapshot_all(d, ptr, NPAGES, UHMM_DMIRROR_PROT_WRITE);
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

/*
 * Read-only memory migrates, but the device maps it read-only, as the
 * kernel's finalize_and_map does: a device WRITE is refused with -EPERM and
 * changes nothing, on the device or in memory.
 */
TEST(migrate_read_only_stays_read_only)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(16 * PAGE, MAP_PRIVATE), *buf = malloc(16 * PAGE);

	ASSERT_OK(mprotect(ptr, 16 * PAGE, PROT_READ));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, buf, 16, &c));
	ASSERT_EQ(c.cpages, 16);
	fill_ints(buf, 16 * PAGE, 7);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, buf, 16, &c), -EPERM);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, buf, 16, &c));
	check_ints(buf, 16 * PAGE, 1);
	check_ints(ptr, 16 * PAGE, 1);	/* and back on the CPU, intact */
	free(buf);
	uhmm_dmirror_close(d);
}

/*
 * Device pages of memory made read-only after they moved: mprotect() takes
 * the device's write access away, and a device READ that maps them again
 * must map them read-only (the kernel's mprotect clears the write bit of
 * device-private entries), so that the WRITE after it is -EPERM and changes
 * nothing.
 */
TEST(migrate_then_mprotect_read_only)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(16 * PAGE, MAP_PRIVATE), *buf = malloc(16 * PAGE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, buf, 16, &c));
	ASSERT_OK(mprotect(ptr, 16 * PAGE, PROT_READ));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, buf, 16, &c));
	check_ints(buf, 16 * PAGE, 1);
	snapshot_all(d, ptr, 16, UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_READ);
	fill_ints(buf, 16 * PAGE, 7);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, buf, 16, &c), -EPERM);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, buf, 16, &c));
	check_ints(buf, 16 * PAGE, 1);
	check_ints(ptr, 16 * PAGE, 1);
	free(buf);
	uhmm_dmirror_close(d);
}

/* No VMA, or no read permission, anywhere in the range: -EINVAL before anything moves. */
TEST(migrate_bad_range)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(4 * PAGE, MAP_PRIVATE), mirror[4 * PAGE / sizeof(int)];

	ASSERT_OK(mprotect((char *)ptr + 3 * PAGE, PAGE, PROT_NONE));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 4, &c), -EINVAL);
	ASSERT_OK(munmap((char *)ptr + 3 * PAGE, PAGE));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 4, &c), -EINVAL);
	snapshot_all(d, ptr, 3, UHMM_DMIRROR_PROT_WRITE);	/* nothing moved */
	uhmm_dmirror_close(d);
}

/* Device 1 faults device 0's page back (CONFORMANCE 3.6). */
TEST(migrate_foreign_device_faults_back)
{
	struct uhmm_dmirror *d0 = dmirror(0), *d1 = dmirror(1);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);

	ASSERT_OK(dmcmd(d0, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	snapshot_all(d1, ptr, NPAGES, UHMM_DMIRROR_PROT_NONE);	/* not present for device 1 */
	memset(mirror, 0, BUF_SIZE);
	ASSERT_OK(dmcmd(d1, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c));
	ASSERT_EQ(c.faults, 1);
	check_ints(mirror, BUF_SIZE, 1);
	snapshot_all(d0, ptr, NPAGES, UHMM_DMIRROR_PROT_WRITE);	/* back in system memory */
	uhmm_dmirror_close(d1);
	uhmm_dmirror_close(d0);
}

/* The kernel touches a device-resident buffer on the program's behalf. */
TEST(migrate_syscall_access)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE), *back = malloc(BUF_SIZE);
	int fds[2];
	struct uhmm_features f;

	uhmm_query_features(&f);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_OK(pipe(fds));
	if (!(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS)) {
		/* user-mode-only userfaultfd: the kernel's access fails instead of waiting */
		ASSERT_EQ(write(fds[1], ptr, PAGE), -1);
		ASSERT_EQ(errno, EFAULT);
		check_ints(ptr, BUF_SIZE, 1);	/* a user-mode touch still works */
		uhmm_dmirror_close(d);
		return;
	}
	size_t done = 0;
	while (done < 64 * 1024) {	/* the pipe holds 64 KiB */
		ssize_t n = write(fds[1], (char *)ptr + done, 64 * 1024 - done);

		ASSERT_GT(n, 0);
		done += (size_t)n;
	}
	ASSERT_EQ(read(fds[0], back, 64 * 1024), 64 * 1024);
	check_ints(back, 64 * 1024, 1);
	struct iovec l = { back, BUF_SIZE }, r = { ptr, BUF_SIZE };	/* process_vm_readv too */
	ASSERT_EQ(process_vm_readv(getpid(), &l, 1, &r, 1, 0), (ssize_t)BUF_SIZE);
	check_ints(back, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

/*
 * The device's output buffer is itself on the device: MIGRATE_TO_DEV's
 * read-back and a READ write it through the kernel, which faults its pages
 * back, and the device's fault-back handler needs the device's lock. A
 * read-back that wrote the caller's buffer holding that lock hung here.
 */
TEST(migrate_read_back_into_device_resident_buffer)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *out = filled(BUF_SIZE, MAP_PRIVATE), *src = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *tmp = malloc(BUF_SIZE);
	struct uhmm_features f;

	uhmm_query_features(&f);
	fill_ints(src, BUF_SIZE, -1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, out, tmp, NPAGES, &c));
	if (!(f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS)) {
		/* user-mode-only userfaultfd: the kernel's write fails, nothing written */
		ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, src, out, NPAGES, &c), -EFAULT);
		ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, src, out, NPAGES, &c), -EFAULT);
		check_ints(out, BUF_SIZE, 1);
		check_ints(src, BUF_SIZE, -1);
		uhmm_dmirror_close(d);
		return;
	}
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, src, out, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	snapshot_all(d, src, NPAGES, UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	check_ints(out, BUF_SIZE, -1);	/* faulted back by the read-back, then written */
	/* A READ of device pages into a buffer on the device, the other way round. */
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, out, tmp, NPAGES, &c));
	fill_ints(tmp, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, src, tmp, NPAGES, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, src, out, NPAGES, &c));
	check_ints(out, BUF_SIZE, 1);
	check_ints(src, BUF_SIZE, 1);
	free(tmp);
	uhmm_dmirror_close(d);
}

/*
 * The read-back's own output buffer, on the device just before the range,
 * brings the range back while it is read back (the kernel faults the
 * buffer in before copying, and the fault-around window grows into the
 * range). The pages left the device: -ENOENT, as if the CPU had touched
 * them first, and not a hole's zeros reported as data; the range keeps
 * its data.
 */
TEST(migrate_read_back_racing_its_output_buffer)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *b = page_patterns_on_device(d, 128, 64);
	struct uhmm_features f;

	uhmm_query_features(&f);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, b + 64 * PAGE, b, 64, &c),
		  (f.flags & UHMM_FEAT_UFFD_KERNEL_FAULTS) ? -ENOENT : -EFAULT);
	check_page_patterns(b + 64 * PAGE, 64, 64);
	uhmm_dmirror_close(d);
}

/* madvise(DONTNEED) and munmap free device pages; counters return to the start. */
TEST(migrate_dontneed_munmap_free_device_pages)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);
	char *zeros = calloc(1, BUF_SIZE / 2);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	ASSERT_OK(madvise(ptr, BUF_SIZE / 2, MADV_DONTNEED));
	ASSERT_EQ(memcmp(ptr, zeros, BUF_SIZE / 2), 0);	/* freed: zeros, as in the kernel */
	check_ints_from(ptr, BUF_SIZE / 2 / sizeof(int), BUF_SIZE / 2, 1);
	free(zeros);
	uhmm_dmirror_close(d);
}

/* mremap carries device pages with the mapping. */
TEST(migrate_mremap_carries_pages)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE), *to;
	void *dst = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
	to = mremap(ptr, BUF_SIZE, BUF_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(to == dst);
	snapshot_all(d, to, NPAGES, UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	check_ints(to, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

/*
 * mremap of a mapping that is partly mirrored and partly on the device: the
 * registrations split it into several VMAs, which mremap() (6.17+) would move
 * only up to the first watched one, then fail with EFAULT. It moves whole,
 * device pages included, and the old range is gone.
 */
TEST(migrate_mremap_partly_migrated)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE), *to;
	void *dst = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	unsigned char v;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, (char *)ptr + 100 * PAGE, mirror, 10, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, (char *)ptr + 8 * PAGE, mirror, 8, &c));
	ASSERT_EQ(c.cpages, 8);
	to = mremap(ptr, BUF_SIZE, BUF_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(to == dst);
	ASSERT_EQ(mincore(ptr, PAGE, &v), -1);	/* nothing left behind */
	ASSERT_EQ(errno, ENOMEM);
	check_ints(to, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

/*
 * Two mappings made side by side hold their own pages (anonymous memory of
 * different origins): the kernel never merges them into one VMA. Without a
 * userfaultfd, 6.17+ moves such a pair in one same-size MREMAP_FIXED call;
 * watched by uhmm, the kernel would say EFAULT: uhmm moves it VMA by VMA,
 * device pages and all.
 */
static int *side_by_side(size_t half)
{
	int *a = map_anon(2 * half, PROT_READ | PROT_WRITE, MAP_PRIVATE), *b = filled(half, MAP_PRIVATE);

	ASSERT_TRUE(mremap(b, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, (char *)a + half) == (char *)a + half);
	fill_ints(a, half, 1);
	for (size_t i = 0; i < half / sizeof(int); i++)	/* b's half holds the second part of the pattern */
		a[half / sizeof(int) + i] = (int)(half / sizeof(int) + i);
	return a;
}

TEST(migrate_mremap_unmergeable_vmas)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = side_by_side(BUF_SIZE / 2), *mirror = malloc(BUF_SIZE), *to;
	void *dst = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	unsigned char v;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, (char *)ptr + BUF_SIZE / 2 - 4 * PAGE, mirror, 8, &c));
	to = mremap(ptr, BUF_SIZE, BUF_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	ASSERT_TRUE(to == dst);
	ASSERT_EQ(mincore(ptr, BUF_SIZE, &v), -1);	/* nothing left behind */
	snapshot_all(d, (char *)to + BUF_SIZE / 2 - 4 * PAGE, 8,
		     UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | UHMM_DMIRROR_PROT_WRITE);
	check_ints(to, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

/*
 * fork() right after a raw mremap() (no interposed call to wait for): the
 * REMAP event may not be handled yet (a slow service thread, injected,
 * makes sure of it), and the device pages must be brought back from where
 * they are now, not from where they were.
 */
static void child_checks(void *arg)
{
	check_ints((int *)arg, BUF_SIZE, 1);
}

TEST(migrate_fork_right_after_raw_mremap)
{
	skip_if_asan_fork_threads();
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(BUF_SIZE);

	for (int round = 0; round < 3; round++) {
		int *ptr = filled(BUF_SIZE, MAP_PRIVATE);
		void *dst = map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
		ASSERT_OK(uhmm_fault_inject("service_delay:50000:1:1"));
		ASSERT_EQ(syscall(SYS_mremap, ptr, BUF_SIZE, BUF_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, dst), (long)dst);
		ASSERT_EQ(run_child(child_checks, dst), 0);
		ASSERT_OK(uhmm_fault_inject(NULL));
		check_ints((int *)dst, BUF_SIZE, 1);
		munmap(dst, BUF_SIZE);
	}
	uhmm_dmirror_close(d);
}

/*
 * A fault on a device page is queued, then the program moves the mapping:
 * the worker serves the fault before the REMAP event, at an address with
 * no VMA any more (the driver's migrate_to_ram() fails there). The page
 * must not be poisoned: the REMAP event moves it, and it is read at its
 * new address. A slow service thread (injected) holds the fault back; the
 * faulting access is a kernel-mode one, which gets EFAULT when it retries
 * at the old address (in user-mode-only mode it gets EFAULT at once).
 */
struct early_reader {
	void *addr;
	ssize_t ret;
};

static void *read_one_page(void *arg)
{
	struct early_reader *r = arg;
	char buf[PAGE];

	r->ret = uhmm_access_vm((uintptr_t)r->addr, buf, PAGE, 0);
	return NULL;
}

TEST(migrate_fault_queued_before_mremap_keeps_the_page)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(16 * PAGE, MAP_PRIVATE), *mirror = malloc(16 * PAGE);
	void *dst = map_anon(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct early_reader r = { .addr = (char *)ptr + 5 * PAGE };
	pthread_t t;

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 16, &c));
	ASSERT_OK(uhmm_fault_inject("service_delay:100000:1:1"));
	ASSERT_OK(pthread_create(&t, NULL, read_one_page, &r));
	usleep(20000);	/* its fault is queued; the worker sleeps */
	ASSERT_TRUE(mremap(ptr, 16 * PAGE, 16 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst);
	pthread_join(t, NULL);
	ASSERT_OK(uhmm_fault_inject(NULL));
	ASSERT_TRUE(r.ret == PAGE || r.ret == -EFAULT);
	check_ints((int *)dst, 16 * PAGE, 1);
	uhmm_dmirror_close(d);
}

/* fork: the child sees the data; the parent keeps its own (anon_write_child). */
static void child_reads(void *arg)
{
	int *ptr = arg;
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(BUF_SIZE);

	check_ints(ptr, BUF_SIZE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_READ, ptr, mirror, NPAGES, &c));
	check_ints(mirror, BUF_SIZE, 1);
	fill_ints(mirror, BUF_SIZE, -1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_WRITE, ptr, mirror, NPAGES, &c));
	check_ints(ptr, BUF_SIZE, -1);
	uhmm_dmirror_close(d);
}

static void anon_write_child(bool migrate_first, bool thp)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = thp ? map_anon_aligned(BUF_SIZE, TWO_MB) : map_anon(BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *mirror = malloc(BUF_SIZE);

	if (thp)
		madvise(ptr, BUF_SIZE, MADV_HUGEPAGE);
	fill_ints(ptr, BUF_SIZE, 1);
	if (migrate_first) {
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
		ASSERT_EQ(c.cpages, NPAGES);
	}
	ASSERT_EQ(run_child(child_reads, ptr), 0);
	check_ints(ptr, BUF_SIZE, 1);	/* the parent's copy is unchanged */
	uhmm_dmirror_close(d);
}
TEST(anon_write_child)
{
	skip_if_asan_fork_threads();
	anon_write_child(false, false);
	anon_write_child(true, false);
	anon_write_child(false, true);
	anon_write_child(true, true);
}

/* Several threads fault the same device pages at once: all see the data. */
struct toucher {
	int *ptr;
	int sum_ok;
};
static void *touch_all(void *arg)
{
	struct toucher *t = arg;

	t->sum_ok = 1;
	for (size_t i = 0; i < BUF_SIZE / sizeof(int); i += 1024)
		if (t->ptr[i] != (int)i)
			t->sum_ok = 0;
	return NULL;
}

TEST(migrate_concurrent_faults)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);
	struct toucher t[4];
	pthread_t th[4];

	for (int round = 0; round < 5; round++) {
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
		for (int i = 0; i < 4; i++) {
			t[i].ptr = ptr;
			ASSERT_OK(pthread_create(&th[i], NULL, touch_all, &t[i]));
		}
		for (int i = 0; i < 4; i++) {
			pthread_join(th[i], NULL);
			ASSERT_TRUE(t[i].sum_ok);
		}
	}
	check_ints(ptr, BUF_SIZE, 1);
	uhmm_dmirror_close(d);
}

/* FAIL_ALLOC when migrating back: the page cannot come back, SIGBUS, never zeros. */
TEST(migrate_back_failure_poisons)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(4 * PAGE, MAP_PRIVATE), mirror[4 * PAGE / sizeof(int)];

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 4, &c));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_FLAGS, ptr, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c));
	ASSERT_TRUE(read_sigbus(ptr));	/* the allocation for this fault fails */
	check_ints_from(ptr, PAGE / sizeof(int), 3 * PAGE, 1);	/* the others come back fine */
	struct uhmm_pagemap_stats st;

	ASSERT_OK(uhmm_dmirror_memstats(d, &st));
	ASSERT_EQ(st.poisoned, 1);
	ASSERT_EQ(st.allocated, 0);
	ASSERT_OK(uhmm_dmirror_close(d));
}

/* Device memory counters return to their start: no page leaks. */
TEST(migrate_no_leak)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = filled(BUF_SIZE, MAP_PRIVATE), *mirror = malloc(BUF_SIZE);

	for (int i = 0; i < 3; i++) {
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, NPAGES, &c));
		check_ints(ptr, BUF_SIZE / 4, 1);				/* some fault back */
		ASSERT_OK(madvise(ptr + BUF_SIZE / 4 / sizeof(int), BUF_SIZE / 4, MADV_DONTNEED)); /* some freed */
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_RELEASE, ptr, NULL, 1, &c));	/* the rest evicted */
		for (size_t k = 0; k < BUF_SIZE / sizeof(int); k++)
			ptr[k] = (int)k;
	}
	struct uhmm_pagemap_stats st;

	ASSERT_OK(uhmm_dmirror_memstats(d, &st));
	ASSERT_GT(st.npages, 0);
	ASSERT_EQ(st.allocated, 0);
	ASSERT_EQ(st.mapped, 0);
	ASSERT_EQ(st.free, st.npages);
	uhmm_dmirror_close(d);
}

/*
 * Two devices pull the same pages to themselves over and over while the
 * CPU and a third reader read them: each fault-back may find the page gone
 * to the other device by the time it looks again. That is contention, not
 * a device that cannot return the page: nobody gets an error, nothing is
 * poisoned, every read sees the data.
 */
struct puller {
	struct uhmm_dmirror *d;
	int *ptr;
	atomic_bool *stop;
	int bad;
};

static uint64_t stats_poisons(void)
{
	struct uhmm_stats s;

	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), sizeof(s));
	return s.poisons;
}

static void *pull_to_device(void *arg)
{
	struct puller *p = arg;
	struct uhmm_dmirror_cmd c;
	int *buf = malloc(8 * PAGE);

	while (!atomic_load(p->stop)) {
		int ret = dmcmd(p->d, UHMM_DMIRROR_MIGRATE_TO_DEV, p->ptr, buf, 8, &c);

		p->bad += ret != 0 && ret != -ENOENT;	/* -ENOENT: a page left before the read-back */
	}
	free(buf);
	return NULL;
}

TEST(migrate_ping_pong_between_devices)
{
	struct uhmm_dmirror *d[3] = { dmirror(0), dmirror(1), dmirror(0) };
	int *ptr = filled(8 * PAGE, MAP_PRIVATE), *buf = malloc(8 * PAGE);
	uint64_t poisons = stats_poisons();
	atomic_bool stop = false;
	struct puller p[2] = { { d[0], ptr, &stop, 0 }, { d[1], ptr, &stop, 0 } };
	struct uhmm_dmirror_cmd c;
	pthread_t t[2];

	for (int i = 0; i < 2; i++)
		ASSERT_OK(pthread_create(&t[i], NULL, pull_to_device, &p[i]));
	for (int round = 0; round < 2000; round++) {
		ASSERT_OK(dmcmd(d[2], UHMM_DMIRROR_READ, ptr, buf, 8, &c));
		check_ints(buf, 8 * PAGE, 1);
		ASSERT_EQ(ptr[(round % 8) * PAGE / sizeof(int)], (int)((round % 8) * PAGE / sizeof(int)));
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
		ASSERT_EQ(p[i].bad, 0);
	}
	check_ints(ptr, 8 * PAGE, 1);
	ASSERT_EQ(stats_poisons() - poisons, 0);
	free(buf);
	for (int i = 0; i < 3; i++)
		uhmm_dmirror_close(d[i]);
}

/*
 * Two instances of one device share its pagemap owner. One migrates a page
 * to the device; the other reads it there (its own owner's device page)
 * and maps it. When the first brings the page back, the migration carries
 * the owner both share: only the instance doing it may skip that event (it
 * unmaps the page itself); the other must drop its mapping, or it reads
 * the device page after the CPU changed the data (seen in the ping-pong
 * test above: a READ returned another page's data once the device page
 * was reused).
 */
TEST(migrate_two_instances_of_one_device)
{
	struct uhmm_dmirror *a = dmirror(0), *b = dmirror(0);
	int *ptr = filled(4 * PAGE, MAP_PRIVATE), buf[4 * PAGE / sizeof(int)];
	struct uhmm_dmirror_cmd c;

	ASSERT_OK(dmcmd(a, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, buf, 4, &c));
	ASSERT_OK(dmcmd(b, UHMM_DMIRROR_READ, ptr, buf, 4, &c));	/* b maps a's device pages */
	check_ints(buf, 4 * PAGE, 1);
	ASSERT_OK(dmcmd(a, UHMM_DMIRROR_MIGRATE_TO_SYS, ptr, NULL, 4, &c));
	fill_ints(ptr, 4 * PAGE, 9);	/* the CPU changes the data */
	ASSERT_OK(dmcmd(b, UHMM_DMIRROR_READ, ptr, buf, 4, &c));
	check_ints(buf, 4 * PAGE, 9);
	uhmm_dmirror_close(a);
	uhmm_dmirror_close(b);
}
