// SPDX-License-Identifier: MIT
/* The device-memory and migration API: argument checks, page lifecycle, a minimal driver. */
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
	ASSERT_EQ(p[0], 'A');	/* reads go on; the write has not landed */
	uhmm_migrate_vma_pages(&m);	/* no dst: nothing moves */
	uhmm_migrate_vma_finalize(&m);
	pthread_join(t, NULL);
	ASSERT_EQ(p[0], 'W');
	uhmm_mm_put(mm);
	uhmm_dmirror_close(d);
}
