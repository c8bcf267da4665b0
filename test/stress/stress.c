// SPDX-License-Identifier: MIT
/*
 * The model-checked stress test.
 *
 * Each owner thread has its own regions and is the only one that changes
 * their values, so a sequential model per region predicts every value any
 * read must see (CPU loads, device READ). The owners share the two devices,
 * uhmm's service thread, its tables and the notifier list with each other
 * and with a chaos thread that runs only value-preserving operations on
 * anybody's regions at random (migrations both ways by both devices,
 * RELEASE, device reads, device-exclusive access): those race with the owners' stores, madvise,
 * mmap(MAP_FIXED) over a region, mremap, mprotect and fork, which is where data could get lost.
 *
 * Values: page contents are a pattern of a 32-bit value (0 = zeros), so a
 * partly copied or stale page shows. A mismatch prints the seed, the page
 * and its last operations; if the page holds an older value of its own it
 * is counted as a lost write.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm/dmirror.h"
#include "stress.h"
#include "../../src/internal.h"	/* what uhmm holds for a mismatched page (describe_page()) */
#include "../../tools/smaps.h"

#define PAGE 4096UL
#define WORDS (PAGE / 4)
#define HIST 8
#define MAX_SPAN 8
/*
 * Device instances: devices 0 and 1, and a second instance of device 0.
 * Two instances of one device share its pagemap owner: each sees the
 * other's pages as its own device's, which is where a driver skipping
 * "its own" migration events goes wrong (docs/architecture.md, section 10).
 */
#define NDEV 3

struct hist {
	long op;		/* owner's operation number */
	char what;		/* operation code, see op_names */
	uint32_t value;		/* the page's model value after it */
};

struct region {
	_Atomic(char *) base;	/* the chaos thread reads it racily: a stale address only fails */
	uint32_t *val;		/* model: value per page */
	struct hist *hist;	/* HIST per page, a ring */
	unsigned char *nh;	/* entries written per page */
};

struct owner {
	int id;
	uint64_t rng;
	struct region *reg;
	long ops;
	uint32_t next_value;
	char *buf;		/* device I/O buffer, MAX_SPAN pages */
	char *rbuf;		/* a whole region's read-back (OP_UNIT) */
	pthread_t thread;
};

struct stress {
	const struct stress_opts *o;
	struct stress_report *r;
	struct uhmm_dmirror *dev[NDEV];
	struct owner *own;
	atomic_bool stop;
	atomic_long mismatches, lost, unexpected, checks, chaos_ops;
	double deadline;
	pthread_mutex_t print_lock;
};

static const char op_names[] = "SCWRMYLDFPXKEU";	/* see enum op */
enum op { OP_STORE, OP_CHECK, OP_DEV_WRITE, OP_DEV_READ, OP_TO_DEV, OP_TO_SYS, OP_RELEASE,
	  OP_DONTNEED, OP_FRESH, OP_PROTECT, OP_REMAP, OP_FORK, OP_EXCLUSIVE, OP_UNIT, OP_N };
static const int op_weight[OP_N] = { 20, 20, 10, 10, 10, 5, 2, 4, 2, 3, 3, 1, 5, 4 };

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s)	/* splitmix64: reproducible per seed and thread */
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void fill(void *page, uint32_t v)
{
	uint32_t *w = page;

	for (uint32_t i = 0; i < WORDS; i++)
		w[i] = v ? (v * 2654435761u) ^ (i * 0x01000193u) : 0;
}

static bool holds(const void *page, uint32_t v)
{
	const uint32_t *w = page;

	for (uint32_t i = 0; i < WORDS; i++)
		if (w[i] != (v ? (v * 2654435761u) ^ (i * 0x01000193u) : 0))
			return false;
	return true;
}

static size_t region_bytes(const struct stress *s) { return (size_t)s->o->pages * PAGE; }

static void record(struct stress *s, struct owner *w, int ri, int p, enum op what)
{
	struct region *g = &w->reg[ri];
	struct hist *h = &g->hist[p * HIST + g->nh[p] % HIST];

	*h = (struct hist){ w->ops, op_names[what], g->val[p] };
	g->nh[p]++;
	(void)s;
}

/*
 * Where a mismatched page's data could be, for the log: the CPU page table,
 * uhmm's device-private entry, the VMA's userfaultfd registration (smaps
 * "um": missing pages trap, "uw": write-protect) and uhmm's view of it. A
 * CI failure then carries what a rerun of its seed may not reproduce.
 */
static void describe_page(uint64_t addr)
{
	struct uhmm_mm *mm = uhmm_mm_peek();	/* NULL in a fork child */
	uint64_t dp = mm ? uhmm_dp_get(mm, addr) : 0;
	struct uhmm_page *page = DP_PAGE(dp);
	unsigned long lo = 0, hi = 0;
	char flags[160] = "?";
	uint8_t pte = 0;
	int pm = uhmm_pagemap_read(addr, addr + PAGE, &pte, 0);
	bool vma = smaps_field((void *)(uintptr_t)addr, "VmFlags:", flags, sizeof(flags), &lo, &hi) > 0;

	fprintf(stderr, "  state: CPU page table %s; ",
		pm ? "unreadable" : (pte & UHMM_PTE_ZERO) ? "zero page" : (pte & UHMM_PTE_PRESENT) ? "present" :
		(pte & UHMM_PTE_SWAPPED) ? "swap entry" : "none");
	if (!mm)
		fprintf(stderr, "device-private entry unknown (fork child); ");
	else if (page)
		fprintf(stderr, "device-private entry: a page of owner %p%s%s; ", page->pgmap->owner,
			(dp & DP_BUSY) ? ", busy" : "", (dp & DP_DROPPED) ? ", dropped" : "");
	else
		fprintf(stderr, "device-private entry: none%s; ", (dp & DP_BUSY) ? " (claimed)" : "");
	/* smaps VmFlags: "um" missing pages trap to uhmm, "uw" write-protect faults do */
	if (vma)
		fprintf(stderr, "VMA %#lx-%#lx flags%s; ", lo, hi, flags);
	else
		fprintf(stderr, "no VMA; ");
	fprintf(stderr, "uhmm's sets: missing %d\n", mm ? uhmm_mm_is_missing(mm, addr) : -1);
}

static void report_mismatch(struct stress *s, struct owner *w, int ri, int p, const void *page, const char *by)
{
	struct region *g = &w->reg[ri];
	bool lost = false;

	for (int k = 0; k < HIST && k < g->nh[p]; k++)
		lost = lost || holds(page, g->hist[p * HIST + k].value);
	lost = lost || holds(page, 0);
	atomic_fetch_add(&s->mismatches, 1);
	if (lost)
		atomic_fetch_add(&s->lost, 1);
	pthread_mutex_lock(&s->print_lock);
	fprintf(stderr, "stress: MISMATCH seed %llu owner %d region %d page %d at %p (%s read, op %ld): expected value %#x, "
			"found word0 %#x%s\n  history (oldest first):",
		(unsigned long long)s->o->seed, w->id, ri, p, (void *)(atomic_load(&g->base) + (size_t)p * PAGE), by,
		w->ops, g->val[p], *(const uint32_t *)page,
		lost ? " = an older value: LOST WRITE" : "");
	for (int k = g->nh[p] > HIST ? g->nh[p] - HIST : 0; k < g->nh[p]; k++) {
		const struct hist *h = &g->hist[p * HIST + k % HIST];

		fprintf(stderr, " [op %ld %c -> %#x]", h->op, h->what, h->value);
	}
	fputc('\n', stderr);
	describe_page((uintptr_t)(atomic_load(&g->base) + (size_t)p * PAGE));
	pthread_mutex_unlock(&s->print_lock);
}

static void check_pages(struct stress *s, struct owner *w, int ri, int a, int n, const char *mem, const char *by)
{
	for (int p = a; p < a + n; p++) {
		atomic_fetch_add(&s->checks, 1);
		if (!holds(mem + (size_t)(p - a) * PAGE, w->reg[ri].val[p]))
			report_mismatch(s, w, ri, p, mem + (size_t)(p - a) * PAGE, by);
	}
}

static void unexpected(struct stress *s, struct owner *w, const char *what, int ret)
{
	atomic_fetch_add(&s->unexpected, 1);
	pthread_mutex_lock(&s->print_lock);
	fprintf(stderr, "stress: seed %llu owner %d op %ld: %s returned %d (%s)\n", (unsigned long long)s->o->seed,
		w ? w->id : -1, w ? w->ops : -1L, what, ret, strerror(ret < 0 ? -ret : ret));
	pthread_mutex_unlock(&s->print_lock);
}

static int dmcmd(struct stress *s, int d, unsigned int cmd, const char *addr, void *buf, int n)
{
	struct uhmm_dmirror_cmd c = { .addr = (uintptr_t)addr, .ptr = (uintptr_t)buf, .npages = (uint64_t)n };

	return uhmm_dmirror_cmd(s->dev[d], cmd, &c);
}

#define HUGE_SIZE (2UL << 20)

/* THP allowed (huge runs), so that a filled region can be a THP again. */
static void allow_thp(struct stress *s, char *p)
{
	if (s->o->huge)
		(void)madvise(p, region_bytes(s), MADV_HUGEPAGE);
}

/* A region; 2 MiB-aligned in huge runs, so that it can migrate as one unit. */
static char *map_region(struct stress *s)
{
	size_t extra = s->o->huge ? HUGE_SIZE : 0, size = region_bytes(s);
	char *p = mmap(NULL, size + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), *a;

	if (p == MAP_FAILED)
		return NULL;
	if (!extra)
		return p;
	a = (char *)(((uintptr_t)p + extra - 1) & ~(uintptr_t)(extra - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (a + size < p + size + extra)
		munmap(a + size, (size_t)(p + size + extra - (a + size)));
	allow_thp(s, a);
	return a;
}

/* ---- the owners' operations ---- */

/* New values for pages [a, a + n), written by the CPU or through device @d's WRITE. */
static void op_store(struct stress *s, struct owner *w, int ri, int a, int n, bool by_device, int d)
{
	char *base = atomic_load(&w->reg[ri].base);
	uint32_t v[MAX_SPAN];
	int ret;

	for (int p = a; p < a + n; p++) {
		v[p - a] = w->next_value++;
		fill(by_device ? w->buf + (size_t)(p - a) * PAGE : base + (size_t)p * PAGE, v[p - a]);
	}
	if (by_device && (ret = dmcmd(s, d, UHMM_DMIRROR_WRITE, base + (size_t)a * PAGE, w->buf, n)) != 0) {
		/* a failed WRITE may have copied a prefix: ask the pages what they hold */
		if (!(ret == -EFAULT && s->o->efault_ok))
			unexpected(s, w, "device WRITE", ret);
		for (int p = a; p < a + n; p++)
			if (holds(base + (size_t)p * PAGE, v[p - a]))
				w->reg[ri].val[p] = v[p - a];
		return;
	}
	for (int p = a; p < a + n; p++) {
		w->reg[ri].val[p] = v[p - a];
		record(s, w, ri, p, by_device ? OP_DEV_WRITE : OP_STORE);
	}
}

static void op_migrate(struct stress *s, struct owner *w, int ri, int a, int n, enum op what, int d)
{
	char *base = atomic_load(&w->reg[ri].base) + (size_t)a * PAGE;
	unsigned int cmd = what == OP_TO_DEV ? UHMM_DMIRROR_MIGRATE_TO_DEV :
			   what == OP_TO_SYS ? UHMM_DMIRROR_MIGRATE_TO_SYS : UHMM_DMIRROR_RELEASE;
	int ret = dmcmd(s, d, cmd, base, w->buf, n);	/* RELEASE: the range is checked, not used */

	/* the chaos thread may hold or move some of the pages meanwhile */
	if (ret && ret != -ENOENT && ret != -EBUSY && !(ret == -EFAULT && s->o->efault_ok))
		unexpected(s, w, what == OP_TO_DEV ? "MIGRATE_TO_DEV" : what == OP_TO_SYS ? "MIGRATE_TO_SYS" : "RELEASE",
			   ret);
	if (what == OP_TO_DEV && ret == 0)
		check_pages(s, w, ri, a, n, w->buf, "device read-back");
}

static void set_zero(struct stress *s, struct owner *w, int ri, int a, int n, enum op what);

/*
 * A whole region to a device or back: in huge runs a 2 MiB unit when the
 * region is one thing (a THP, empty, or a unit on the device), page by
 * page otherwise. Sometimes the region is discarded first, so that it is
 * empty: CPU stores leave base pages, and a unit would be rare. The
 * device's read-back is checked against the model.
 */
static void op_unit(struct stress *s, struct owner *w, int ri, int d)
{
	char *base = atomic_load(&w->reg[ri].base);
	uint64_t how = rnd(&w->rng) % 6;
	bool to_dev = how >= 2;
	int ret;

	if (how == 5) {
		if (madvise(base, region_bytes(s), MADV_DONTNEED))
			unexpected(s, w, "madvise (region)", -errno);
		set_zero(s, w, ri, 0, s->o->pages, OP_DONTNEED);
	}
	ret = dmcmd(s, d, to_dev ? UHMM_DMIRROR_MIGRATE_TO_DEV : UHMM_DMIRROR_MIGRATE_TO_SYS, base, w->rbuf,
		    s->o->pages);

	if (ret && ret != -ENOENT && ret != -EBUSY && !(ret == -EFAULT && s->o->efault_ok))
		unexpected(s, w, to_dev ? "MIGRATE_TO_DEV (region)" : "MIGRATE_TO_SYS (region)", ret);
	if (to_dev && ret == 0)
		check_pages(s, w, ri, 0, s->o->pages, w->rbuf, "device read-back (region)");
}

static void set_zero(struct stress *s, struct owner *w, int ri, int a, int n, enum op what)
{
	for (int p = a; p < a + n; p++) {
		w->reg[ri].val[p] = 0;
		record(s, w, ri, p, what);
	}
}

/* Read-only for a moment: the device may read but not write, the CPU reads. */
static void op_protect(struct stress *s, struct owner *w, int ri, int a, int n, int d)
{
	char *base = atomic_load(&w->reg[ri].base);
	int ret;

	if (mprotect(base, region_bytes(s), PROT_READ))
		return unexpected(s, w, "mprotect(PROT_READ)", -errno);
	ret = dmcmd(s, d, UHMM_DMIRROR_WRITE, base + (size_t)a * PAGE, w->buf, n);
	if (ret != -EPERM)
		unexpected(s, w, "device WRITE to read-only memory (want -EPERM)", ret);
	check_pages(s, w, ri, a, n, base + (size_t)a * PAGE, "CPU, read-only");
	if (mprotect(base, region_bytes(s), PROT_READ | PROT_WRITE))
		unexpected(s, w, "mprotect(PROT_READ|PROT_WRITE)", -errno);
}

static void op_remap(struct stress *s, struct owner *w, int ri)
{
	char *old = atomic_load(&w->reg[ri].base), *to = map_region(s);
	void *got;

	if (!to)
		return unexpected(s, w, "mmap", -errno);
	got = mremap(old, region_bytes(s), region_bytes(s), MREMAP_MAYMOVE | MREMAP_FIXED, to);
	if (got != to) {
		unexpected(s, w, "mremap", -errno);
		munmap(to, region_bytes(s));
		return;
	}
	atomic_store(&w->reg[ri].base, to);	/* the values moved with it */
}

/*
 * Fresh memory in place of the region: mmap(MAP_FIXED) over it (an unmap
 * and a map in one call, at the same address, so that no other thread's
 * region is ever placed where this one was: TSan cannot see the unmap
 * through uhmm's interposed calls and would take the reuse for a race).
 */
static void op_fresh(struct stress *s, struct owner *w, int ri)
{
	char *old = atomic_load(&w->reg[ri].base);

	if (mmap(old, region_bytes(s), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != old) {
		unexpected(s, w, "mmap(MAP_FIXED)", -errno);
		exit(2);
	}
	allow_thp(s, old);
	set_zero(s, w, ri, 0, s->o->pages, OP_FRESH);
}

/* The child sees this owner's values (other owners' regions are in flux). */
static void op_fork(struct stress *s, struct owner *w)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return unexpected(s, w, "fork", -errno);
	if (pid == 0) {
		long bad = atomic_load(&s->mismatches);

		for (int ri = 0; ri < s->o->regions; ri++)
			check_pages(s, w, ri, 0, s->o->pages, atomic_load(&w->reg[ri].base), "fork child");
		_exit(atomic_load(&s->mismatches) == bad ? 0 : 1);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		atomic_fetch_add(&s->mismatches, 1);
		unexpected(s, w, "fork child's check", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	}
}

static bool op_enabled(const struct stress *s, int i)
{
	if (i == OP_FORK && !s->o->fork)
		return false;
	if (i == OP_UNIT && !s->o->huge)
		return false;	/* keeps the other runs' operation mix (and seeds) as they were */
	return !s->o->skip_ops || !strchr(s->o->skip_ops, op_names[i]);
}

static enum op pick_op(struct stress *s, struct owner *w)
{
	int total = 0, x;

	for (int i = 0; i < OP_N; i++)
		total += op_enabled(s, i) ? op_weight[i] : 0;
	x = (int)(rnd(&w->rng) % (uint64_t)total);
	for (int i = 0; i < OP_N; i++) {
		int wt = op_enabled(s, i) ? op_weight[i] : 0;

		if (x < wt)
			return (enum op)i;
		x -= wt;
	}
	return OP_CHECK;
}

static void owner_step(struct stress *s, struct owner *w)
{
	int ri = (int)(rnd(&w->rng) % (uint64_t)s->o->regions), d = (int)(rnd(&w->rng) % NDEV);
	int n = 1 + (int)(rnd(&w->rng) % MAX_SPAN), a;
	enum op what = pick_op(s, w);
	char *base = atomic_load(&w->reg[ri].base);
	int ret;

	n = n > s->o->pages ? s->o->pages : n;
	a = (int)(rnd(&w->rng) % (uint64_t)(s->o->pages - n + 1));
	if (s->o->mark) {	/* the operation in the trace, next to what uhmm did for it */
		char label[48];

		snprintf(label, sizeof(label), "owner %d op %ld %c dev %d", w->id, w->ops, op_names[what], d);
		uhmm_trace_mark(label, base + (size_t)a * PAGE, (size_t)n * PAGE);
	}
	switch (what) {
	case OP_STORE: op_store(s, w, ri, a, n, false, d); break;
	case OP_CHECK: check_pages(s, w, ri, a, n, base + (size_t)a * PAGE, "CPU"); break;
	case OP_DEV_WRITE: op_store(s, w, ri, a, n, true, d); break;
	case OP_DEV_READ:
		ret = dmcmd(s, d, UHMM_DMIRROR_READ, base + (size_t)a * PAGE, w->buf, n);
		if (ret && !(ret == -EFAULT && s->o->efault_ok))
			unexpected(s, w, "device READ", ret);
		else if (ret)
			break;
		else
			check_pages(s, w, ri, a, n, w->buf, "device");
		break;
	case OP_TO_DEV:
	case OP_TO_SYS:
	case OP_RELEASE: op_migrate(s, w, ri, a, n, what, d); break;
	case OP_EXCLUSIVE:	/* the device holds them atomic until the next touch revokes it */
		ret = dmcmd(s, d, UHMM_DMIRROR_EXCLUSIVE, base + (size_t)a * PAGE, w->buf, n);
		if (ret && ret != -EBUSY && !(ret == -EFAULT && s->o->efault_ok))
			unexpected(s, w, "EXCLUSIVE", ret);
		else if (!ret)
			check_pages(s, w, ri, a, n, w->buf, "device exclusive");
		break;
	case OP_DONTNEED:
		if (madvise(base + (size_t)a * PAGE, (size_t)n * PAGE, MADV_DONTNEED))
			unexpected(s, w, "madvise", -errno);
		set_zero(s, w, ri, a, n, OP_DONTNEED);
		break;
	case OP_FRESH: op_fresh(s, w, ri); break;
	case OP_PROTECT: op_protect(s, w, ri, a, n, d); break;
	case OP_REMAP: op_remap(s, w, ri); break;
	case OP_FORK: op_fork(s, w); break;
	case OP_UNIT: op_unit(s, w, ri, d); break;
	default: break;
	}
	w->ops++;
}

/* ---- the chaos thread: value-preserving operations anywhere ---- */

static void chaos_step(struct stress *s, uint64_t *rng, char *buf)
{
	struct owner *w = &s->own[rnd(rng) % (uint64_t)s->o->threads];
	int ri = (int)(rnd(rng) % (uint64_t)s->o->regions), d = (int)(rnd(rng) % NDEV);
	int n = 1 + (int)(rnd(rng) % MAX_SPAN), a, ret;
	static const unsigned int cmds[] = { UHMM_DMIRROR_MIGRATE_TO_DEV, UHMM_DMIRROR_MIGRATE_TO_DEV,
					     UHMM_DMIRROR_MIGRATE_TO_SYS, UHMM_DMIRROR_READ, UHMM_DMIRROR_RELEASE,
					     UHMM_DMIRROR_EXCLUSIVE };
	unsigned int cmd = cmds[rnd(rng) % (sizeof(cmds) / sizeof(cmds[0]))];

	n = n > s->o->pages ? s->o->pages : n;
	a = (int)(rnd(rng) % (uint64_t)(s->o->pages - n + 1));
	ret = dmcmd(s, d, cmd, atomic_load(&w->reg[ri].base) + (size_t)a * PAGE, buf, n);
	/* stale addresses and concurrent changes fail; nothing else may */
	if (ret && ret != -ENOENT && ret != -EBUSY && ret != -EFAULT && ret != -EINVAL && ret != -EPERM)
		unexpected(s, NULL, "chaos command", ret);
	atomic_fetch_add(&s->chaos_ops, 1);
}

struct thread_arg {
	struct stress *s;
	struct owner *w;	/* NULL: the chaos thread */
};

static void *thread_main(void *arg)
{
	struct thread_arg *t = arg;
	struct stress *s = t->s;
	uint64_t rng = s->o->seed ^ 0xc4a05ULL;
	char *buf = malloc(MAX_SPAN * PAGE);

	while (!atomic_load(&s->stop) && buf) {
		if (t->w) {
			owner_step(s, t->w);
			if ((s->o->max_ops && t->w->ops >= s->o->max_ops) || now_s() > s->deadline)
				break;
		} else {
			chaos_step(s, &rng, buf);
		}
	}
	free(buf);
	return NULL;
}

static int setup(struct stress *s)
{
	for (int d = 0; d < NDEV; d++) {
		int ret = uhmm_dmirror_open((unsigned int)d % 2, &s->dev[d]);

		if (ret)
			return ret;
	}
	s->own = calloc((size_t)s->o->threads, sizeof(*s->own));
	for (int t = 0; s->own && t < s->o->threads; t++) {
		struct owner *w = &s->own[t];

		w->id = t;
		w->rng = s->o->seed * 1000003ULL + (uint64_t)t;
		w->next_value = ((uint32_t)t + 1) << 24;
		w->buf = malloc(MAX_SPAN * PAGE);
		w->rbuf = malloc(region_bytes(s));
		w->reg = calloc((size_t)s->o->regions, sizeof(*w->reg));
		if (!w->buf || !w->rbuf || !w->reg)
			return -ENOMEM;
		for (int ri = 0; ri < s->o->regions; ri++) {
			struct region *g = &w->reg[ri];
			char *b = map_region(s);

			g->val = calloc((size_t)s->o->pages, sizeof(*g->val));
			g->hist = calloc((size_t)s->o->pages * HIST, sizeof(*g->hist));
			g->nh = calloc((size_t)s->o->pages, 1);
			if (!b || !g->val || !g->hist || !g->nh)
				return -ENOMEM;
			atomic_init(&g->base, b);
		}
	}
	return s->own ? 0 : -ENOMEM;
}

int stress_run(const struct stress_opts *o, struct stress_report *r)
{
	struct stress s = { .o = o, .r = r, .print_lock = PTHREAD_MUTEX_INITIALIZER };
	struct thread_arg *args;
	struct uhmm_stats a, b;
	pthread_t chaos;
	int ret;

	memset(r, 0, sizeof(*r));
	uhmm_stats(&a, sizeof(a));
	if (o->inject && uhmm_fault_inject(o->inject)) {
		fprintf(stderr, "stress: bad injection rules \"%s\"\n", o->inject);
		return 1;
	}
	ret = setup(&s);
	if (ret) {
		fprintf(stderr, "stress: setup: %s\n", strerror(-ret));
		return 1;
	}
	s.deadline = now_s() + o->seconds;
	args = calloc((size_t)o->threads + 1, sizeof(*args));
	args[o->threads] = (struct thread_arg){ &s, NULL };
	if (!o->no_chaos)
		pthread_create(&chaos, NULL, thread_main, &args[o->threads]);
	for (int t = 0; t < o->threads; t++) {
		args[t] = (struct thread_arg){ &s, &s.own[t] };
		pthread_create(&s.own[t].thread, NULL, thread_main, &args[t]);
	}
	for (int t = 0; t < o->threads; t++) {
		pthread_join(s.own[t].thread, NULL);
		r->ops += s.own[t].ops;
	}
	atomic_store(&s.stop, true);
	if (!o->no_chaos)
		pthread_join(chaos, NULL);

	/* the final word: every page of every region, by the CPU */
	if (o->inject)
		(void)uhmm_fault_inject(NULL);	/* what remains runs as in production */
	for (int t = 0; t < o->threads; t++)
		for (int ri = 0; ri < o->regions; ri++)
			check_pages(&s, &s.own[t], ri, 0, o->pages, atomic_load(&s.own[t].reg[ri].base), "final CPU");
	for (int d = 0; d < NDEV; d++)
		uhmm_dmirror_close(s.dev[d]);
	uhmm_stats(&b, sizeof(b));
	/*
	 * The last device closed: the mm and its exclusive pool are gone. A
	 * pool page still referenced then is a lost reference somewhere: its
	 * memory is leaked and the pagemap's counts lie, though no data was lost.
	 */
	if (b.pages_leaked != a.pages_leaked) {
		fprintf(stderr, "stress: %llu device page references were lost\n",
			(unsigned long long)(b.pages_leaked - a.pages_leaked));
		atomic_fetch_add(&s.unexpected, 1);
	}
	r->checks = atomic_load(&s.checks);
	r->mismatches = atomic_load(&s.mismatches);
	r->lost_writes = atomic_load(&s.lost);
	r->unexpected = atomic_load(&s.unexpected);
	r->chaos_ops = atomic_load(&s.chaos_ops);
	for (int i = 0; i < 8; i++)
		r->invalidations += b.invalidations[i] - a.invalidations[i];
	r->pages_to_device = b.pages_to_device - a.pages_to_device;
	r->pages_to_system = b.pages_to_system - a.pages_to_system;
	r->faults = b.faults - a.faults;
	r->injected = b.faults_injected - a.faults_injected;
	r->units = b.units_migrated - a.units_migrated;
	free(args);
	return r->mismatches || r->unexpected ? 1 : 0;
}

void stress_print(const struct stress_opts *o, const struct stress_report *r)
{
	printf("stress: seed %llu, %d owner threads x %d regions x %d pages + 1 chaos thread, %.1f s\n"
	       "  operations %ld (chaos %ld), pages checked %ld, invalidations %llu,\n"
	       "  pages migrated to device %llu, to system %llu (2 MiB units whole: %llu), CPU faults %llu\n"
	       "  faults injected %llu%s%s\n"
	       "  mismatches %ld, lost writes %ld, unexpected errors %ld\n",
	       (unsigned long long)o->seed, o->threads, o->regions, o->pages, o->seconds, r->ops, r->chaos_ops,
	       r->checks, (unsigned long long)r->invalidations, (unsigned long long)r->pages_to_device,
	       (unsigned long long)r->pages_to_system, (unsigned long long)r->units, (unsigned long long)r->faults,
	       (unsigned long long)r->injected, o->inject ? ": " : "", o->inject ? o->inject : "", r->mismatches,
	       r->lost_writes, r->unexpected);
}
