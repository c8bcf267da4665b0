// SPDX-License-Identifier: MIT
/* The device-memory and migration API: argument checks, page lifecycle, a minimal driver. */
#include <fcntl.h>
#include <stdatomic.h>

#include "harness.h"

static int freed;
static void count_free(struct uhmm_page *page) { (void)page; freed++; }
static int never_back(struct uhmm_vm_fault *vmf) { (void)vmf; return -EIO; }
static const struct uhmm_pagemap_ops ops = { .page_free = count_free, .migrate_to_ram = never_back };

static struct uhmm_mm *mm_or_skip(void)
{
	struct uhmm_mm *mm;
	int ret = uhmm_mm_get(&mm);

	if (ret == -EPERM || ret == -ENOSYS)
		SKIP("no userfaultfd");
	ASSERT_OK(ret);
	return mm;
}

TEST(pagemap_args_and_pages)
{
	struct uhmm_mm *mm = mm_or_skip();
	struct uhmm_pagemap *pg, *pg2;
	struct uhmm_pagemap_stats st;
	struct uhmm_pagemap_ops bad = { .page_free = count_free };
	struct uhmm_page *p;
	int owner;

	ASSERT_EQ(uhmm_pagemap_add(NULL, 8, &owner, &ops, NULL, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_add(mm, 0, &owner, &ops, NULL, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_add(mm, 8, &owner, &bad, NULL, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_add(mm, 8, &owner, NULL, NULL, &pg), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_add(mm, 8, &owner, &ops, NULL, NULL), -EINVAL);
	ASSERT_OK(uhmm_pagemap_add(mm, 8, &owner, &ops, &owner, &pg));
	ASSERT_OK(uhmm_pagemap_add(mm, 4, &owner, &ops, NULL, &pg2));
	ASSERT_TRUE(uhmm_pagemap_driver_data(pg) == &owner);
	ASSERT_TRUE(uhmm_pagemap_page(pg, 8) == NULL);
	p = uhmm_pagemap_page(pg, 3);
	ASSERT_TRUE(uhmm_pfn_to_page(uhmm_page_to_pfn(p)) == p);
	ASSERT_TRUE(uhmm_pfn_to_page(uhmm_page_to_pfn(uhmm_pagemap_page(pg2, 0))) == uhmm_pagemap_page(pg2, 0));
	ASSERT_GE(uhmm_page_to_pfn(p), UHMM_DEVICE_PFN_BASE);
	ASSERT_TRUE(uhmm_pfn_to_page(12345) == NULL);
	ASSERT_EQ(uhmm_page_index(p), 3);
	ASSERT_OK(uhmm_page_init(p));
	ASSERT_EQ(uhmm_page_init(p), -EBUSY);
	ASSERT_OK(uhmm_pagemap_stats(pg, &st));
	ASSERT_EQ(st.allocated, 1);
	ASSERT_EQ(st.free, 7);
	ASSERT_EQ(uhmm_pagemap_remove(pg), -EBUSY);	/* the driver still holds a page */
	uhmm_page_get(p);
	uhmm_page_put(p);
	ASSERT_EQ(freed, 0);
	uhmm_page_put(p);
	ASSERT_EQ(freed, 1);
	ASSERT_OK(uhmm_pagemap_remove(pg));
	ASSERT_OK(uhmm_pagemap_remove(pg2));
	ASSERT_EQ(uhmm_pagemap_remove(NULL), -EINVAL);
	uhmm_mm_put(mm);
}

static uint64_t pages_moved(void)
{
	struct uhmm_stats s;

	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), (long)sizeof(s));
	return s.pages_moved;
}

/* Migrate the 8 pages at @p, every dst entry from @dst_of(i); returns the entries that migrated. */
static int migrate8(struct uhmm_mm *mm, int *p, bool to_dev, uint64_t (*dst_of)(uint64_t i, uint64_t src))
{
	uint64_t src[8], dst[8];
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = src, .dst = dst, .start = (uintptr_t)p, .end = (uintptr_t)p + 8 * PAGE,
		.pgmap_owner = &freed,
		.flags = to_dev ? UHMM_MIGRATE_VMA_SELECT_SYSTEM : UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
	};
	int n = 0;

	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	for (uint64_t i = 0; i < 8; i++)
		if (src[i] & UHMM_MIGRATE_PFN_MIGRATE)
			dst[i] = dst_of(i, src[i]);
	uhmm_migrate_vma_pages(&m);
	for (uint64_t i = 0; i < 8; i++)
		n += (src[i] & UHMM_MIGRATE_PFN_MIGRATE) != 0;
	uhmm_migrate_vma_finalize(&m);
	return n;
}

static struct uhmm_pagemap *host_pg;
static char *host_mem;

static uint64_t move_in(uint64_t i, uint64_t src)
{
	struct uhmm_page *page = uhmm_pagemap_page(host_pg, i);

	(void)src;
	ASSERT_OK(uhmm_page_init(page));
	return uhmm_migrate_pfn(uhmm_page_to_pfn(page)) | UHMM_MIGRATE_PFN_MOVE;	/* no copy */
}

static uint64_t move_out(uint64_t i, uint64_t src)
{
	(void)i;
	return uhmm_migrate_pfn_data(host_mem + uhmm_page_index(uhmm_migrate_pfn_to_page(src)) * PAGE) |
	       UHMM_MIGRATE_PFN_MOVE;
}

/*
 * Host memory (uhmm_pagemap_set_host_memory/_range): bad arguments get
 * -EINVAL; with UFFDIO_MOVE the pages move into the device's memory and
 * back, the driver copying nothing, and the memory they left is empty;
 * once cleared, a MOVE entry is refused (the page stays, its data intact).
 * Without UFFDIO_MOVE (fallback mode): -EOPNOTSUPP.
 */
TEST(host_memory_moves_pages)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_features f;
	uint64_t moved;
	int ret;

	host_mem = map_anon(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);	/* empty: never touched */
	ASSERT_OK(uhmm_pagemap_add(mm, 16, &freed, &ops, NULL, &host_pg));
	ASSERT_EQ(uhmm_pagemap_set_host_memory(NULL, host_mem), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_set_host_memory(host_pg, NULL), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_set_host_memory(host_pg, host_mem + 8), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_set_host_range(host_pg, 8, 9, host_mem), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_set_host_range(host_pg, 17, 1, host_mem), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_set_host_range(host_pg, 0, 0, host_mem), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_clear_host_range(NULL, 0, 1), -EINVAL);
	ASSERT_EQ(uhmm_pagemap_clear_host_range(host_pg, 10, 8), -EINVAL);
	ASSERT_OK(uhmm_query_features(&f));
	ret = uhmm_pagemap_set_host_memory(host_pg, host_mem);
	if (!(f.flags & UHMM_FEAT_UFFD_MOVE)) {
		ASSERT_EQ(ret, -EOPNOTSUPP);
	} else {
		ASSERT_OK(ret);
		ASSERT_EQ(uhmm_pagemap_set_host_range(host_pg, 0, 1, host_mem), -EINVAL);	/* set already */
		fill_ints(p, 8 * PAGE, 1);
		moved = pages_moved();
		ASSERT_EQ(migrate8(mm, p, true, move_in), 8);
		ASSERT_EQ(pages_moved() - moved, 8);
		check_ints((int *)host_mem, 8 * PAGE, 1);	/* the pages themselves are there */
		ASSERT_EQ(migrate8(mm, p, false, move_out), 8);
		ASSERT_EQ(pages_moved() - moved, 16);
		check_ints(p, 8 * PAGE, 1);
		for (size_t i = 0; i < 8 * PAGE / sizeof(int); i++)
			ASSERT_EQ(((int *)host_mem)[i], 0);	/* ... and left empty */
		ASSERT_OK(uhmm_pagemap_clear_host_range(host_pg, 0, 16));
		ASSERT_EQ(migrate8(mm, p, true, move_in), 0);	/* nowhere to move: stays */
		check_ints(p, 8 * PAGE, 1);
		ASSERT_EQ(pages_moved() - moved, 16);
	}
	ASSERT_OK(uhmm_pagemap_remove(host_pg));
	uhmm_mm_put(mm);
}

/* Is the page at @addr write-protected by userfaultfd (pagemap bit 57)? */
static bool uffd_wp_bit(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t e = 0;

	ASSERT_TRUE(fd >= 0);
	ASSERT_EQ(pread(fd, &e, sizeof(e), (off_t)((uintptr_t)addr / PAGE * sizeof(e))), (ssize_t)sizeof(e));
	close(fd);
	return (e >> 57) & 1;
}

#define INTS (PAGE / sizeof(int))

/*
 * A pool of 16 pages whose memory is host memory: true; false where pages
 * cannot move (no UFFDIO_MOVE, or the fallback mode), the pool then plain.
 */
static bool host_pool(struct uhmm_mm *mm)
{
	struct uhmm_features f;
	int ret;

	ASSERT_OK(uhmm_query_features(&f));
	host_mem = map_anon(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	ASSERT_OK(uhmm_pagemap_add(mm, 16, &freed, &ops, NULL, &host_pg));
	ret = uhmm_pagemap_set_host_memory(host_pg, host_mem);
	if (!(f.flags & UHMM_FEAT_UFFD_MOVE) || (f.flags & UHMM_FEAT_FALLBACK_FORCED)) {
		ASSERT_EQ(ret, -EOPNOTSUPP);
		return false;
	}
	ASSERT_OK(ret);
	return true;
}

/* Without host memory (no UFFDIO_MOVE): nothing can move, every page with data stays as written. */
static void zero_copy_nothing_moves(struct uhmm_mm *mm, int *p, struct uhmm_migrate_vma *m, uint64_t *src,
				    uint64_t *dst)
{
	for (uint64_t i = 0; i < 7; i++)
		dst[i] = move_in(i, src[i]);
	uhmm_migrate_vma_pages(m);
	for (int i = 0; i < 7; i++)
		ASSERT_FALSE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_vma_finalize(m);
	for (int i = 0; i < 7; i++)
		ASSERT_EQ(p[i * INTS], -100 - i);
	ASSERT_OK(uhmm_pagemap_remove(host_pg));
	uhmm_mm_put(mm);
}

/* setup() of the 8 pages at @p to the device, with @flags besides SELECT_SYSTEM: all 8 collected */
static void setup8(struct uhmm_migrate_vma *m, struct uhmm_mm *mm, int *p, uint64_t *src, uint64_t *dst,
		   unsigned long flags)
{
	*m = (struct uhmm_migrate_vma){
		.mm = mm, .src = src, .dst = dst, .start = (uintptr_t)p, .end = (uintptr_t)p + 8 * PAGE,
		.pgmap_owner = &freed, .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM | flags,
	};
	ASSERT_OK(uhmm_migrate_vma_setup(m));
	ASSERT_EQ(m->cpages, 8);
}


/*
 * UHMM_MIGRATE_VMA_ZERO_COPY: setup leaves the pages with data writable
 * (this thread writes them between setup and pages(): protected, the write
 * would wait for finalize, for ever) and still protects the zero page.
 * What was written moves with the pages. A page the driver gave a copied
 * device page instead stays where it is, with what was written (without
 * UFFDIO_MOVE, every page does).
 */
TEST(zero_copy_leaves_data_pages_writable)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src[8], dst[8];
	struct uhmm_migrate_vma m;
	struct uhmm_page *copied;
	bool moves = host_pool(mm);

	fill_ints(p, 7 * PAGE, 1);
	(void)((volatile int *)p)[7 * INTS];	/* page 7: the zero page */
	setup8(&m, mm, p, src, dst, UHMM_MIGRATE_VMA_ZERO_COPY);
	ASSERT_FALSE(uffd_wp_bit(p));
	ASSERT_TRUE(uffd_wp_bit(p + 7 * INTS));
	for (int i = 0; i < 7; i++)
		p[i * INTS] = -100 - i;
	if (!moves)
		return zero_copy_nothing_moves(mm, p, &m, src, dst);
	copied = uhmm_pagemap_page(host_pg, 8);
	ASSERT_OK(uhmm_page_init(copied));
	dst[0] = uhmm_migrate_pfn(uhmm_page_to_pfn(copied));	/* as if copied: refused */
	for (uint64_t i = 1; i < 7; i++)
		dst[i] = move_in(i, src[i]);
	ASSERT_OK(uhmm_page_init(uhmm_pagemap_page(host_pg, 9)));	/* the zero page: zeros, copied */
	dst[7] = uhmm_migrate_pfn(uhmm_page_to_pfn(uhmm_pagemap_page(host_pg, 9)));
	uhmm_migrate_vma_pages(&m);
	ASSERT_FALSE(src[0] & UHMM_MIGRATE_PFN_MIGRATE);
	for (int i = 1; i < 8; i++)
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_EQ(p[0], -100);	/* stayed, as written */
	check_ints_from(p, 1, PAGE - sizeof(int), 1);
	for (int i = 1; i < 7; i++) {	/* moved, as written */
		ASSERT_EQ(((int *)host_mem)[i * INTS], -100 - i);
		check_ints_from((int *)host_mem, i * INTS + 1, PAGE - sizeof(int), 1);
	}
	ASSERT_EQ(migrate8(mm, p, false, move_out), 7);
	for (int i = 0; i < 7; i++)
		ASSERT_EQ(p[i * INTS], -100 - i);
	check_ints_from(p, 6 * INTS + 1, PAGE - sizeof(int), 1);
	for (size_t i = 7 * INTS; i < 8 * INTS; i++)
		ASSERT_EQ(p[i], 0);
	ASSERT_OK(uhmm_pagemap_remove(host_pg));
	uhmm_mm_put(mm);
}

/*
 * UHMM_MIGRATE_VMA_ZERO_COPY with the moves failing: the pages setup left
 * writable are protected, then copied and zapped, as a copying driver's
 * are; every page migrates, with what was written after setup.
 */
TEST(zero_copy_pages_that_will_not_move_are_copied)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src[8], dst[8], moved;
	struct uhmm_migrate_vma m;
	bool moves = host_pool(mm);

	fill_ints(p, 8 * PAGE, 1);
	setup8(&m, mm, p, src, dst, UHMM_MIGRATE_VMA_ZERO_COPY);
	for (int i = 0; i < 8; i++)
		p[i * INTS] = -100 - i;
	if (!moves)
		return zero_copy_nothing_moves(mm, p, &m, src, dst);
	for (uint64_t i = 0; i < 8; i++)
		dst[i] = move_in(i, src[i]);
	moved = pages_moved();
	ASSERT_OK(uhmm_fault_inject("uffd_move:ENOMEM"));
	uhmm_migrate_vma_pages(&m);
	ASSERT_OK(uhmm_fault_inject(NULL));
	for (int i = 0; i < 8; i++)
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_EQ(pages_moved(), moved);	/* copied, every one */
	for (int i = 0; i < 8; i++) {
		ASSERT_EQ(((int *)host_mem)[i * INTS], -100 - i);
		check_ints_from((int *)host_mem, i * INTS + 1, PAGE - sizeof(int), 1);
	}
	ASSERT_EQ(migrate8(mm, p, false, move_out), 8);
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(p[i * INTS], -100 - i);
	ASSERT_OK(uhmm_pagemap_remove(host_pg));
	uhmm_mm_put(mm);
}

/*
 * A migration that moves nothing leaves its protected pages writable
 * again, run by run (finalize unprotects each run of them with one call);
 * the zero page in between stays protected, as every empty entry does.
 */
TEST(migrate_nothing_unprotects_every_run)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src[8], dst[8];
	struct uhmm_migrate_vma m;

	fill_ints(p, 3 * PAGE, 1);
	(void)((volatile int *)p)[3 * INTS];	/* page 3: the zero page */
	fill_ints(p + 4 * INTS, 4 * PAGE, 2);
	setup8(&m, mm, p, src, dst, 0);
	for (int i = 0; i < 8; i++)
		ASSERT_TRUE(uffd_wp_bit(p + i * INTS));
	uhmm_migrate_vma_pages(&m);	/* no dst: nothing moves */
	uhmm_migrate_vma_finalize(&m);
	for (int i = 0; i < 8; i++)
		ASSERT_EQ(uffd_wp_bit(p + i * INTS), i == 3);
	check_ints(p, 3 * PAGE, 1);
	check_ints(p + 4 * INTS, 4 * PAGE, 2);
	for (int i = 0; i < 8; i++)
		if (i != 3)
			p[i * INTS] = -1;	/* protected still, this would wait for ever */
	uhmm_mm_put(mm);
}

TEST(migrate_vma_setup_args)
{
	struct uhmm_mm *mm = mm_or_skip();
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src[4], dst[4];
	struct uhmm_migrate_vma ok = {
		.mm = mm, .src = src, .dst = dst, .start = (uintptr_t)p, .end = (uintptr_t)p + 4 * PAGE,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	}, m;

	ASSERT_EQ(uhmm_migrate_vma_setup(NULL), -EINVAL);
	m = ok; m.src = NULL;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok; m.start += 1;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok; m.end = m.start;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok; m.flags = 0;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	m = ok; m.flags = 1 << 9;
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	ASSERT_OK(munmap(p, PAGE));
	m = ok;	/* no VMA at start */
	ASSERT_EQ(uhmm_migrate_vma_setup(&m), -EINVAL);
	/* a setup that collects, with nothing migrated: pages and finalize restore all */
	m = ok; m.start += PAGE;
	p[PAGE] = 5;
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.npages, 3);
	ASSERT_EQ(m.cpages, 3);
	ASSERT_TRUE(src[0] & UHMM_MIGRATE_PFN_VALID);		/* data */
	ASSERT_TRUE(src[0] & UHMM_MIGRATE_PFN_WRITE);
	ASSERT_FALSE(src[1] & UHMM_MIGRATE_PFN_VALID);		/* a hole */
	ASSERT_TRUE(src[1] & UHMM_MIGRATE_PFN_MIGRATE);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_FALSE(src[0] & UHMM_MIGRATE_PFN_MIGRATE);	/* nothing moved */
	p[PAGE] = 6;	/* writable again */
	ASSERT_EQ(p[PAGE], 6);
	/* the alloc helper */
	ASSERT_TRUE(uhmm_migrate_alloc_system_page(NULL) == NULL);
	ASSERT_EQ(uhmm_migrate_device_range(NULL, UHMM_DEVICE_PFN_BASE, 1), -EINVAL);
	ASSERT_EQ(uhmm_migrate_device_range(src, 42, 1), -EINVAL);
	uhmm_mm_put(mm);
}

/* A CPU write to a page being migrated waits, then lands consistently. */
#include <pthread.h>
struct writer {
	volatile char *p;
	int started;
};
static void *write_page(void *arg)
{
	struct writer *w = arg;

	__atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);
	w->p[0] = 'W';	/* blocks while the page is write-protected */
	return NULL;
}

TEST(migrate_write_waits_for_migration)
{
	struct uhmm_dmirror *d = dmirror(0);
	char *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_mm *mm = mm_or_skip();
	uint64_t src, dst;
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p, .end = (uintptr_t)p + PAGE,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};
	struct writer w = { p, 0 };
	pthread_t t;

	p[0] = 'A';
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 1);
	ASSERT_OK(pthread_create(&t, NULL, write_page, &w));
	while (!__atomic_load_n(&w.started, __ATOMIC_ACQUIRE))
		usleep(100);
	usleep(20000);
	/*
	 * Reads go on and the write has not landed. Read through the kernel:
	 * a plain load would race the blocked store as far as TSan can tell.
	 */
	char seen = 0;

	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, &seen, 1, 0), 1);
	ASSERT_EQ(seen, 'A');
	uhmm_migrate_vma_pages(&m);	/* no dst: nothing moves */
	uhmm_migrate_vma_finalize(&m);
	pthread_join(t, NULL);
	ASSERT_EQ(p[0], 'W');	/* after the join */
	uhmm_mm_put(mm);
	uhmm_dmirror_close(d);
}

/*
 * A page a migration holds is the kernel's migration entry: not present for
 * a snapshot, even though uhmm leaves the CPU page mapped (write-protected)
 * until the commit zaps it; a device that mapped it would keep a mapping
 * the commit removes without another invalidation. Once the migration is
 * over (nothing moved here), the page is what it was.
 */
TEST(migrate_held_page_is_not_present_to_devices)
{
	struct uhmm_dmirror *d = dmirror(0);
	char *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_mm *mm = mm_or_skip();
	struct uhmm_dmirror_cmd c;
	uint64_t src, dst = 0;
	uint8_t snap;
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p, .end = (uintptr_t)p + PAGE,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};

	p[0] = 'A';
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, &snap, 1, &c));
	ASSERT_EQ(snap, UHMM_DMIRROR_PROT_NONE);
	uhmm_migrate_vma_pages(&m);	/* no dst: nothing moves */
	uhmm_migrate_vma_finalize(&m);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, p, &snap, 1, &c));
	ASSERT_EQ(snap, UHMM_DMIRROR_PROT_WRITE);
	ASSERT_EQ(p[0], 'A');
	uhmm_mm_put(mm);
	uhmm_dmirror_close(d);
}

/*
 * A device reading a page a migration holds waits for the migration, as the
 * kernel's hmm_range_fault() waits on a migration entry, instead of
 * spinning on -EBUSY: under TSan a stream of migrations kept a device READ
 * retrying for a second until it gave up. Here the migration holds the page
 * for 100 ms; the READ ends with the data once it is over, after a handful
 * of -EBUSY rounds (one per 10 ms wait), not thousands.
 */
struct holder_reader {
	struct uhmm_dmirror *d;
	char *p;
	atomic_int started;
	int ret;
	char seen;
};

static void *read_held_page(void *arg)
{
	struct holder_reader *h = arg;
	struct uhmm_dmirror_cmd c;
	char buf[PAGE];

	atomic_store(&h->started, 1);
	h->ret = dmcmd(h->d, UHMM_DMIRROR_READ, h->p, buf, 1, &c);
	h->seen = buf[0];
	return NULL;
}

TEST(migrate_device_read_waits_for_held_page)
{
	struct holder_reader h = { .d = dmirror(0), .p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE) };
	struct uhmm_mm *mm = mm_or_skip();
	uint64_t src, dst = 0, busy;
	struct uhmm_stats st;
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)h.p, .end = (uintptr_t)h.p + PAGE,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};
	pthread_t t;

	h.p[0] = 'A';
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(uhmm_stats(&st, sizeof(st)), sizeof(st));
	busy = st.range_fault_busy;
	ASSERT_OK(pthread_create(&t, NULL, read_held_page, &h));
	while (!atomic_load(&h.started))
		usleep(100);
	usleep(100000);
	uhmm_migrate_vma_pages(&m);	/* no dst: nothing moves */
	uhmm_migrate_vma_finalize(&m);
	pthread_join(t, NULL);
	ASSERT_OK(h.ret);
	ASSERT_EQ(h.seen, 'A');
	ASSERT_EQ(uhmm_stats(&st, sizeof(st)), sizeof(st));
	ASSERT_GT(st.range_fault_busy - busy, 0);	/* it did meet the held page */
	ASSERT_LT(st.range_fault_busy - busy, 50);
	uhmm_mm_put(mm);
	uhmm_dmirror_close(h.d);
}

/* A page one migration holds is not collected by another, and comes back intact. */
TEST(migrate_busy_page_stays)
{
	struct uhmm_mm *mm = mm_or_skip();
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t s1[4], d1[4], s2[4], d2[4];
	struct uhmm_migrate_vma a = { .mm = mm, .src = s1, .dst = d1, .start = (uintptr_t)p,
				      .end = (uintptr_t)p + 4 * PAGE, .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM };
	struct uhmm_migrate_vma b = a;

	b.src = s2;
	b.dst = d2;
	b.start = (uintptr_t)p + 2 * PAGE;
	b.end = (uintptr_t)p + 4 * PAGE;
	memset(p, 7, 4 * PAGE);
	ASSERT_OK(uhmm_migrate_vma_setup(&a));
	ASSERT_EQ(a.cpages, 4);
	ASSERT_OK(uhmm_migrate_vma_setup(&b));
	ASSERT_EQ(b.cpages, 0);		/* all held by the first */
	uhmm_migrate_vma_pages(&b);
	uhmm_migrate_vma_finalize(&b);
	uhmm_migrate_vma_pages(&a);
	uhmm_migrate_vma_finalize(&a);
	for (int i = 0; i < 4 * (int)PAGE; i++)
		ASSERT_EQ(p[i], 7);
	uhmm_mm_put(mm);
}

/* One device allocation fails midway: that page stays, the rest move, nothing is lost. */
TEST(migrate_partial_failure)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE), mirror[8 * PAGE / sizeof(int)];
	uint8_t snap[8];
	int on_device = 0;

	fill_ints(ptr, 8 * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_FLAGS, ptr, NULL, UHMM_DMIRROR_FLAG_FAIL_ALLOC, &c));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 8, &c), -ENOENT);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, ptr, snap, 8, &c));
	for (int i = 0; i < 8; i++)
		on_device += (snap[i] & 0xf0) == UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL;
	ASSERT_EQ(on_device, 7);
	check_ints(ptr, 8 * PAGE, 1);
	uhmm_dmirror_close(d);
}

/* munmap of device-resident memory releases the device pages. */
TEST(migrate_munmap_frees_device_pages)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *ptr = map_anon(64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE), *mirror = malloc(64 * PAGE);
	struct uhmm_pagemap_stats st;

	fill_ints(ptr, 64 * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, ptr, mirror, 64, &c));
	ASSERT_OK(uhmm_dmirror_memstats(d, &st));
	ASSERT_EQ(st.mapped, 64);
	ASSERT_OK(munmap(ptr, 64 * PAGE));
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_SNAPSHOT, ptr, mirror, 1, &c));	/* syncs events */
	ASSERT_EQ(((uint8_t *)mirror)[0], UHMM_DMIRROR_PROT_ERROR);
	ASSERT_OK(uhmm_dmirror_memstats(d, &st));
	ASSERT_EQ(st.mapped, 0);
	ASSERT_EQ(st.allocated, 0);
	uhmm_dmirror_close(d);
}

/* The application's own userfaultfd on a range: uhmm refuses it cleanly. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
TEST(foreign_userfaultfd_refused)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE), buf[4 * PAGE];
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1);
	ASSERT_GE(fd, 0);
	ASSERT_OK(ioctl(fd, UFFDIO_API, &api));
	struct uffdio_register reg = { .range = { (uintptr_t)p, 4 * PAGE }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	ASSERT_OK(ioctl(fd, UFFDIO_REGISTER, &reg));
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_READ, p, buf, 4, &c), -EEXIST);
	ASSERT_EQ(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 4, &c), -EEXIST);
	close(fd);
	uhmm_dmirror_close(d);
}

/*
 * A driver of its own (not the reference device), on the public API only:
 * host-memory device pages, migration there and back. Four threads touch
 * the same device page at once: all read the data, and it migrates once.
 */
static char toy_mem[4][PAGE] __attribute__((aligned(4096)));
static int toy_faults;
static int toy_ready;	/* orders the test's writes to toy_mem before the worker's reads (TSan) */
static struct uhmm_pagemap *toy_pgmap;
static int toy_owner;

static void toy_free(struct uhmm_page *page) { (void)page; }

static int toy_to_ram(struct uhmm_vm_fault *vmf)
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = { .mm = vmf->mm, .src = &src, .dst = &dst, .start = vmf->address,
				      .end = vmf->address + PAGE, .pgmap_owner = &toy_owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page };
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	__atomic_fetch_add(&toy_faults, 1, __ATOMIC_RELAXED);
	(void)__atomic_load_n(&toy_ready, __ATOMIC_ACQUIRE);
	usleep(20000);	/* a slow device: the other threads pile up on the page */
	if (src & UHMM_MIGRATE_PFN_MIGRATE) {
		void *sys = uhmm_migrate_alloc_system_page(&dst);

		if (sys)
			memcpy(sys, toy_mem[uhmm_page_index(uhmm_migrate_pfn_to_page(src))], PAGE);
	}
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}
static const struct uhmm_pagemap_ops toy_ops = { .page_free = toy_free, .migrate_to_ram = toy_to_ram };

static void *toy_touch(void *arg)
{
	return (void *)(uintptr_t)(*(volatile int *)arg == 0x1234);
}

TEST(toy_driver_concurrent_faults_migrate_once)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src, dst;
	struct uhmm_migrate_vma m = { .mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p,
				      .end = (uintptr_t)p + PAGE, .pgmap_owner = &toy_owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM };
	struct uhmm_page *page;
	struct uhmm_pagemap_stats st;
	pthread_t t[4];

	p[0] = 0x1234;
	ASSERT_OK(uhmm_pagemap_add(mm, 4, &toy_owner, &toy_ops, NULL, &toy_pgmap));
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, 1);
	page = uhmm_pagemap_page(toy_pgmap, 2);
	ASSERT_OK(uhmm_page_init(page));
	ASSERT_EQ(uhmm_access_vm((uintptr_t)p, toy_mem[2], PAGE, 0), PAGE);
	dst = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_TRUE(src & UHMM_MIGRATE_PFN_MIGRATE);
	ASSERT_OK(uhmm_pagemap_stats(toy_pgmap, &st));
	ASSERT_EQ(st.mapped, 1);
	toy_mem[2][0] = 0x34;	/* the device changes the data meanwhile (little endian: 0x1234) */
	__atomic_store_n(&toy_ready, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < 4; i++)
		ASSERT_OK(pthread_create(&t[i], NULL, toy_touch, p));
	for (int i = 0; i < 4; i++) {
		void *ok;

		pthread_join(t[i], &ok);
		ASSERT_TRUE(ok);
	}
	ASSERT_EQ(__atomic_load_n(&toy_faults, __ATOMIC_ACQUIRE), 1);
	/* The worker drops its hold on the page just after waking the threads. */
	ASSERT_OK(uhmm_mm_sync(mm));
	ASSERT_OK(uhmm_pagemap_stats(toy_pgmap, &st));
	ASSERT_EQ(st.mapped, 0);
	ASSERT_EQ(st.allocated, 0);
	ASSERT_OK(uhmm_pagemap_remove(toy_pgmap));
	uhmm_mm_put(mm);
}

#include <stdatomic.h>

/*
 * munmap(), mmap(MAP_FIXED) and permission-removing mprotect() wait for a
 * migration in flight (the kernel's mmap_lock): the device maps what the
 * migration collected just before finalize, and a mapping replaced or made
 * read-only meanwhile would leave it a mapping nothing invalidates.
 */
struct map_change {
	int *p;
	int kind;		/* 0 munmap, 1 mmap(MAP_FIXED), 2 mprotect(PROT_READ) */
	atomic_int done;
	long ret;
};

static void *change_mapping(void *arg)
{
	struct map_change *c = arg;

	if (c->kind == 0)
		c->ret = munmap(c->p, PAGE);
	else if (c->kind == 1)
		c->ret = mmap(c->p, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
				 (void *)c->p ? 0 : -1;
	else
		c->ret = mprotect(c->p, PAGE, PROT_READ);
	atomic_store(&c->done, 1);
	return NULL;
}

TEST(mapping_changes_wait_for_migrations)
{
	struct uhmm_mm *mm = mm_or_skip();

	for (int kind = 0; kind < 3; kind++) {
		int *p = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
		uint64_t src, dst;
		struct uhmm_migrate_vma m = { .mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p,
					      .end = (uintptr_t)p + PAGE, .pgmap_owner = &toy_owner,
					      .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM };
		struct map_change c = { .p = p, .kind = kind };
		pthread_t t;

		p[0] = 7;
		ASSERT_OK(uhmm_migrate_vma_setup(&m));
		ASSERT_EQ(m.cpages, 1);
		ASSERT_OK(pthread_create(&t, NULL, change_mapping, &c));
		usleep(50000);
		ASSERT_EQ(atomic_load(&c.done), 0);	/* held off while the migration runs */
		uhmm_migrate_vma_pages(&m);	/* no destination: the page stays */
		uhmm_migrate_vma_finalize(&m);
		pthread_join(t, NULL);
		ASSERT_EQ(c.ret, 0);
		if (kind == 2)
			ASSERT_EQ(p[0], 7);	/* read-only now, data where it was */
		if (kind != 0)
			munmap(p, PAGE);
	}
	uhmm_mm_put(mm);
}

/* ---- migrate_to_ram() returning -EAGAIN: the device is using the page ---- */

static char busy_mem[2][PAGE] __attribute__((aligned(4096)));
static atomic_bool busy_device;		/* page 0 is in use by the device */
static atomic_int busy_retries;
static int busy_owner;

static void busy_free(struct uhmm_page *page) { (void)page; }

/* Bring vmf's page back from @mem (page i of the pool at mem[i]): a toy driver's migrate_to_ram(). */
static int copy_back_from(struct uhmm_vm_fault *vmf, void *owner, char (*mem)[PAGE])
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = { .mm = vmf->mm, .src = &src, .dst = &dst, .start = vmf->address,
				      .end = vmf->address + PAGE, .pgmap_owner = owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page };
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	if (src & UHMM_MIGRATE_PFN_MIGRATE) {
		void *sys = uhmm_migrate_alloc_system_page(&dst);

		if (sys)
			memcpy(sys, mem[uhmm_page_index(uhmm_migrate_pfn_to_page(src))], PAGE);
	}
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}

static int busy_to_ram(struct uhmm_vm_fault *vmf)
{
	if (uhmm_page_index(vmf->page) == 0 && atomic_load(&busy_device)) {
		atomic_fetch_add(&busy_retries, 1);
		return -EAGAIN;
	}
	return copy_back_from(vmf, &busy_owner, busy_mem);
}
static const struct uhmm_pagemap_ops busy_ops = { .page_free = busy_free, .migrate_to_ram = busy_to_ram };

static void *busy_touch(void *arg)
{
	return (void *)(intptr_t)*(volatile int *)arg;
}

/* Put page @i of @pgmap (owner @owner, its memory @mem) at @p, holding @value. */
static void place_page(struct uhmm_mm *mm, struct uhmm_pagemap *pgmap, void *owner, char (*mem)[PAGE], int *p,
		       unsigned int i, int value)
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = { .mm = mm, .src = &src, .dst = &dst, .start = (uintptr_t)p,
				      .end = (uintptr_t)p + PAGE, .pgmap_owner = owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM };
	struct uhmm_page *page = uhmm_pagemap_page(pgmap, i);

	p[0] = 1;
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_OK(uhmm_page_init(page));
	memset(mem[i], 0, PAGE);
	memcpy(mem[i], &value, sizeof(value));
	dst = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	ASSERT_TRUE(src & UHMM_MIGRATE_PFN_MIGRATE);
}

static void busy_place(struct uhmm_mm *mm, struct uhmm_pagemap *pgmap, int *p, unsigned int i, int value)
{
	place_page(mm, pgmap, &busy_owner, busy_mem, p, i, value);
}

/*
 * A CPU touch of a page the device is using waits, without poisoning, and
 * the worker serves other faults meanwhile (one on another page of the same
 * device completes while the first still waits); once the device lets go,
 * the first completes with the device's data.
 */
TEST(migrate_to_ram_eagain_retries_later)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *a = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *b = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_pagemap *pgmap;
	struct uhmm_pagemap_stats st;
	pthread_t t;
	void *got;

	ASSERT_OK(uhmm_pagemap_add(mm, 2, &busy_owner, &busy_ops, NULL, &pgmap));
	busy_place(mm, pgmap, a, 0, 0x5a5a);
	busy_place(mm, pgmap, b, 1, 0x6b6b);
	atomic_store(&busy_device, true);
	ASSERT_OK(pthread_create(&t, NULL, busy_touch, a));
	while (atomic_load(&busy_retries) < 3)	/* it came back more than once: deferred, not poisoned */
		usleep(1000);
	ASSERT_EQ(b[0], 0x6b6b);			/* the worker is free for other faults */
	atomic_store(&busy_device, false);
	pthread_join(t, &got);
	ASSERT_EQ((intptr_t)got, 0x5a5a);
	ASSERT_OK(uhmm_mm_sync(mm));
	ASSERT_OK(uhmm_pagemap_stats(pgmap, &st));
	ASSERT_EQ(st.poisoned, 0);
	ASSERT_EQ(st.allocated, 0);
	ASSERT_OK(uhmm_pagemap_remove(pgmap));
	uhmm_mm_put(mm);
}

/* ---- pages a fork() left copy-on-write ---- */

#define COW_PAGES 16
static char cow_mem[COW_PAGES][PAGE] __attribute__((aligned(4096)));
static int cow_owner;

static int cow_to_ram(struct uhmm_vm_fault *vmf)
{
	return copy_back_from(vmf, &cow_owner, cow_mem);
}
static const struct uhmm_pagemap_ops cow_ops = { .page_free = busy_free, .migrate_to_ram = cow_to_ram };

static void cow_child(void *arg)
{
	_exit(((int *)arg)[5] == 5 ? 0 : 1);
}

/*
 * After a fork() every page of the parent is copy-on-write until written,
 * even once the child has gone, and UFFDIO_MOVE refuses it as it refuses a
 * pinned page. A driver that copies with plain loads (as an OpenCL runtime
 * does, unlike uhmm_access_vm()) must still get the pages moved: uhmm
 * unshares them (found by uhmm-opencl: every launch after a fork failed).
 */
TEST(migrate_after_fork_copy_on_write)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(COW_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src[COW_PAGES], dst[COW_PAGES];
	struct uhmm_migrate_vma m = { .mm = mm, .src = src, .dst = dst, .start = (uintptr_t)p,
				      .end = (uintptr_t)p + COW_PAGES * PAGE, .pgmap_owner = &cow_owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM };
	struct uhmm_features f;
	struct uhmm_stats s0, s1;
	struct uhmm_pagemap *pgmap;

	fill_ints(p, COW_PAGES * PAGE, 1);
	ASSERT_EQ(run_child(cow_child, p), 0);
	ASSERT_OK(uhmm_query_features(&f));
	ASSERT_OK(uhmm_pagemap_add(mm, COW_PAGES, &cow_owner, &cow_ops, NULL, &pgmap));
	uhmm_stats(&s0, sizeof(s0));
	ASSERT_OK(uhmm_migrate_vma_setup(&m));
	ASSERT_EQ(m.cpages, COW_PAGES);
	for (unsigned int i = 0; i < COW_PAGES; i++) {
		struct uhmm_page *page = uhmm_pagemap_page(pgmap, i);

		ASSERT_OK(uhmm_page_init(page));
		memcpy(cow_mem[i], (char *)p + i * PAGE, PAGE);	/* plain loads: no pin, no unsharing */
		dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	}
	uhmm_migrate_vma_pages(&m);
	for (unsigned int i = 0; i < COW_PAGES; i++)
		ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);	/* committed, every one */
	uhmm_migrate_vma_finalize(&m);
	uhmm_stats(&s1, sizeof(s1));
	if ((f.flags & UHMM_FEAT_UFFD_MOVE) && !(f.flags & UHMM_FEAT_FALLBACK_FORCED))
		ASSERT_EQ(s1.zaps_unshared - s0.zaps_unshared, COW_PAGES);
	check_ints(p, COW_PAGES * PAGE, 1);	/* back through cow_to_ram() */
	ASSERT_OK(uhmm_pagemap_remove(pgmap));
	uhmm_mm_put(mm);
}

/* ---- device -> system straight from the driver's memory (uhmm_migrate_pfn_data()) ---- */

static char *data_mem;	/* the toy device's memory: uhmm_kmalloc(), 8 pages */
static int data_owner;

static int data_to_ram(struct uhmm_vm_fault *vmf)
{
	uint64_t src, dst;
	struct uhmm_migrate_vma m = { .mm = vmf->mm, .src = &src, .dst = &dst, .start = vmf->address,
				      .end = vmf->address + PAGE, .pgmap_owner = &data_owner,
				      .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page };
	int ret = uhmm_migrate_vma_setup(&m);

	if (ret)
		return ret;
	if (src & UHMM_MIGRATE_PFN_MIGRATE)
		dst = uhmm_migrate_pfn_data(data_mem + uhmm_page_index(uhmm_migrate_pfn_to_page(src)) * PAGE);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}
static const struct uhmm_pagemap_ops data_ops = { .page_free = busy_free, .migrate_to_ram = data_to_ram };

/*
 * A driver whose memory is host memory hands uhmm its pages as the source:
 * no staging page, no copy of its own. Both ways: a migration back of 8
 * pages (one run) and a CPU fault; the driver's memory is left as it was.
 */
TEST(migrate_to_system_from_driver_data)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *p = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t src[8], dst[8];
	struct uhmm_pagemap *pgmap;
	struct uhmm_migrate_vma m = { .mm = mm, .src = src, .dst = dst, .start = (uintptr_t)p,
				      .end = (uintptr_t)p + 8 * PAGE, .pgmap_owner = &data_owner };

	ASSERT_EQ(uhmm_migrate_pfn_data(NULL), 0);
	ASSERT_EQ(uhmm_migrate_pfn_data((char *)p + 16), 0);	/* not page-aligned */
	data_mem = uhmm_kmalloc(8 * PAGE);
	ASSERT_TRUE(data_mem);
	ASSERT_OK(uhmm_pagemap_add(mm, 8, &data_owner, &data_ops, NULL, &pgmap));
	for (int round = 0; round < 2; round++) {
		fill_ints(p, 8 * PAGE, 1);
		m.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM;
		ASSERT_OK(uhmm_migrate_vma_setup(&m));
		for (unsigned int i = 0; i < 8; i++) {
			ASSERT_OK(uhmm_page_init(uhmm_pagemap_page(pgmap, i)));
			memcpy(data_mem + i * PAGE, (char *)p + i * PAGE, PAGE);
			((int *)(data_mem + i * PAGE))[1] = -7;	/* the device's work */
			dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(uhmm_pagemap_page(pgmap, i)));
		}
		uhmm_migrate_vma_pages(&m);
		uhmm_migrate_vma_finalize(&m);
		if (round == 0) {	/* all of it back, driver-initiated */
			m.flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE;
			ASSERT_OK(uhmm_migrate_vma_setup(&m));
			ASSERT_EQ(m.cpages, 8);
			for (unsigned int i = 0; i < 8; i++)
				dst[i] = uhmm_migrate_pfn_data(data_mem + i * PAGE);
			uhmm_migrate_vma_pages(&m);
			for (unsigned int i = 0; i < 8; i++)
				ASSERT_TRUE(src[i] & UHMM_MIGRATE_PFN_MIGRATE);
			uhmm_migrate_vma_finalize(&m);
		}
		for (unsigned int i = 0; i < 8; i++) {	/* round 1: each page faults back through data_to_ram() */
			ASSERT_EQ(p[i * PAGE / sizeof(int) + 1], -7);
			ASSERT_EQ(p[i * PAGE / sizeof(int)], (int)(i * PAGE / sizeof(int)));
		}
		ASSERT_EQ(((int *)data_mem)[1], -7);	/* the driver's memory is its own */
	}
	ASSERT_OK(uhmm_mm_sync(mm));
	ASSERT_OK(uhmm_pagemap_remove(pgmap));
	uhmm_kfree(data_mem);
	uhmm_mm_put(mm);
}

static void *busy_release_later(void *arg)
{
	(void)arg;
	usleep(30000);
	atomic_store(&busy_device, false);
	return NULL;
}

/*
 * An eviction cannot be put off: uhmm_pagemap_remove() of a pagemap whose
 * device still uses a page waits (calling again) until the device lets go,
 * and the page's data comes back, not a poisoned page.
 */
TEST(migrate_to_ram_eagain_eviction_waits)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *a = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_pagemap *pgmap;
	pthread_t t;
	int retries;

	ASSERT_OK(uhmm_pagemap_add(mm, 2, &busy_owner, &busy_ops, NULL, &pgmap));
	busy_place(mm, pgmap, a, 0, 0x4c4c);
	atomic_store(&busy_retries, 0);
	atomic_store(&busy_device, true);
	ASSERT_OK(pthread_create(&t, NULL, busy_release_later, NULL));
	ASSERT_OK(uhmm_pagemap_remove(pgmap));	/* evicts page 0: waits for the device */
	pthread_join(t, NULL);
	retries = atomic_load(&busy_retries);
	ASSERT_GT(retries, 3);
	ASSERT_EQ(a[0], 0x4c4c);
	uhmm_mm_put(mm);
}

/* ---- a failed migrate_to_ram() poisons only the page it failed on ---- */

static char moved_mem[2][PAGE] __attribute__((aligned(4096)));
static int moved_owner;
static int *moved_from, *moved_to;	/* page 0's migrate_to_ram() moves moved_from's mapping onto moved_to */
static atomic_int moved_calls;

/*
 * Page 0: the program mremap()s another mapping, with page 1 in it, over
 * page 0's address while the driver runs (as a migrate_to_ram() waiting
 * for mmap_lock sees it), then the driver fails. Page 1 comes back as usual.
 */
static int moved_to_ram(struct uhmm_vm_fault *vmf)
{
	atomic_fetch_add(&moved_calls, 1);
	if (uhmm_page_index(vmf->page) == 0) {
		if (mremap(moved_from, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, moved_to) != moved_to)
			return -errno;
		return -EIO;
	}
	return copy_back_from(vmf, &moved_owner, moved_mem);
}
static const struct uhmm_pagemap_ops moved_ops = { .page_free = busy_free, .migrate_to_ram = moved_to_ram };

/*
 * The driver fails to return page 0, but by then another mapping's page
 * lives at that address: uhmm poisons nothing (it poisoned the newcomer,
 * whose data was then lost, until dp_poison() checked which page it
 * found), and the newcomer is evicted with its data. make stress found it.
 */
TEST(migrate_to_ram_failure_after_mremap_poisons_nothing)
{
	struct uhmm_mm *mm = mm_or_skip();
	int *a = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *b = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_stats before, after;
	struct uhmm_pagemap *pgmap;

	ASSERT_OK(uhmm_pagemap_add(mm, 2, &moved_owner, &moved_ops, NULL, &pgmap));
	place_page(mm, pgmap, &moved_owner, moved_mem, a, 0, 0x1234);
	place_page(mm, pgmap, &moved_owner, moved_mem, b, 1, 0x5678);
	moved_from = b;
	moved_to = a;
	atomic_store(&moved_calls, 0);
	ASSERT_EQ(uhmm_stats(&before, sizeof(before)), sizeof(before));
	ASSERT_OK(uhmm_pagemap_remove(pgmap));	/* evicts page 0 (fails, b moved onto a), then page 1 */
	ASSERT_EQ(uhmm_stats(&after, sizeof(after)), sizeof(after));
	ASSERT_EQ(after.poisons, before.poisons);
	ASSERT_GE(atomic_load(&moved_calls), 2);	/* page 1 went back through the driver */
	ASSERT_FALSE(read_sigbus(a));
	ASSERT_EQ(a[0], 0x5678);	/* page 1's data, where mremap() put it */
	uhmm_mm_put(mm);
}
