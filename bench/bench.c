// SPDX-License-Identifier: MIT
/*
 * uhmm bench: each uhmm data path next to the raw mechanism under it, in
 * the same run, on buffers of the same size. Every figure is the median of
 * several repetitions, with min and max; compare ratios, not absolute
 * times (the machine is shared).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "../tools/smaps.h"
#include "../src/include/uhmm.h"
#include "../src/include/uhmm/dmirror.h"
#include "../src/uapi/uhmm_uapi.h"

#define PAGE 4096UL
#define REPS 5
#define LAT_REPS 200

struct result {
	const char *name;
	const char *unit;	/* "GB/s" or "us" */
	double med, min, max;
};

/*
 * A data path that failed makes its figure meaningless: each failure is
 * said, counted, and makes the command exit 1 (a 4 GiB migration failed
 * its read-back in every --scaling run, said only on stderr, unnoticed).
 */
static int bench_failures;

static void bench_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bench_failed(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	bench_failures++;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static struct result summarize(const char *name, const char *unit, double *v, int n)
{
	struct result r = { name, unit, 0, 0, 0 };

	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	r.min = v[0];
	r.max = v[n - 1];
	r.med = v[n / 2];
	return r;
}

static char *map_buf(size_t size)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, size, MADV_NOHUGEPAGE);	/* 4 KiB pages: this run measures base pages */
	memset(p, 0x5a, size);
	return p;
}

static struct result bench_memcpy(size_t size)
{
	char *a = map_buf(size), *b = map_buf(size);
	double v[REPS];

	for (int i = 0; i < REPS; i++) {
		double t = now_s();

		memcpy(b, a, size);
		v[i] = (double)size / (now_s() - t) / 1e9;
	}
	munmap(a, size);
	munmap(b, size);
	return summarize("memcpy", "GB/s", v, REPS);
}

static int dm(struct uhmm_dmirror *d, unsigned int cmd, void *addr, void *ptr, uint64_t npages)
{
	struct uhmm_dmirror_cmd c = { (uintptr_t)addr, (uintptr_t)ptr, npages, 0, 0 };

	return uhmm_dmirror_cmd(d, cmd, &c);
}

/* MIGRATE_TO_DEV then MIGRATE_TO_SYS of @buf, each timed into *@to_dev, *@to_sys (GB/s). */
static void round_trip(struct uhmm_dmirror *d, char *buf, char *mirror, size_t size, double *to_dev,
		       double *to_sys)
{
	double t = now_s();

	int ret = dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, mirror, size / PAGE);

	if (ret)
		bench_failed("MIGRATE_TO_DEV of %zu MiB failed: %s", size >> 20, strerror(-ret));
	*to_dev = (double)size / (now_s() - t) / 1e9;
	t = now_s();
	if (dm(d, UHMM_DMIRROR_MIGRATE_TO_SYS, buf, mirror, size / PAGE))
		bench_failed("MIGRATE_TO_SYS of %zu MiB failed", size >> 20);
	*to_sys = (double)size / (now_s() - t) / 1e9;
}

/* round_trip(), then @buf to the device again and the CPU reads it page by page: returns that scan's GB/s. */
static double round_trip_and_scan(struct uhmm_dmirror *d, char *buf, char *mirror, size_t size, double *to_dev,
				  double *to_sys)
{
	double t;

	round_trip(d, buf, mirror, size, to_dev, to_sys);
	dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, mirror, size / PAGE);
	t = now_s();
	for (size_t off = 0; off < size; off += PAGE)
		(void)((volatile char *)buf)[off];	/* each first touch faults back */
	return (double)size / (now_s() - t) / 1e9;
}

/* Migration both ways and the CPU's sequential fault-back, on one buffer. */
static void bench_migrate(struct uhmm_dmirror *d, size_t size, struct result *out)
{
	char *buf = map_buf(size), *mirror = map_buf(size);
	double to_dev[REPS], to_sys[REPS], scan[REPS];

	for (int i = 0; i < REPS; i++)
		scan[i] = round_trip_and_scan(d, buf, mirror, size, &to_dev[i], &to_sys[i]);
	out[0] = summarize("migrate to device (incl. device read-back)", "GB/s", to_dev, REPS);
	out[1] = summarize("migrate to system (MIGRATE_TO_SYS)", "GB/s", to_sys, REPS);
	out[2] = summarize("CPU sequential fault-back scan", "GB/s", scan, REPS);
	munmap(buf, size);
	munmap(mirror, size);
}

/* The CPU touching device-resident pages in random order: time per touched page. */
static struct result bench_random_fault_back(struct uhmm_dmirror *d, size_t size)
{
	char *buf = map_buf(size), *mirror = map_buf(size);
	size_t npages = size / PAGE, touches = npages / 8;
	double v[REPS];
	volatile char sink = 0;

	for (int i = 0; i < REPS; i++) {
		uint64_t x = 12345 + (uint64_t)i;
		double t;

		dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, mirror, npages);
		t = now_s();
		for (size_t k = 0; k < touches; k++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;	/* an LCG: random pages */
			sink = (char)(sink + buf[(size_t)(x >> 33) % npages * PAGE]);
		}
		v[i] = (now_s() - t) / (double)touches * 1e6;
		dm(d, UHMM_DMIRROR_MIGRATE_TO_SYS, buf, mirror, npages);
	}
	munmap(buf, size);
	munmap(mirror, size);
	return summarize("CPU random fault-back (1/8 of the pages)", "us", v, REPS);
}

/*
 * The library's migration path alone, with the smallest possible driver:
 * device pages backed by host memory, filled with one scatter-gather
 * access per 512 pages (system -> device), copied out with memcpy into
 * uhmm's staging pages (device -> system).
 */
struct raw_dev {
	struct uhmm_pagemap *pgmap;
	char *mem;
	int owner;
	bool move;	/* zero copy: pages move into mem and out (uhmm_pagemap_set_host_memory()) */
};

static void raw_free(struct uhmm_page *page) { (void)page; }
static int raw_to_ram(struct uhmm_vm_fault *vmf) { (void)vmf; return -EIO; }
static const struct uhmm_pagemap_ops raw_ops = { .page_free = raw_free, .migrate_to_ram = raw_to_ram };

static void raw_chunk(struct raw_dev *rd, struct uhmm_mm *mm, char *buf, size_t off, bool to_dev)
{
	uint64_t src[512], dst[512];
	struct iovec iov[512];
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = src, .dst = dst, .start = (uintptr_t)buf + off,
		.end = (uintptr_t)buf + off + 512 * PAGE, .pgmap_owner = &rd->owner,
		.flags = to_dev ? UHMM_MIGRATE_VMA_SELECT_SYSTEM | (rd->move ? UHMM_MIGRATE_VMA_ZERO_COPY : 0)
				: UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
	};
	int n = 0;

	if (uhmm_migrate_vma_setup(&m))
		return;
	if (to_dev) {
		for (uint64_t i = 0; i < m.npages; i++) {
			struct uhmm_page *pg = uhmm_pagemap_page(rd->pgmap, (off / PAGE) + i);

			if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE) || uhmm_page_init(pg))
				continue;
			dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(pg)) | (rd->move ? UHMM_MIGRATE_PFN_MOVE : 0);
			iov[n++] = (struct iovec){ rd->mem + off + i * PAGE, PAGE };
		}
		if (!rd->move)
			uhmm_access_vm_iov(m.start, iov, n, 0);
	} else {
		for (uint64_t i = 0; i < m.npages; i++) {
			struct uhmm_page *pg = uhmm_migrate_pfn_to_page(src[i]);
			void *sys;

			if (pg && rd->move) {
				dst[i] = uhmm_migrate_pfn_data(rd->mem + uhmm_page_index(pg) * PAGE) | UHMM_MIGRATE_PFN_MOVE;
				continue;
			}
			if (!pg || !(sys = uhmm_migrate_alloc_system_page(&dst[i])))
				continue;
			memcpy(sys, rd->mem + uhmm_page_index(pg) * PAGE, PAGE);
		}
	}
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
}

/*
 * The mechanism under the zero-copy rows: UFFDIO_MOVE of the same size in
 * 2 MiB batches of 4 KiB pages, back and forth between two registered
 * buffers, nothing else. Its cost per page differs between hosts far more
 * than memcpy does (31 ns on the host of issue #5, 70 ns on another), so a
 * zero-copy row is read against this one as well as against memcpy.
 */
static int bare_open(void);

/*
 * A bare userfaultfd that can move pages between @a (filled) and @b (a
 * fresh mapping, MAP_FAILED allowed), both 4 KiB pages and registered
 * MISSING (a move's destination must be): the fd, or -1 (closed).
 */
static int raw_move_uffd(char *a, char *b, size_t size)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_MOVE };
	int uffd = b == MAP_FAILED ? -1 : bare_open();
	bool ok = uffd >= 0 && !ioctl(uffd, UFFDIO_API, &api);

	for (int i = 0; ok && i < 2; i++) {
		struct uffdio_register reg = { .range = { (uintptr_t)(i ? b : a), size },
					       .mode = UFFDIO_REGISTER_MODE_MISSING };

		ok = !madvise(i ? b : a, size, MADV_NOHUGEPAGE) && !ioctl(uffd, UFFDIO_REGISTER, &reg);
	}
	if (!ok && uffd >= 0) {
		close(uffd);
		uffd = -1;
	}
	return uffd;
}

/* Move all of @from into @to, 2 MiB at a time. */
static bool raw_move_all(int uffd, char *to, char *from, size_t size)
{
	for (size_t off = 0; off < size; off += 512 * PAGE) {
		struct uffdio_move m = { (uintptr_t)to + off, (uintptr_t)from + off,
					 size - off < 512 * PAGE ? size - off : 512 * PAGE, 0, 0 };

		if (ioctl(uffd, UFFDIO_MOVE, &m))
			return false;
	}
	return true;
}

static struct result bench_raw_uffd_move(size_t size)
{
	struct result r = { "raw UFFDIO_MOVE, 2 MiB batches (no UFFDIO_MOVE here)", "GB/s", 0, 0, 0 };
	char *a = map_buf(size), *b = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int uffd = raw_move_uffd(a, b, size);
	double v[REPS];
	bool ok = uffd >= 0;

	for (int rep = 0; ok && rep < 2 * REPS; rep++) {	/* a to b, then back */
		double t = now_s();

		ok = raw_move_all(uffd, rep % 2 ? a : b, rep % 2 ? b : a, size);
		if (rep % 2 == 0)
			v[rep / 2] = (double)size / (now_s() - t) / 1e9;
	}
	if (ok)
		r = summarize("raw UFFDIO_MOVE, 2 MiB batches of 4 KiB pages", "GB/s", v, REPS);
	if (uffd >= 0)
		close(uffd);
	munmap(a, size);
	if (b != MAP_FAILED)
		munmap(b, size);
	return r;
}

/*
 * The raw mechanism under a sequential fault-back: the pages wait in a
 * stash, the buffer is registered MISSING, and a bare handler thread
 * serves each fault by moving the 8 MiB after it (uhmm's largest
 * fault-around window) in with one UFFDIO_MOVE. No bookkeeping at all:
 * what a fault-back scan could reach on this kernel and machine.
 */
#define RAW_WINDOW (8UL << 20)

struct raw_scan {
	int uffd;
	int stop;
	int failed;
	char *stash, *buf;
	size_t size;
};

static void *raw_scan_handler(void *arg)
{
	struct raw_scan *s = arg;

	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p = { .fd = s->uffd, .events = POLLIN };
		struct uffd_msg m;

		if (poll(&p, 1, 50) <= 0 || read(s->uffd, &m, sizeof(m)) != sizeof(m) ||
		    m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uint64_t off = (m.arg.pagefault.address & ~(PAGE - 1)) - (uintptr_t)s->buf;
		struct uffdio_move mv = { .dst = (uintptr_t)s->buf + off, .src = (uintptr_t)s->stash + off,
					  .len = s->size - off < RAW_WINDOW ? s->size - off : RAW_WINDOW };

		if (ioctl(s->uffd, UFFDIO_MOVE, &mv) && mv.move <= 0) {	/* never leave the scan waiting */
			struct uffdio_zeropage z = { .range = { mv.dst, PAGE } };

			__atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
			ioctl(s->uffd, UFFDIO_ZEROPAGE, &z);
		}
	}
	return NULL;
}

static struct result bench_raw_fault_back_scan(size_t size)
{
	struct result r = { "raw sequential fault-back (no UFFDIO_MOVE here)", "GB/s", 0, 0, 0 };
	struct raw_scan s = { .size = size };
	double v[REPS];
	pthread_t t;
	bool ok, started;

	s.stash = map_buf(size);
	s.buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s.uffd = raw_move_uffd(s.stash, s.buf, size);
	ok = started = s.uffd >= 0 && !pthread_create(&t, NULL, raw_scan_handler, &s);
	for (int i = 0; ok && i < REPS; i++) {
		double t0 = now_s();

		for (size_t off = 0; off < size; off += PAGE)
			(void)((volatile char *)s.buf)[off];	/* each 8 MiB: one fault, one move */
		v[i] = (double)size / (now_s() - t0) / 1e9;
		ok = !__atomic_load_n(&s.failed, __ATOMIC_RELAXED) && raw_move_all(s.uffd, s.stash, s.buf, size);
	}
	if (started) {
		__atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE);
		pthread_join(t, NULL);
	}
	if (ok)
		r = summarize("raw sequential fault-back (UFFDIO_MOVE, 8 MiB)", "GB/s", v, REPS);
	if (s.uffd >= 0)
		close(s.uffd);
	munmap(s.stash, size);
	if (s.buf != MAP_FAILED)
		munmap(s.buf, size);
	return r;
}

/*
 * @move: the device memory is given to uhmm as host memory and pages move
 * in and out with UFFDIO_MOVE (the memory starts empty: a move needs an
 * empty destination); else the driver copies.
 */
static void bench_raw_migrate(size_t size, struct result *out, bool move)
{
	struct raw_dev rd = { .move = move };
	struct uhmm_mm *mm;
	char *buf = map_buf(size);
	double to_dev[REPS], to_sys[REPS];

	rd.mem = move ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : map_buf(size);
	if (move && rd.mem != MAP_FAILED)
		madvise(rd.mem, size, MADV_NOHUGEPAGE);
	out[0] = out[1] = (struct result){ "uhmm_migrate_vma (no pagemap)", "GB/s", 0, 0, 0 };
	if (rd.mem == MAP_FAILED || uhmm_mm_get(&mm) ||
	    uhmm_pagemap_add(mm, size / PAGE, &rd.owner, &raw_ops, NULL, &rd.pgmap)) {
		fprintf(stderr, "bench: no pagemap\n");
		return;
	}
	if (move && uhmm_pagemap_set_host_memory(rd.pgmap, rd.mem)) {
		fprintf(stderr, "bench: no zero-copy migration here (UFFDIO_MOVE)\n");
		out[0].name = out[1].name = "uhmm_migrate_vma zero copy (no UFFDIO_MOVE)";
		uhmm_pagemap_remove(rd.pgmap);
		uhmm_mm_put(mm);
		return;
	}
	for (int r = 0; r < REPS; r++) {
		double t = now_s();

		for (size_t off = 0; off < size; off += 512 * PAGE)
			raw_chunk(&rd, mm, buf, off, true);
		to_dev[r] = (double)size / (now_s() - t) / 1e9;
		t = now_s();
		for (size_t off = 0; off < size; off += 512 * PAGE)
			raw_chunk(&rd, mm, buf, off, false);
		to_sys[r] = (double)size / (now_s() - t) / 1e9;
	}
	out[0] = summarize(move ? "uhmm_migrate_vma to device, zero copy (minimal)" :
				  "uhmm_migrate_vma to device (minimal driver)", "GB/s", to_dev, REPS);
	out[1] = summarize(move ? "uhmm_migrate_vma to system, zero copy (minimal)" :
				  "uhmm_migrate_vma to system (minimal driver)", "GB/s", to_sys, REPS);
	uhmm_pagemap_remove(rd.pgmap);
	uhmm_mm_put(mm);
	munmap(buf, size);
	munmap(rd.mem, size);
}

/* One CPU fault on a device page: migrate a lone page, touch it. */
static struct result bench_fault_latency(struct uhmm_dmirror *d)
{
	double v[LAT_REPS];
	char mirror[PAGE];

	for (int i = 0; i < LAT_REPS; i++) {
		char *p = map_buf(PAGE);
		double t;

		dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, 1);
		t = now_s();
		*(volatile char *)p;
		v[i] = (now_s() - t) * 1e6;
		munmap(p, PAGE);
	}
	return summarize("one CPU fault-back (uhmm)", "us", v, LAT_REPS);
}

/*
 * The library's fault paths in a process of their own, set up before its
 * mm exists. A fork()ed child cannot measure migrations: the memory uhmm
 * and the reference device reserved in the parent is shared copy-on-write
 * with it, and UFFDIO_MOVE refuses shared pages (every move falls back to a
 * copy: 4-5x slower). So the child executes this program again
 * ("uhmm bench --child HOW FD"), which starts with fresh memory.
 * CHILD_ONE_CPU binds it to this CPU first, service threads included: no
 * thread of this mm runs elsewhere, and what is left is the service's cost
 * without where the scheduler puts the threads (the row to read against
 * the bare round trip on the same CPU). CHILD_IN_THREAD serves faults in
 * the faulting thread (uhmm_set_fault_mode()). With CHILD_ALL the child
 * runs the reference device's migrations and sequential scan (out[2..4])
 * first, as the parent does on its fresh mm (run after the fault loops, the
 * same migrations were 4-5x slower: a process's first round trips of a
 * buffer cost more, not yet understood), then the random fault-back
 * (out[1]); then the lone fault-back (out[0]).
 */
enum { CHILD_ONE_CPU = 1, CHILD_IN_THREAD = 2, CHILD_ALL = 4 };

static int child_results(unsigned int how)
{
	return (how & CHILD_ALL) ? 5 : 1;
}

static int bench_child_main(unsigned int how, size_t size, int fd)
{
	struct result out[5];
	ssize_t bytes = (ssize_t)(child_results(how) * sizeof(out[0]));
	struct uhmm_dmirror *d;

	if (((how & CHILD_IN_THREAD) && uhmm_set_fault_mode(UHMM_FAULTS_IN_THREAD)) || uhmm_dmirror_open(0, &d))
		return 1;
	if (how & CHILD_ALL) {
		bench_migrate(d, size, &out[2]);
		out[1] = bench_random_fault_back(d, size);
	}
	out[0] = bench_fault_latency(d);
	uhmm_dmirror_close(d);
	return write(fd, out, (size_t)bytes) == bytes && !bench_failures ? 0 : 1;
}

static void bench_in_child(unsigned int how, size_t size, struct result *out, const char *const *names)
{
	int n = child_results(how), fds[2], status = 0, cpu = sched_getcpu();
	ssize_t bytes = (ssize_t)(n * sizeof(*out));
	pid_t pid;

	for (int i = 0; i < n; i++)
		out[i] = (struct result){ names[i], i < 2 ? "us" : "GB/s", 0, 0, 0 };
	if (cpu < 0 || pipe(fds)) {
		bench_failed("a child's fault paths: no CPU or no pipe");
		return;
	}
	pid = fork();
	if (pid == 0) {
		char how_s[16], size_s[32], fd_s[16];
		cpu_set_t one;

		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if ((how & CHILD_ONE_CPU) && sched_setaffinity(0, sizeof(one), &one))
			_exit(1);
		snprintf(how_s, sizeof(how_s), "%u", how);
		snprintf(size_s, sizeof(size_s), "%zu", size);
		snprintf(fd_s, sizeof(fd_s), "%d", fds[1]);
		close(fds[0]);
		execl("/proc/self/exe", "uhmm", "bench", "--child", how_s, size_s, fd_s, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	if (pid < 0 || read(fds[0], out, (size_t)bytes) != bytes || waitpid(pid, &status, 0) != pid ||
	    !WIFEXITED(status) || WEXITSTATUS(status))
		bench_failed("a child's fault paths: the child failed");
	close(fds[0]);
	for (int i = 0; i < n; i++)	/* the child's pointers point into its own image */
		out[i] = (struct result){ names[i], i < 2 ? "us" : "GB/s", out[i].med, out[i].min, out[i].max };
}

/* ---- the bare mechanism: a userfaultfd MISSING fault served by UFFDIO_COPY ---- */

struct bare {
	int uffd;
	int stop;
	char src[PAGE] __attribute__((aligned(4096)));
};

static void *bare_handler(void *arg)
{
	struct bare *b = arg;

	while (!__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p = { .fd = b->uffd, .events = POLLIN };
		struct uffd_msg m;

		if (poll(&p, 1, 50) <= 0 || read(b->uffd, &m, sizeof(m)) != sizeof(m))
			continue;
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = { .dst = m.arg.pagefault.address & ~(PAGE - 1),
					 .src = (uintptr_t)b->src, .len = PAGE };
		ioctl(b->uffd, UFFDIO_COPY, &c);
	}
	return NULL;
}

static int bare_open(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */);
	return fd;
}

enum placement { SCHEDULER, SAME_CPU, OTHER_CPU };
static const char *const placement_name[] = {
	"bare userfaultfd round trip (scheduler-placed)",
	"bare userfaultfd round trip, same CPU",
	"bare userfaultfd round trip, other CPU",
};

static struct result bench_bare_uffd(enum placement where)
{
	static struct bare b;
	struct uffdio_api api = { .api = UFFD_API };
	double v[LAT_REPS];
	pthread_t t;
	char *region = map_buf(LAT_REPS * PAGE);
	cpu_set_t one, all;

	memset(v, 0, sizeof(v));
	b.uffd = bare_open();
	b.stop = 0;
	if (b.uffd < 0 || ioctl(b.uffd, UFFDIO_API, &api)) {
		fprintf(stderr, "bench: no userfaultfd for the bare round trip\n");
		return summarize(placement_name[where], "us", v, 1);
	}
	madvise(region, LAT_REPS * PAGE, MADV_DONTNEED);
	struct uffdio_register reg = { .range = { (uintptr_t)region, LAT_REPS * PAGE },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	ioctl(b.uffd, UFFDIO_REGISTER, &reg);
	sched_getaffinity(0, sizeof(all), &all);
	int cpu = sched_getcpu();

	if (where != SCHEDULER) {	/* the faulting thread stays on its CPU */
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		sched_setaffinity(0, sizeof(one), &one);
	}
	pthread_create(&t, NULL, bare_handler, &b);	/* inherits the affinity */
	if (where == OTHER_CPU && CPU_COUNT(&all) > 1) {
		cpu_set_t other = all;

		CPU_CLR(cpu, &other);
		pthread_setaffinity_np(t, sizeof(other), &other);
	}
	usleep(1000);
	for (int i = 0; i < LAT_REPS; i++) {
		double s = now_s();

		*(volatile char *)(region + i * PAGE);
		v[i] = (now_s() - s) * 1e6;
	}
	__atomic_store_n(&b.stop, 1, __ATOMIC_RELEASE);
	pthread_join(t, NULL);
	sched_setaffinity(0, sizeof(all), &all);
	close(b.uffd);
	munmap(region, LAT_REPS * PAGE);
	return summarize(placement_name[where], "us", v, LAT_REPS);
}

/* ---- mirroring: device reads and snapshots ---- */

static char *map_thp_buf(size_t size, bool thp);
static long thp_read_pct = -1;	/* of the THP range bench_device_read() read, in the first repetition */

/*
 * Device READ of a fresh range (uhmm_range_fault() fills the device page
 * table), then again (hits), and the raw process_vm_readv() the device
 * reads system pages with, on the same pages; then a READ of the same
 * range once it is on the device (device memory to the caller's buffer).
 * The range is of 4 KiB pages, or THP-backed (2 MiB-aligned, MADV_HUGEPAGE)
 * with @thp. @out: first, hits, process_vm_readv, device pages, memcpy
 * (from the range into the same buffer the READ writes).
 */
static void bench_device_read(struct uhmm_dmirror *d, size_t size, bool thp, struct result *out)
{
	char *dst = map_buf(size), *scratch = map_buf(size);
	double first[REPS], hits[REPS], pvr[REPS], dev[REPS], mc[REPS];

	for (int i = 0; i < REPS; i++) {
		char *range = thp ? map_thp_buf(size, true) : map_buf(size);	/* new to the device each time */
		struct iovec local = { dst, size }, remote = { range, size };
		double t = now_s();

		if (thp && i == 0) {
			long kib = smaps_thp_kib(range);

			thp_read_pct = kib < 0 ? -1 : kib * 1024 * 100 / (long)size;	/* -1: smaps unreadable */
		}
		memcpy(dst, range, size);
		mc[i] = (double)size / (now_s() - t) / 1e9;
		t = now_s();
		if (dm(d, UHMM_DMIRROR_READ, range, dst, size / PAGE))
			bench_failed("READ failed");
		first[i] = (double)size / (now_s() - t) / 1e9;
		/*
		 * Whatever reads the range first after the fault pass runs
		 * ~15% slower, the raw process_vm_readv() as much as a READ:
		 * both are timed after one untimed READ.
		 */
		dm(d, UHMM_DMIRROR_READ, range, dst, size / PAGE);
		t = now_s();
		dm(d, UHMM_DMIRROR_READ, range, dst, size / PAGE);
		hits[i] = (double)size / (now_s() - t) / 1e9;
		t = now_s();
		if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)size)
			perror("bench: process_vm_readv");
		pvr[i] = (double)size / (now_s() - t) / 1e9;
		dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, range, scratch, size / PAGE);
		t = now_s();
		if (dm(d, UHMM_DMIRROR_READ, range, dst, size / PAGE))
			bench_failed("READ of device pages failed");
		dev[i] = (double)size / (now_s() - t) / 1e9;
		munmap(range, size);
	}
	out[0] = summarize(thp ? "device READ, first, THP range" : "device READ, first (range_fault + copy)", "GB/s",
			   first, REPS);
	out[1] = summarize(thp ? "device READ, page-table hits, THP range" : "device READ, page-table hits", "GB/s",
			   hits, REPS);
	out[2] = summarize(thp ? "raw process_vm_readv, THP range" : "raw process_vm_readv of the same pages", "GB/s",
			   pvr, REPS);
	out[3] = summarize(thp ? "device READ of device pages, THP range" : "device READ of device-resident pages",
			   "GB/s", dev, REPS);
	out[4] = summarize(thp ? "memcpy from the THP range" : "memcpy from the range", "GB/s", mc, REPS);
	munmap(dst, size);
	munmap(scratch, size);
}

static bool nop_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *r,
			   unsigned long seq);
static const struct uhmm_interval_notifier_ops nop_ops;

/* A raw PAGEMAP_SCAN of [p, p + size) asking what uhmm asks; returns the regions seen. */
static long raw_pagemap_scan(int fd, char *p, size_t size)
{
	struct page_region vec[128];
	struct pm_scan_arg arg = {
		.size = sizeof(arg), .start = (uintptr_t)p, .end = (uintptr_t)p + size,
		.vec = (uintptr_t)vec, .vec_len = 128,
		.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		/* what uhmm asks of a private anonymous range (no PAGE_IS_FILE: none can be) */
		.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE,
	};
	long total = 0;

	while (arg.start < arg.end) {
		long n = ioctl(fd, PAGEMAP_SCAN, &arg);

		if (n < 0)
			return -1;
		total += n;
		if (arg.walk_end <= arg.start)
			break;
		arg.start = arg.walk_end;
	}
	return total;
}

/*
 * The exclusive bit of each page (pagemap bit 56), read with pread() in
 * batches of 512 entries: PAGEMAP_SCAN cannot say it, and a snapshot of
 * a private writable range needs it for write permission.
 */
static int raw_pagemap_pread(int fd, char *p, size_t size)
{
	static uint64_t ent[512];

	for (size_t off = 0; off < size; off += sizeof(ent) / sizeof(ent[0]) * PAGE) {
		size_t n = (size - off) / PAGE < 512 ? (size - off) / PAGE : 512;
		off_t at = (off_t)(((uintptr_t)p + off) / PAGE * sizeof(uint64_t));

		if (pread(fd, ent, n * sizeof(uint64_t), at) != (ssize_t)(n * sizeof(uint64_t)))
			return -1;
	}
	return 0;
}

/*
 * uhmm_range_fault() snapshot (no fault) of a filled buffer vs the raw
 * calls under it, in ms: out[0] uhmm, out[1] PAGEMAP_SCAN, @pread the
 * pread() of the exclusive bits.
 */
static void bench_snapshot(struct uhmm_mm *mm, size_t size, struct result *out, struct result *pread_out)
{
	struct uhmm_interval_notifier sub;
	uint64_t *pfns = calloc(size / PAGE, sizeof(*pfns));
	char *p = map_buf(size);
	struct uhmm_range r = { .notifier = &sub, .start = (uintptr_t)p, .end = (uintptr_t)p + size,
				.hmm_pfns = pfns, .default_flags = 0 };
	int fd = open("/proc/self/pagemap", O_RDONLY);
	double snap[REPS], raw[REPS], rd[REPS];

	uhmm_interval_notifier_insert(&sub, mm, r.start, size, &nop_ops);
	for (int i = 0; i < REPS; i++) {
		double t = now_s();
		int ret;

		do {	/* -EBUSY: an invalidation ran meanwhile; a driver retries, and pays for it */
			r.notifier_seq = uhmm_interval_read_begin(&sub);
			ret = uhmm_range_fault(&r);
		} while (ret == -EBUSY);
		if (ret)
			bench_failed("range_fault failed: %s", strerror(-ret));
		snap[i] = (now_s() - t) * 1e3;
		t = now_s();
		if (raw_pagemap_scan(fd, p, size) < 0)
			fprintf(stderr, "bench: PAGEMAP_SCAN failed (kernel < 6.7?)\n");
		raw[i] = (now_s() - t) * 1e3;
		t = now_s();
		if (raw_pagemap_pread(fd, p, size) < 0)
			bench_failed("pread of /proc/self/pagemap failed");
		rd[i] = (now_s() - t) * 1e3;
	}
	out[0] = summarize("uhmm_range_fault snapshot (no fault)", "ms", snap, REPS);
	out[1] = summarize("raw PAGEMAP_SCAN of the same range", "ms", raw, REPS);
	*pread_out = summarize("raw pread of its pagemap entries", "ms", rd, REPS);
	uhmm_interval_notifier_remove(&sub);
	close(fd);
	munmap(p, size);
	free(pfns);
}

/* ---- the cost of tracing ---- */

static bool nop_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *r,
			   unsigned long seq)
{
	(void)r;
	uhmm_interval_set_seq(sub, seq);
	return true;
}
static const struct uhmm_interval_notifier_ops nop_ops = { .invalidate = nop_invalidate };

/* uhmm_range_fault() of one present page: the cheapest traced call. */
static struct result bench_range_fault_1(struct uhmm_mm *mm, const char *name)
{
	struct uhmm_interval_notifier sub;
	double v[LAT_REPS * 10];
	char *p = map_buf(PAGE);
	uint64_t pfn;
	struct uhmm_range r = { .notifier = &sub, .start = (uintptr_t)p, .end = (uintptr_t)p + PAGE,
				.hmm_pfns = &pfn, .default_flags = UHMM_PFN_REQ_FAULT };

	uhmm_interval_notifier_insert(&sub, mm, r.start, PAGE, &nop_ops);
	for (int i = 0; i < LAT_REPS * 10; i++) {
		double t = now_s();

		r.notifier_seq = uhmm_interval_read_begin(&sub);
		uhmm_range_fault(&r);
		v[i] = (now_s() - t) * 1e6;
	}
	uhmm_interval_notifier_remove(&sub);
	munmap(p, PAGE);
	return summarize(name, "us", v, LAT_REPS * 10);
}

/*
 * What a trace point costs when tracing is off: a relaxed atomic load and a
 * branch never taken, measured in a loop (ns), against range_fault() with
 * tracing off and on.
 */
static void bench_trace(struct result *out)
{
	static _Atomic bool flag;
	char path[] = "/tmp/uhmm-bench-trace-XXXXXX";
	int fd = mkstemp(path);
	struct uhmm_mm *mm;
	double v[REPS];
	long hits = 0;

	for (int r = 0; r < REPS; r++) {
		double t = now_s();

		for (int i = 0; i < 10000000; i++)
			if (__builtin_expect(atomic_load_explicit(&flag, memory_order_relaxed), 0))
				hits++;
		v[r] = (now_s() - t) / 1e7 * 1e9;	/* ns per trace point */
	}
	out[0] = summarize("trace point, tracing off (load + branch)", "ns", v, REPS);
	if (hits || fd < 0 || uhmm_mm_get(&mm)) {
		out[1] = out[2] = (struct result){ "range_fault (no mm)", "us", 0, 0, 0 };
		return;
	}
	close(fd);
	out[1] = bench_range_fault_1(mm, "range_fault 1 page, tracing off");
	uhmm_trace_start(path);
	out[2] = bench_range_fault_1(mm, "range_fault 1 page, tracing on");
	uhmm_trace_stop();
	unlink(path);
	uhmm_mm_put(mm);
}

/* ---- THP: the kernel's benchmark_thp_migration sizes, with and without THP ---- */

#define THP_SIZE (2UL << 20)

/* A 2 MiB-aligned buffer, THP allowed or not, filled (THP-backed where the kernel could). */
static char *map_thp_buf(size_t size, bool thp)
{
	size_t span = size + THP_SIZE;
	char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *p;

	if (raw == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	p = (char *)(((uintptr_t)raw + THP_SIZE - 1) & ~(THP_SIZE - 1));
	if (p > raw)
		munmap(raw, (size_t)(p - raw));
	munmap(p + size, (size_t)(raw + span - p - size));
	madvise(p, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	memset(p, 0x5a, size);
	return p;
}

struct thp_row {
	size_t size;
	long thp_pct;		/* of the THP-allowed buffer, before the first migration */
	struct result dev[2], sys[2], scan[2];	/* [0] THP allowed, [1] base pages */
};

static void bench_thp_size(struct uhmm_dmirror *d, size_t size, struct thp_row *row)
{
	int reps = size >= (64UL << 20) ? 3 : REPS;
	char *mirror = map_buf(size), sink = 0;

	row->size = size;
	for (int mode = 0; mode < 2; mode++) {
		double to_dev[REPS], to_sys[REPS], scan[REPS];

		for (int i = 0; i < reps; i++) {
			char *buf = map_thp_buf(size, mode == 0);
			double t;

			if (mode == 0 && i == 0) {
				long kib = smaps_thp_kib(buf);

				row->thp_pct = kib < 0 ? -1 : kib * 1024 * 100 / (long)size;
			}
			round_trip(d, buf, mirror, size, &to_dev[i], &to_sys[i]);
			munmap(buf, size);
			/* a fresh buffer to the device again, then the CPU reads it back page by page */
			buf = map_thp_buf(size, mode == 0);
			dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, mirror, size / PAGE);
			t = now_s();
			for (size_t off = 0; off < size; off += PAGE)
				sink = (char)(sink + ((volatile char *)buf)[off]);
			scan[i] = (double)size / (now_s() - t) / 1e9;
			munmap(buf, size);
		}
		row->dev[mode] = summarize(mode ? "base" : "THP", "GB/s", to_dev, reps);
		row->sys[mode] = summarize(mode ? "base" : "THP", "GB/s", to_sys, reps);
		row->scan[mode] = summarize(mode ? "base" : "THP", "GB/s", scan, reps);
	}
	munmap(mirror, size);
	(void)sink;
}

static int cmd_bench_thp(bool json)
{
	static const size_t kib[] = { 512, 1024, 2048, 4096, 8192, 16384, 262144 };	/* the kernel's sizes */
	enum { N = sizeof(kib) / sizeof(kib[0]) };
	struct thp_row rows[N];
	struct result mc[N];
	struct uhmm_dmirror *d;
	int ret = uhmm_dmirror_open(0, &d);

	if (ret) {
		fprintf(stderr, "uhmm bench: cannot open the reference device: %s\n", strerror(-ret));
		return 1;
	}
	for (int i = 0; i < N; i++) {
		mc[i] = bench_memcpy(kib[i] << 10);
		bench_thp_size(d, kib[i] << 10, &rows[i]);
	}
	uhmm_dmirror_close(d);
	if (json) {
		printf("{\n  \"thp\": [\n");
		for (int i = 0; i < N; i++)
			printf("    {\"size_kib\": %zu, \"thp_percent\": %ld, \"memcpy\": %.4f, "
			       "\"to_device_thp\": %.4f, \"to_device_base\": %.4f, "
			       "\"to_system_thp\": %.4f, \"to_system_base\": %.4f, "
			       "\"fault_back_scan_thp\": %.4f, \"fault_back_scan_base\": %.4f}%s\n",
			       kib[i], rows[i].thp_pct, mc[i].med, rows[i].dev[0].med, rows[i].dev[1].med,
			       rows[i].sys[0].med, rows[i].sys[1].med, rows[i].scan[0].med, rows[i].scan[1].med,
			       i + 1 < N ? "," : "");
		printf("  ]\n}\n");
		return 0;
	}
	printf("uhmm bench --thp: the kernel's benchmark_thp_migration sizes; GB/s, median of %d (3 from 64 MiB)\n"
	       "THP: 2 MiB-aligned buffer with MADV_HUGEPAGE (%% of it THP-backed before migrating); base: MADV_NOHUGEPAGE\n\n",
	       REPS);
	printf("%9s %5s %8s | %8s %8s %5s | %8s %8s %5s | %8s %8s %5s\n", "size", "THP%", "memcpy", "dev THP",
	       "dev base", "ratio", "sys THP", "sys base", "ratio", "scan THP", "scanbase", "ratio");
	for (int i = 0; i < N; i++)
		printf("%7zuKi %5ld %8.2f | %8.2f %8.2f %5.2f | %8.2f %8.2f %5.2f | %8.2f %8.2f %5.2f\n", kib[i],
		       rows[i].thp_pct, mc[i].med, rows[i].dev[0].med, rows[i].dev[1].med,
		       rows[i].dev[0].med / rows[i].dev[1].med, rows[i].sys[0].med, rows[i].sys[1].med,
		       rows[i].sys[0].med / rows[i].sys[1].med, rows[i].scan[0].med, rows[i].scan[1].med,
		       rows[i].scan[0].med / rows[i].scan[1].med);
	return 0;
}

/* ---- scaling: buffer sizes and faulting threads ---- */

struct scan_slice {
	char *p;
	size_t bytes;
	pthread_barrier_t *start;
};

static void *scan_slice(void *arg)
{
	struct scan_slice *s = arg;
	volatile char sink = 0;

	pthread_barrier_wait(s->start);
	for (size_t off = 0; off < s->bytes; off += PAGE)
		sink = (char)(sink + s->p[off]);	/* each first touch faults back */
	return NULL;
}

/* @threads threads each scan a slice of a device-resident @size buffer: aggregate GB/s. */
static double threads_scan(struct uhmm_dmirror *d, char *buf, char *mirror, size_t size, int threads)
{
	struct scan_slice s[4];
	pthread_t t[4];
	pthread_barrier_t start;
	double t0;

	dm(d, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, mirror, size / PAGE);
	pthread_barrier_init(&start, NULL, (unsigned int)threads + 1);
	for (int i = 0; i < threads; i++) {
		s[i] = (struct scan_slice){ buf + size / (size_t)threads * (size_t)i, size / (size_t)threads, &start };
		pthread_create(&t[i], NULL, scan_slice, &s[i]);
	}
	pthread_barrier_wait(&start);
	t0 = now_s();
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	t0 = now_s() - t0;
	pthread_barrier_destroy(&start);
	return (double)size / t0 / 1e9;
}

/*
 * #5's scaling figures: migration both ways, the CPU's fault-back scan and
 * the range_fault snapshot for buffers of 1 MiB to 4 GiB (ns per page: flat
 * if the cost is linear in the size), and the fault-back scan with 1, 2
 * and 4 threads on 2 CPUs.
 */
static int cmd_bench_scaling(bool json)
{
	static const size_t mib[] = { 1, 16, 256, 1024, 4096 };
	enum { N = sizeof(mib) / sizeof(mib[0]) };
	double dev[N], sys[N], scan[N], snap[N], raw[N], mc[N], thr[3];
	struct uhmm_dmirror *d;
	struct uhmm_mm *mm;
	int ret = uhmm_dmirror_open(0, &d);

	if (ret || uhmm_mm_get(&mm)) {
		fprintf(stderr, "uhmm bench: cannot open the reference device: %s\n", strerror(-ret));
		return 1;
	}
	for (int i = 0; i < N; i++) {
		size_t size = mib[i] << 20;
		int reps = mib[i] >= 4096 ? 1 : 3;
		double warm_dev, warm_sys;
		struct result r[3], sn[2], pr;
		char *buf = map_buf(size), *mirror = map_buf(size);
		double vd[3], vs[3], vc[3];

		/* untimed: the first round trip maps the device memory and uhmm's staging memory fresh */
		round_trip(d, buf, mirror, size, &warm_dev, &warm_sys);
		for (int k = 0; k < reps; k++)
			vc[k] = round_trip_and_scan(d, buf, mirror, size, &vd[k], &vs[k]);
		r[0] = summarize("", "", vd, reps);
		r[1] = summarize("", "", vs, reps);
		r[2] = summarize("", "", vc, reps);
		dev[i] = r[0].med;
		sys[i] = r[1].med;
		scan[i] = r[2].med;
		munmap(mirror, size);
		munmap(buf, size);
		bench_snapshot(mm, size, sn, &pr);
		snap[i] = sn[0].med;
		raw[i] = sn[1].med;
		mc[i] = mib[i] >= 1024 ? bench_memcpy(256 << 20).med : bench_memcpy(size).med;
	}
	{
		size_t size = 256UL << 20;
		char *buf = map_buf(size), *mirror = map_buf(size);

		for (int i = 0; i < 3; i++)
			thr[i] = threads_scan(d, buf, mirror, size, 1 << i);
		munmap(buf, size);
		munmap(mirror, size);
	}
	uhmm_mm_put(mm);
	uhmm_dmirror_close(d);
	if (json) {
		printf("{\n  \"sizes\": [\n");
		for (int i = 0; i < N; i++)
			printf("    {\"mib\": %zu, \"memcpy\": %.4f, \"to_device\": %.4f, \"to_system\": %.4f, "
			       "\"fault_back_scan\": %.4f, \"snapshot_ms\": %.4f, \"pagemap_scan_ms\": %.4f}%s\n", mib[i],
			       mc[i], dev[i], sys[i], scan[i], snap[i], raw[i], i + 1 < N ? "," : "");
		printf("  ],\n  \"threads\": {\"1\": %.4f, \"2\": %.4f, \"4\": %.4f}\n}\n", thr[0], thr[1], thr[2]);
		return 0;
	}
	printf("uhmm bench --scaling: the reference device, 4 KiB pages; GB/s (median of 3, 1 at 4 GiB, after an\n"
	       "untimed round trip), and ns per page (flat = linear in the size)\n\n");
	printf("%7s %8s | %8s %7s | %8s %7s | %8s %7s | %9s %7s | %9s %7s\n", "size", "memcpy", "to dev", "ns/pg",
	       "to sys", "ns/pg", "scan", "ns/pg", "snapshot", "ns/pg", "PM_SCAN", "ns/pg");
	for (int i = 0; i < N; i++) {
		double pages = (double)(mib[i] << 20) / PAGE;

		printf("%5zuMi %8.2f | %8.2f %7.0f | %8.2f %7.0f | %8.2f %7.0f | %7.2fms %7.1f | %7.2fms %7.1f\n", mib[i],
		       mc[i], dev[i], PAGE / dev[i], sys[i], PAGE / sys[i], scan[i], PAGE / scan[i], snap[i],
		       snap[i] * 1e6 / pages, raw[i], raw[i] * 1e6 / pages);
	}
	printf("\nCPU fault-back scan of 256 MiB split among threads (2 CPUs), aggregate GB/s:\n"
	       "  1 thread %.2f   2 threads %.2f   4 threads %.2f\n", thr[0], thr[1], thr[2]);
	return 0;
}

/* ---- output ---- */

static void print_table(const struct result *r, int n)
{
	printf("%-46s %10s %10s %10s  %s\n", "path", "median", "min", "max", "unit");
	for (int i = 0; i < n; i++)
		printf("%-46s %10.2f %10.2f %10.2f  %s\n", r[i].name, r[i].med, r[i].min, r[i].max, r[i].unit);
}

static void print_json(const struct result *r, int n, const double *ratio, const char *const *rname, int nr)
{
	printf("{\n  \"results\": [\n");
	for (int i = 0; i < n; i++)
		printf("    {\"path\": \"%s\", \"unit\": \"%s\", \"median\": %.4f, \"min\": %.4f, \"max\": %.4f}%s\n",
		       r[i].name, r[i].unit, r[i].med, r[i].min, r[i].max, i + 1 < n ? "," : "");
	printf("  ],\n  \"ratios\": {\n");
	for (int i = 0; i < nr; i++)
		printf("    \"%s\": %.4f%s\n", rname[i], ratio[i], i + 1 < nr ? "," : "");
	printf("  }\n}\n");
}

static int bench_main(int argc, char **argv)
{
	size_t mib = 64;
	bool json = false, thp = false, scaling = false;
	struct uhmm_dmirror *d;
	static const char *const one_cpu_names[] = { "one CPU fault-back, process on one CPU (uhmm)" };
	static const char *const in_thread_names[] = {
		"one CPU fault-back, faults in thread (uhmm)", "CPU random fault-back, faults in thread",
		"migrate to device, faults in thread", "migrate to system, faults in thread",
		"CPU sequential fault-back scan, faults in thread",
	};
	struct result r[34], rd[5];
	struct uhmm_mm *mm;
	int ret;

	if (argc == 5 && strcmp(argv[1], "--child") == 0)	/* bench_in_child()'s process */
		return bench_child_main((unsigned int)strtoul(argv[2], NULL, 10), strtoul(argv[3], NULL, 10),
					atoi(argv[4]));
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else if (strcmp(argv[i], "--thp") == 0)
			thp = true;
		else if (strcmp(argv[i], "--scaling") == 0)
			scaling = true;
		else if (strcmp(argv[i], "--size-mib") == 0 && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 10);
		else {
			fprintf(stderr, "usage: uhmm bench [--json] [--size-mib N | --thp | --scaling]\n");
			return 2;
		}
	}
	if (thp)
		return cmd_bench_thp(json);
	if (scaling)
		return cmd_bench_scaling(json);
	ret = uhmm_dmirror_open(0, &d);
	if (ret) {
		fprintf(stderr, "uhmm bench: cannot open the reference device: %s\n", strerror(-ret));
		return 1;
	}
	r[0] = bench_memcpy(mib << 20);
	bench_migrate(d, mib << 20, &r[1]);
	r[4] = bench_fault_latency(d);
	bench_in_child(CHILD_ONE_CPU, mib << 20, &r[25], one_cpu_names);
	bench_in_child(CHILD_IN_THREAD | CHILD_ALL, mib << 20, &r[29], in_thread_names);
	r[5] = bench_bare_uffd(SCHEDULER);
	r[6] = bench_bare_uffd(SAME_CPU);
	r[7] = bench_bare_uffd(OTHER_CPU);
	r[13] = bench_random_fault_back(d, mib << 20);
	bench_device_read(d, mib << 20, false, rd);
	r[14] = rd[0], r[15] = rd[1], r[20] = rd[2], r[21] = rd[3];
	bench_device_read(d, mib << 20, true, rd);	/* hits and the raw call, on THP */
	r[22] = rd[1], r[23] = rd[2], r[24] = rd[4];
	if (uhmm_mm_get(&mm) == 0) {
		bench_snapshot(mm, mib << 20, &r[16], &r[28]);
		uhmm_mm_put(mm);
	}
	uhmm_dmirror_close(d);
	bench_raw_migrate(mib << 20, &r[8], false);
	bench_raw_migrate(mib << 20, &r[18], true);
	r[26] = bench_raw_uffd_move(mib << 20);
	r[27] = bench_raw_fault_back_scan(mib << 20);
	bench_trace(&r[10]);

	const char *rname[] = {
		"migrate_to_device_vs_memcpy", "migrate_to_system_vs_memcpy",
		"sequential_fault_back_vs_memcpy", "fault_back_vs_bare_uffd_scheduler",
		"fault_back_vs_bare_uffd_same_cpu", "fault_back_vs_bare_uffd_other_cpu",
		"uhmm_migrate_vma_to_device_vs_memcpy", "uhmm_migrate_vma_to_system_vs_memcpy",
		"trace_off_cost_per_range_fault", "trace_on_vs_off_range_fault",
		"device_read_first_vs_memcpy", "device_read_hits_vs_memcpy", "range_fault_snapshot_vs_pagemap_scan",
		"uhmm_migrate_vma_zero_copy_to_device_vs_memcpy", "uhmm_migrate_vma_zero_copy_to_system_vs_memcpy",
		"device_read_hits_vs_process_vm_readv", "process_vm_readv_vs_memcpy",
		"device_read_device_pages_vs_memcpy", "device_read_hits_thp_vs_memcpy_thp",
		"device_read_hits_thp_vs_process_vm_readv", "fault_back_process_on_one_cpu_vs_bare_uffd_same_cpu",
		"uhmm_migrate_vma_zero_copy_to_device_vs_raw_uffdio_move",
		"uhmm_migrate_vma_zero_copy_to_system_vs_raw_uffdio_move",
		"sequential_fault_back_vs_raw_fault_back", "raw_fault_back_vs_memcpy",
		"range_fault_snapshot_vs_pagemap_scan_and_pread",
		"fault_back_in_thread_vs_bare_uffd_same_cpu", "fault_back_in_thread_vs_service",
		"random_fault_back_in_thread_vs_service", "migrate_to_device_in_thread_vs_memcpy",
		"migrate_to_system_in_thread_vs_memcpy", "sequential_fault_back_in_thread_vs_memcpy",
	};
	double ratio[] = {
		r[1].med / r[0].med, r[2].med / r[0].med, r[3].med / r[0].med,
		r[4].med / r[5].med, r[4].med / r[6].med, r[4].med / r[7].med,
		r[8].med / r[0].med, r[9].med / r[0].med,
		/* range_fault passes 1 trace point: its off cost as a share of the call */
		r[10].med / 1e3 / r[11].med, r[12].med / r[11].med,
		r[14].med / r[0].med, r[15].med / r[0].med, r[16].med / r[17].med,
		r[18].med / r[0].med, r[19].med / r[0].med,
		r[15].med / r[20].med, r[20].med / r[0].med, r[21].med / r[0].med,
		r[22].med / r[24].med, r[22].med / r[23].med, r[25].med / r[6].med,
		r[18].med / r[26].med, r[19].med / r[26].med,
		r[3].med / r[27].med, r[27].med / r[0].med,
		r[16].med / (r[17].med + r[28].med),
		r[29].med / r[6].med, r[29].med / r[4].med, r[30].med / r[13].med,
		r[31].med / r[0].med, r[32].med / r[0].med, r[33].med / r[0].med,
	};
	int nr = (int)(sizeof(ratio) / sizeof(ratio[0])), nres = (int)(sizeof(r) / sizeof(r[0]));

	if (json) {
		print_json(r, nres, ratio, rname, nr);
		return 0;
	}
	printf("uhmm bench: %zu MiB buffers, 4 KiB pages, median of %d (latencies: of %d)\n", mib, REPS, LAT_REPS);
	print_table(r, nres);
	printf("(the THP range was %ld%% THP-backed)\n", thp_read_pct);
	printf("\nratios (uhmm / raw mechanism, same run):\n");
	for (int i = 0; i < nr; i++)
		printf("  %-48s %.4f\n", rname[i], ratio[i]);
	return 0;
}

int cmd_bench(int argc, char **argv)
{
	int ret = bench_main(argc, argv);

	if (ret == 0 && bench_failures) {
		fprintf(stderr, "uhmm bench: %d operations failed: the figures above are not to be trusted\n",
			bench_failures);
		return 1;
	}
	return ret;
}
