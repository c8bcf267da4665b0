// SPDX-License-Identifier: MIT
/*
 * libFuzzer target for the public API (make fuzz): each input is a program
 * of calls with fuzzer-chosen arguments on three small regions of real
 * memory and the two reference devices: uhmm_range_fault() with any range,
 * flags and pfn array; notifier insert and remove in any order;
 * uhmm_migrate_vma_setup() with any range, flags and owner; every dmirror
 * command on any range near the regions; CPU loads and stores;
 * madvise(DONTNEED), mprotect, munmap and mmap; uhmm_access_vm();
 * uhmm_fault_inject() and uhmm_trace_mark() with any string.
 *
 * What must hold: no crash, no sanitizer report, every return value is one
 * the call documents, and no byte is lost: each page holds one 32-bit value
 * everywhere, a shadow copy says which, and every CPU load and device READ
 * is checked against it. A failed call changes nothing, except a device
 * WRITE, which may have written a prefix of its pages (CONFORMANCE.md: the
 * copy resumes after each fault pass): each page then holds the old value
 * or the new one, nothing else.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "uhmm.h"
#include "uhmm/dmirror.h"

#define PG 4096UL
#define NREG 3
#define REG_PAGES 16
#define GAP_PAGES 4		/* unmapped pages between regions: no VMA there */
#define SPAN_PAGES (GAP_PAGES + NREG * (REG_PAGES + GAP_PAGES))
#define NNOTIF 4

enum reg_state { R_UNMAPPED, R_NONE, R_RO, R_RW };

static struct {
	uintptr_t base;				/* SPAN_PAGES, regions at their offsets */
	enum reg_state st[NREG];
	uint32_t shadow[NREG][REG_PAGES];	/* each page holds this value everywhere */
	struct uhmm_mm *mm;
	struct uhmm_dmirror *dev[2];
	struct uhmm_interval_notifier notif[NNOTIF];
	bool inserted[NNOTIF];
} F;

struct input {
	const uint8_t *p;
	size_t n;
};

static uint64_t take(struct input *in, int bytes)
{
	uint64_t v = 0;

	for (int i = 0; i < bytes && in->n; i++, in->p++, in->n--)
		v |= (uint64_t)*in->p << (8 * i);
	return v;
}

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "uhmm-fuzz: " __VA_ARGS__);        \
			fputc('\n', stderr);                               \
			abort();                                           \
		}                                                          \
	} while (0)

/* Is @ret one of the -errnos listed (0 ends the list)? */
static bool one_of(long ret, const int *allowed)
{
	for (; *allowed; allowed++)
		if (ret == -*allowed)
			return true;
	return false;
}
#define ALLOWED(ret, ...) one_of((ret), (const int[]){ __VA_ARGS__, 0 })

static uintptr_t reg_addr(int r)
{
	return F.base + (GAP_PAGES + (uintptr_t)r * (REG_PAGES + GAP_PAGES)) * PG;
}

static bool invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *range,
		       unsigned long cur_seq)
{
	(void)range;
	uhmm_interval_set_seq(sub, cur_seq);
	return true;
}

static const struct uhmm_interval_notifier_ops notif_ops = { .invalidate = invalidate };

static void fill_page(int r, int pg, uint32_t v)
{
	uint32_t *w = (uint32_t *)(reg_addr(r) + pg * PG);

	for (size_t i = 0; i < PG / 4; i++)
		w[i] = v;
	F.shadow[r][pg] = v;
}

/* A page the CPU may read: first, middle and last word hold its value. */
static void check_page(int r, int pg, const char *after)
{
	const uint32_t *w = (const uint32_t *)(reg_addr(r) + pg * PG);
	uint32_t want = F.shadow[r][pg];

	CHECK(w[0] == want && w[PG / 8] == want && w[PG / 4 - 1] == want,
	      "region %d page %d holds %#x/%#x/%#x, expected %#x (after %s)", r, pg, w[0], w[PG / 8],
	      w[PG / 4 - 1], want, after);
}

static void map_region(int r)
{
	void *p = mmap((void *)reg_addr(r), REG_PAGES * PG, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);

	CHECK(p == (void *)reg_addr(r), "mmap: %s", strerror(errno));
	F.st[r] = R_RW;
	memset(F.shadow[r], 0, sizeof(F.shadow[r]));
}

static void reset(void)
{
	for (int i = 0; i < NNOTIF; i++)
		if (F.inserted[i]) {
			CHECK(uhmm_interval_notifier_remove(&F.notif[i]) == 0, "notifier remove");
			F.inserted[i] = false;
		}
	for (int r = 0; r < NREG; r++)
		map_region(r);
}

/*
 * The regions live far below where libc, the sanitizers and libFuzzer map
 * (top-down from near 128 TiB, ASan's shadow ends at 16 TiB): a hole the
 * input punches stays a hole instead of being handed to an allocator, so
 * that mmap(MAP_FIXED) and device writes there never hit anybody's memory.
 */
#define SPAN_BASE 0x310000000000UL

static int init(void)
{
	void *p = mmap((void *)SPAN_BASE, SPAN_PAGES * PG, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	CHECK(p == (void *)SPAN_BASE, "reserve: %s", strerror(errno));
	F.base = (uintptr_t)p;
	for (int r = 0; r <= NREG; r++)	/* the gaps: no VMA at all */
		munmap((void *)(F.base + (uintptr_t)r * (REG_PAGES + GAP_PAGES) * PG), GAP_PAGES * PG);
	CHECK(uhmm_mm_get(&F.mm) == 0, "uhmm_mm_get");
	CHECK(uhmm_dmirror_open(0, &F.dev[0]) == 0 && uhmm_dmirror_open(1, &F.dev[1]) == 0, "dmirror_open");
	return 0;
}

/* An address near the regions: mostly page-aligned inside one, sometimes in a gap or off by bytes. */
static uint64_t pick_addr(struct input *in)
{
	uint64_t k = take(in, 2);
	int64_t page = (int64_t)(k % (SPAN_PAGES + 4)) - 2;
	uint64_t a = F.base + (uint64_t)page * PG;

	if ((k >> 12) == 0xf)
		a += take(in, 2) & (PG - 1);	/* misaligned */
	return a;
}

/* Which region and page @a is in, if it is one of theirs (else -1). */
static int locate(uint64_t a, int *pg)
{
	for (int r = 0; r < NREG; r++)
		if (a >= reg_addr(r) && a < reg_addr(r) + REG_PAGES * PG) {
			*pg = (int)((a - reg_addr(r)) / PG);
			return r;
		}
	return -1;
}

static void op_cpu_store(struct input *in)
{
	int r = (int)(take(in, 1) % NREG), pg = (int)(take(in, 1) % REG_PAGES);

	if (F.st[r] == R_RW)
		fill_page(r, pg, (uint32_t)take(in, 4));
}

static void op_cpu_load(struct input *in)
{
	int r = (int)(take(in, 1) % NREG);

	if (F.st[r] >= R_RO)
		for (int pg = 0; pg < REG_PAGES; pg++)
			check_page(r, pg, "CPU load");
}

/* The pages of [a, a + n pages) that are a region's, with their values, after a device READ. */
static void check_read(uint64_t a, uint64_t n, const uint32_t *buf)
{
	for (uint64_t i = 0; i < n; i++) {
		int pg, r = locate(a + i * PG, &pg);

		if (r >= 0)
			CHECK(buf[i * PG / 4] == F.shadow[r][pg] && buf[(i + 1) * PG / 4 - 1] == F.shadow[r][pg],
			      "device READ of region %d page %d: %#x, expected %#x", r, pg, buf[i * PG / 4],
			      F.shadow[r][pg]);
	}
}

/* After a WRITE: each page holds the old value or @v; the shadow learns which. */
static void settle_write(uint64_t a, uint64_t n, uint32_t v, int ret)
{
	for (uint64_t i = 0; i < n; i++) {
		int pg, r = locate(a + i * PG, &pg);
		uint32_t got;

		if (r < 0)
			continue;
		if (ret == 0) {
			F.shadow[r][pg] = v;
			continue;
		}
		if (F.st[r] < R_RO)
			continue;	/* not readable: a failed WRITE cannot have written it */
		got = *(volatile uint32_t *)(reg_addr(r) + pg * PG);
		CHECK(got == F.shadow[r][pg] || got == v, "failed WRITE left region %d page %d %#x (old %#x, new %#x)",
		      r, pg, got, F.shadow[r][pg], v);
		F.shadow[r][pg] = got;
		check_page(r, pg, "a failed device WRITE");
	}
}

static void op_dmirror(struct input *in)
{
	struct uhmm_dmirror *d = F.dev[take(in, 1) & 1];
	unsigned int cmd = (unsigned int)(take(in, 1) % 12);	/* 9..11: unknown */
	uint64_t a = pick_addr(in), n = take(in, 1) % 24;
	uint32_t v = (uint32_t)take(in, 4);
	static uint32_t buf[32 * PG / 4];
	struct uhmm_dmirror_cmd c = { .addr = a, .ptr = (uintptr_t)buf, .npages = n };
	int ret;

	if (cmd == UHMM_DMIRROR_FLAGS)
		return;	/* FAIL_ALLOC poisons on purpose: the conformance tests cover it */
	if (cmd == UHMM_DMIRROR_WRITE)
		for (size_t i = 0; i < n * PG / 4; i++)
			buf[i] = v;
	ret = uhmm_dmirror_cmd(d, cmd, &c);
	CHECK(ret == 0 || ALLOWED(ret, EINVAL, EFAULT, EPERM, EBUSY, ENOMEM, ENOENT, EOPNOTSUPP),
	      "dmirror command %u at %#llx, %llu pages: %d", cmd, (unsigned long long)a, (unsigned long long)n, ret);
	if ((cmd == UHMM_DMIRROR_READ || cmd == UHMM_DMIRROR_EXCLUSIVE) && ret == 0)
		check_read(a, n, buf);	/* EXCLUSIVE reads the pages back through the device */
	if (cmd == UHMM_DMIRROR_WRITE && ret != -EINVAL)
		settle_write(a, n, v, ret);
}

static void op_madvise(struct input *in)
{
	int r = (int)(take(in, 1) % NREG), pg = (int)(take(in, 1) % REG_PAGES), n = 1 + (int)(take(in, 1) % 4);

	if (pg + n > REG_PAGES)
		n = REG_PAGES - pg;
	if (F.st[r] == R_UNMAPPED)
		return;
	CHECK(madvise((void *)(reg_addr(r) + pg * PG), n * PG, MADV_DONTNEED) == 0, "madvise: %s", strerror(errno));
	for (int i = pg; i < pg + n; i++)
		F.shadow[r][i] = 0;
}

static void op_map(struct input *in)
{
	int r = (int)(take(in, 1) % NREG), how = (int)(take(in, 1) % 5);
	static const int prot[] = { PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE };

	if (how == 0) {
		CHECK(munmap((void *)reg_addr(r), REG_PAGES * PG) == 0, "munmap");
		F.st[r] = R_UNMAPPED;
		memset(F.shadow[r], 0, sizeof(F.shadow[r]));
	} else if (how == 1) {
		map_region(r);
	} else if (F.st[r] != R_UNMAPPED) {
		CHECK(mprotect((void *)reg_addr(r), REG_PAGES * PG, prot[how - 2]) == 0, "mprotect");
		F.st[r] = (enum reg_state)(R_NONE + how - 2);
	}
}

static void op_notifier(struct input *in)
{
	int i = (int)(take(in, 1) % NNOTIF);
	uint64_t start = take(in, 1) & 1 ? take(in, 8) : pick_addr(in), len = take(in, 1) & 1 ? take(in, 8) : take(in, 2) * PG;
	int ret;

	if (F.inserted[i]) {
		CHECK(uhmm_interval_notifier_remove(&F.notif[i]) == 0, "notifier remove");
		F.inserted[i] = false;
		CHECK(uhmm_interval_notifier_remove(&F.notif[i]) == -EINVAL, "second remove");
		return;
	}
	ret = uhmm_interval_notifier_insert(&F.notif[i], F.mm, start, len, &notif_ops);
	CHECK(ret == 0 || ret == -EINVAL, "notifier insert %#llx+%#llx: %d", (unsigned long long)start,
	      (unsigned long long)len, ret);
	F.inserted[i] = ret == 0;
	if (ret == 0)
		CHECK(uhmm_interval_notifier_insert(&F.notif[i], F.mm, start, len, &notif_ops) == -EEXIST,
		      "second insert");
}

static void op_range_fault(struct input *in)
{
	int i = (int)(take(in, 1) % NNOTIF);
	uint64_t pfns[40];
	struct uhmm_range range = {
		.notifier = &F.notif[i], .start = pick_addr(in), .hmm_pfns = pfns,
		.default_flags = take(in, 1) & 1 ? take(in, 8) : take(in, 1) % 4 * UHMM_PFN_REQ_FAULT,
		.pfn_flags_mask = take(in, 1) & 1 ? take(in, 8) : 0,
		.dev_private_owner = take(in, 1) & 1 ? (void *)(uintptr_t)take(in, 8) : NULL,
	};
	int ret = -EBUSY;

	if (!F.inserted[i])
		return;
	range.end = range.start + (take(in, 1) % 41) * PG;
	if (take(in, 1) == 0x5a)
		range.end = take(in, 8);	/* anything at all */
	for (size_t k = 0; k < 40; k++)
		pfns[k] = take(in, 1) & 1 ? take(in, 8) : 0;
	for (int tries = 0; ret == -EBUSY && tries < 4; tries++) {
		range.notifier_seq = uhmm_interval_read_begin(range.notifier);
		ret = uhmm_range_fault(&range);
	}
	CHECK(ret == 0 || ALLOWED(ret, EINVAL, EFAULT, EPERM, EBUSY, ENOMEM),
	      "range_fault %#llx-%#llx flags %#llx mask %#llx: %d", (unsigned long long)range.start,
	      (unsigned long long)range.end, (unsigned long long)range.default_flags,
	      (unsigned long long)range.pfn_flags_mask, ret);
}

static void op_migrate(struct input *in)
{
	uint64_t src[40], dst[40];
	void *owners[] = { NULL, (void *)F.base, &F, (void *)1 };	/* owners are compared, never followed */
	struct uhmm_migrate_vma m = {
		.mm = F.mm, .src = src, .dst = dst, .start = pick_addr(in),
		.flags = (unsigned long)take(in, 1) % 32, .pgmap_owner = owners[take(in, 1) % 4],
	};
	int zero_copy = take(in, 1) % 4 == 0;	/* pages left writable: they must stay all the same */
	int ret;

	m.end = m.start + (take(in, 1) % 41) * PG;
	m.flags |= zero_copy ? UHMM_MIGRATE_VMA_ZERO_COPY : 0;
	ret = uhmm_migrate_vma_setup(&m);
	CHECK(ret == 0 || ALLOWED(ret, EINVAL, ENOMEM), "migrate_vma_setup %#llx-%#llx flags %#lx: %d",
	      (unsigned long long)m.start, (unsigned long long)m.end, m.flags, ret);
	if (ret)
		return;
	for (uint64_t k = 0; k < m.npages; k++)
		CHECK(dst[k] == 0, "dst not zeroed by setup");
	/* The driver migrates nothing: every page stays, data and all. */
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	CHECK(m.priv == NULL, "finalize left priv");
}

/* Device-exclusive access, directly: documented errnos; on success *mem holds the page's data. */
static void op_exclusive(struct input *in)
{
	void *owners[] = { NULL, (void *)F.base, &F };	/* compared, never followed */
	uint64_t a = pick_addr(in) + (take(in, 1) % 8 == 0 ? 8 : 0);	/* sometimes unaligned */
	void *mem = NULL;
	int pg, r, ret = uhmm_make_device_exclusive(F.mm, a, owners[take(in, 1) % 3], &mem);

	CHECK(ret == 0 || ALLOWED(ret, EINVAL, EFAULT, EOPNOTSUPP, EBUSY, ENOMEM),
	      "make_device_exclusive %#llx: %d", (unsigned long long)a, ret);
	r = locate(a, &pg);
	if (ret == 0 && r >= 0)
		CHECK(*(uint32_t *)mem == F.shadow[r][pg], "exclusive page of region %d page %d: %#x, expected %#x", r,
		      pg, *(uint32_t *)mem, F.shadow[r][pg]);
}

static void op_access(struct input *in)
{
	uint64_t a = pick_addr(in), len = take(in, 2) % (8 * PG);
	unsigned int flags = take(in, 1) == 7 ? (unsigned int)take(in, 4) : 0;
	static uint8_t buf[8 * PG];
	uint64_t split = take(in, 2);
	ssize_t ret;

	if (split & 1) {	/* the same, through two buffers, sometimes with a bogus length */
		size_t first = (split >> 1) % (len + 1);
		struct iovec iov[2] = { { buf, first },
					{ buf + first, split % 16 == 15 ? SIZE_MAX - first : len - first } };

		ret = uhmm_access_vm_iov(a, iov, 2, flags);
		if (split % 16 == 15)
			CHECK(ret == -EINVAL, "access_vm_iov with lengths past SSIZE_MAX: %zd", ret);
	} else {
		ret = uhmm_access_vm(a, buf, len, flags);
	}
	CHECK(ret == (ssize_t)len || ALLOWED(ret, EINVAL, EFAULT), "access_vm %#llx+%llu flags %#x: %zd",
	      (unsigned long long)a, (unsigned long long)len, flags, ret);
	if (ret == (ssize_t)len && len >= 4 && !(a & 3)) {
		int pg, r = locate(a, &pg);

		if (r >= 0)
			CHECK(*(uint32_t *)buf == F.shadow[r][pg], "access_vm read %#x, expected %#x",
			      *(uint32_t *)buf, F.shadow[r][pg]);
	}
}

/* A string of the input, NUL-terminated in @s. */
static void take_string(struct input *in, char *s, size_t cap)
{
	size_t n = take(in, 1) % cap;

	for (size_t i = 0; i < n; i++)
		s[i] = (char)take(in, 1);
	s[n] = 0;
}

static void op_strings(struct input *in)
{
	char s[48];
	int ret;

	take_string(in, s, sizeof(s));
	ret = uhmm_fault_inject(s);
	CHECK(ret == 0 || ret == -EINVAL, "fault_inject(\"%s\"): %d", s, ret);
	CHECK(uhmm_fault_inject(NULL) == 0, "fault_inject(NULL)");	/* rules are not the fuzzer's */
	ret = uhmm_trace_mark(s, (void *)pick_addr(in), take(in, 2));
	CHECK(ret == 0 || (ret == -EINVAL && !*s), "trace_mark: %d", ret);
	struct uhmm_stats st;
	size_t size = take(in, 1) % (sizeof(st) + 8);
	long got = uhmm_stats(&st, size);

	CHECK(got == (size && size % 8 == 0 ? (long)(size < sizeof(st) ? size : sizeof(st)) : -EINVAL),
	      "uhmm_stats(size %zu): %ld", size, got);
}

/* uhmm's own memory: no device command may take or map it, and it stays as it was. */
static void op_kmem(struct input *in)
{
	size_t size = 1 + (size_t)(take(in, 2) % (24 << 10));	/* up to 6 pages: keeps the fuzzer fast */
	unsigned int cmd = (unsigned int)(take(in, 1) % 9);
	uint64_t n = 1 + take(in, 1) % 8, off = take(in, 2) % ((size + PG - 1) / PG) * PG;
	unsigned char *k = uhmm_kmalloc(size);
	static uint32_t buf[8 * PG / 4];
	struct uhmm_dmirror_cmd c = { .ptr = (uintptr_t)buf, .npages = n };
	int ret;

	CHECK(k, "uhmm_kmalloc(%zu) failed", size);
	for (size_t i = 0; i < size; i++)
		k[i] = (unsigned char)(i * 7 + size);
	c.addr = (uintptr_t)k + off;
	if (cmd == UHMM_DMIRROR_FLAGS)
		cmd = UHMM_DMIRROR_MIGRATE_TO_DEV;
	ret = uhmm_dmirror_cmd(F.dev[take(in, 1) & 1], cmd, &c);
	/* a command on nothing (RELEASE, SNAPSHOT, a page the block and its neighbours lack) may say 0 */
	CHECK(ret == 0 || ALLOWED(ret, EINVAL, EFAULT, ENOENT, EPERM),
	      "dmirror command %u on uhmm's own memory: %d", cmd, ret);
	CHECK(!(ret == 0 && (cmd == UHMM_DMIRROR_READ || cmd == UHMM_DMIRROR_WRITE ||
			     cmd == UHMM_DMIRROR_MIGRATE_TO_DEV || cmd == UHMM_DMIRROR_EXCLUSIVE)),
	      "dmirror command %u reached uhmm's own memory", cmd);
	for (size_t i = 0; i < size; i++)
		CHECK(k[i] == (unsigned char)(i * 7 + size), "uhmm's own memory changed at %zu", i);
	uhmm_kfree(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static void (*const ops[])(struct input *) = {
		op_cpu_store, op_cpu_store, op_cpu_load, op_dmirror, op_dmirror, op_dmirror, op_madvise,
		op_map, op_notifier, op_range_fault, op_range_fault, op_migrate, op_access, op_strings,
		op_exclusive, op_kmem,
	};
	static bool ready;
	struct input in = { data, size };

	if (!ready)
		ready = init() == 0;
	reset();
	for (int steps = 0; in.n && steps < 64; steps++)
		ops[take(&in, 1) % (sizeof(ops) / sizeof(ops[0]))](&in);
	for (int r = 0; r < NREG; r++)	/* the final word: every readable page */
		if (F.st[r] >= R_RO)
			for (int pg = 0; pg < REG_PAGES; pg++)
				check_page(r, pg, "the input's end");
	return 0;
}
