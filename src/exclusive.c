// SPDX-License-Identifier: MIT
/*
 * Device-exclusive access: the kernel's make_device_exclusive().
 *
 * The kernel swaps the page's PTE for a device-exclusive entry: the device
 * may use the page atomically, and any CPU access faults, tells the
 * drivers (MMU_NOTIFY_EXCLUSIVE, no owner) and restores the PTE. uhmm does
 * it with the migration machinery: the page moves into a pool of host
 * memory that uhmm keeps as a pagemap of its own (owner: excl_owner, no
 * device's), so the CPU page is out of the page table and the device uses
 * the pool's copy. A CPU touch is then an ordinary fault-back through
 * excl_to_ram(); munmap/madvise free the pool page, mremap moves it, fork
 * brings it back first, a device's uhmm_range_fault() that needs the page
 * revokes it: all as for a device-private page, with no new paths in the
 * rest of uhmm. Taking it raises EXCLUSIVE with the taking device's owner
 * (its driver skips its own event, so the read_begin() it took before stays
 * valid); revoking raises EXCLUSIVE with no owner (every driver drops it).
 *
 * The pool grows by chunks of EXCL_CHUNK_PAGES pages and is freed with the
 * mm, after every page in it went back to the CPU. @excl_lock guards the
 * chunk list; it is taken before dp_lock, never under it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define EXCL_CHUNK_PAGES 512
#define EXCL_TRIES 16

struct uhmm_excl_chunk {
	struct uhmm_excl_chunk *next;
	struct uhmm_pagemap *pgmap;
	char *mem;			/* EXCL_CHUNK_PAGES pages of host memory */
};

static char excl_owner;			/* the pool's pagemap owner */

static void *excl_mem(const struct uhmm_page *page)
{
	const struct uhmm_excl_chunk *c = uhmm_pagemap_driver_data(uhmm_page_pgmap(page));

	return c->mem + (uhmm_page_index(page) << UHMM_PAGE_SHIFT);
}

static void excl_page_free(struct uhmm_page *page)
{
	(void)page;	/* no references left: uhmm_page_init() takes it again */
}

/* A CPU (or another device) touches the page: revoke, copy it back. */
static int excl_to_ram(struct uhmm_vm_fault *vmf)
{
	uint64_t src = 0, dst = 0;
	struct uhmm_migrate_vma m = {
		.mm = vmf->mm, .src = &src, .dst = &dst, .start = vmf->address, .end = vmf->address + UHMM_PAGE_SIZE,
		.pgmap_owner = &excl_owner, .flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE, .fault_page = vmf->page,
	};
	int ret = uhmm_migrate_setup_as(&m, UHMM_NOTIFY_EXCLUSIVE, NULL);
	void *sys;

	if (ret)
		return ret;
	if ((src & UHMM_MIGRATE_PFN_MIGRATE) && (sys = uhmm_migrate_alloc_system_page(&dst)))
		memcpy(sys, excl_mem(uhmm_migrate_pfn_to_page(src)), UHMM_PAGE_SIZE);
	uhmm_migrate_vma_pages(&m);
	uhmm_migrate_vma_finalize(&m);
	/* no system page to put it in: uhmm poisons it (SIGBUS), never zeros */
	return (src & UHMM_MIGRATE_PFN_MIGRATE) && !(dst & UHMM_MIGRATE_PFN_VALID) ? -ENOMEM : 0;
}

static const struct uhmm_pagemap_ops excl_ops = { .page_free = excl_page_free, .migrate_to_ram = excl_to_ram };

/* A new chunk at the head of the list (under excl_lock). */
static struct uhmm_excl_chunk *excl_chunk_new(struct uhmm_mm *mm)
{
	struct uhmm_excl_chunk *c = uhmm_kcalloc(1, sizeof(*c));
	long mem;

	if (!c)
		return NULL;
	/* uhmm's own memory: a migration can never take the pool's pages */
	mem = (long)(uintptr_t)uhmm_kmalloc(EXCL_CHUNK_PAGES * UHMM_PAGE_SIZE);
	if (!mem) {
		uhmm_kfree(c);
		return NULL;
	}
	/* fork() brings every page back before it copies: a child never needs the pool */
	syscall(SYS_madvise, mem, EXCL_CHUNK_PAGES * UHMM_PAGE_SIZE, MADV_DONTFORK);
	c->mem = (char *)mem;
	if (uhmm_pagemap_add_internal(mm, EXCL_CHUNK_PAGES, &excl_owner, &excl_ops, c, &c->pgmap)) {
		uhmm_kfree((void *)mem);
		uhmm_kfree(c);
		return NULL;
	}
	c->next = mm->excl_chunks;
	mm->excl_chunks = c;
	return c;
}

/* Take pool page @i of @c if it is free, and remember where the search got to (excl_lock held). */
static struct uhmm_page *excl_try(struct uhmm_mm *mm, struct uhmm_excl_chunk *c, uint64_t i)
{
	struct uhmm_page *page = uhmm_pagemap_page(c->pgmap, i);

	if (uhmm_page_init(page))
		return NULL;
	mm->excl_hint = c;
	mm->excl_hint_index = i + 1;
	return page;
}

/*
 * A free pool page with one reference (the migration's), or NULL. The
 * search starts where the last one ended (pages are taken in order and
 * mostly given back in order), so a take is O(1) in the common case and
 * the whole pool is looked at only when it is nearly full.
 */
static struct uhmm_page *excl_alloc(struct uhmm_mm *mm)
{
	struct uhmm_excl_chunk *hint;
	struct uhmm_page *page = NULL;

	pthread_mutex_lock(&mm->excl_lock);
	hint = mm->excl_hint;
	for (uint64_t i = mm->excl_hint_index; hint && !page && i < EXCL_CHUNK_PAGES; i++)
		page = excl_try(mm, hint, i);
	for (struct uhmm_excl_chunk *c = mm->excl_chunks; c && !page; c = c->next)
		for (uint64_t i = 0; i < EXCL_CHUNK_PAGES && !page; i++)
			page = excl_try(mm, c, i);
	if (!page) {
		struct uhmm_excl_chunk *c = excl_chunk_new(mm);

		if (c)
			page = excl_try(mm, c, 0);
	}
	pthread_mutex_unlock(&mm->excl_lock);
	return page;
}

/*
 * The page at @addr could not be collected. Exclusive for @owner already:
 * that is the answer, with no event (a driver retrying after an unrelated
 * invalidation would otherwise revoke its own page, and see that
 * revocation, forever). A device's page (another device's, or exclusive for
 * another owner) comes back first, as the kernel's write fault brings it
 * back; a page a migration holds is waited for. -EAGAIN: try again.
 */
static int excl_not_collected(struct uhmm_mm *mm, uint64_t addr, void *owner, void **mem)
{
	uint64_t e;
	int ret;

	pthread_mutex_lock(&mm->dp_lock);
	e = uhmm_radix_get(&mm->devpriv, addr >> UHMM_PAGE_SHIFT);
	if (!(e & DP_FLAGS) && DP_PAGE(e) && uhmm_pagemap_owner(uhmm_page_pgmap(DP_PAGE(e))) == &excl_owner &&
	    uhmm_page_zone_device_data(DP_PAGE(e)) == owner) {
		*mem = excl_mem(DP_PAGE(e));
		pthread_mutex_unlock(&mm->dp_lock);
		return 0;
	}
	pthread_mutex_unlock(&mm->dp_lock);
	if (e & DP_BUSY) {
		uhmm_dp_wait_unclaimed(mm, addr);
		return -EAGAIN;
	}
	if (!DP_PAGE(e))
		return -EBUSY;	/* a page uhmm cannot take (pinned, a file page): the kernel's -EBUSY */
	ret = uhmm_dp_fault(mm, addr, UHMM_FAULT_WRITE, 0);
	return ret == 0 || ret == -EBUSY ? -EAGAIN : ret;
}

/* One attempt: the page at @addr into the pool. 0 with *@mem, or -errno (-EAGAIN: again). */
static int excl_take(struct uhmm_mm *mm, uint64_t addr, void *owner, void **mem)
{
	uint64_t src = 0, dst = 0;
	struct uhmm_migrate_vma m = {
		.mm = mm, .src = &src, .dst = &dst, .start = addr, .end = addr + UHMM_PAGE_SIZE,
		.pgmap_owner = &excl_owner, .flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM,
	};
	struct uhmm_page *page;
	int ret = uhmm_migrate_setup_as(&m, UHMM_NOTIFY_EXCLUSIVE, owner);
	void *p;

	if (ret)
		return ret;
	if (!(src & UHMM_MIGRATE_PFN_MIGRATE)) {
		uhmm_migrate_vma_finalize(&m);
		return excl_not_collected(mm, addr, owner, mem);
	}
	page = excl_alloc(mm);
	if (!page) {
		uhmm_migrate_vma_finalize(&m);
		return -ENOMEM;
	}
	p = excl_mem(page);
	uhmm_page_set_zone_device_data(page, owner);	/* whose it is */
	/* claimed and write-protected: the data holds still while it is copied */
	if (!(src & UHMM_MIGRATE_PFN_VALID))
		memset(p, 0, UHMM_PAGE_SIZE);	/* a hole or the zero page: the write fault's new page */
	else if (uhmm_access_vm(addr, p, UHMM_PAGE_SIZE, 0) != (ssize_t)UHMM_PAGE_SIZE)
		src &= ~UHMM_MIGRATE_PFN_MIGRATE;	/* cannot read it: leave it where it is */
	if (src & UHMM_MIGRATE_PFN_MIGRATE)
		dst = uhmm_migrate_pfn(uhmm_page_to_pfn(page));
	else
		uhmm_page_put(page);
	uhmm_migrate_vma_pages(&m);
	ret = (src & UHMM_MIGRATE_PFN_MIGRATE) ? 0 : -EAGAIN;	/* pages() clears it if the commit failed */
	uhmm_migrate_vma_finalize(&m);	/* drops our reference: the table keeps its own */
	if (ret == 0)
		*mem = p;
	return ret;
}

UHMM_EXPORT int uhmm_make_device_exclusive(struct uhmm_mm *mm, uint64_t addr, void *owner, void **mem)
{
	struct uhmm_vma v;
	int n, ret = -EBUSY;

	if (!mm || !mem || (addr & (UHMM_PAGE_SIZE - 1)) || !uhmm_mm_is_current(mm) ||
	    uhmm_check_range(addr, addr + UHMM_PAGE_SIZE))
		return -EINVAL;
	n = uhmm_vma_list(addr, addr + UHMM_PAGE_SIZE, &v, 1);
	if (n < 0)
		return n;
	if (n == 0 || v.start > addr || uhmm_kmem_owns(addr, addr + UHMM_PAGE_SIZE))
		return -EFAULT;	/* no memory of the program's here */
	if (v.flags & (UHMM_VMA_SHARED | UHMM_VMA_FILE | UHMM_VMA_SPECIAL | UHMM_VMA_HUGETLB))
		return -EOPNOTSUPP;	/* private anonymous memory only */
	if (!(v.flags & UHMM_VMA_READ) || !(v.flags & UHMM_VMA_WRITE))
		return -EFAULT;	/* the kernel's write fault would fail */
	for (int i = 0; i < EXCL_TRIES && (ret == -EBUSY || ret == -EAGAIN); i++) {
		ret = excl_take(mm, addr, owner, mem);
		if (ret == -EBUSY)
			break;
	}
	if (ret == 0)
		uhmm_stat_add(UHMM_STAT(exclusive_pages), 1);
	return ret == -EAGAIN ? -EBUSY : ret;
}

void uhmm_excl_fini(struct uhmm_mm *mm)
{
	struct uhmm_excl_chunk *c, *next;

	pthread_mutex_lock(&mm->excl_lock);
	c = mm->excl_chunks;
	mm->excl_chunks = NULL;
	mm->excl_hint = NULL;
	pthread_mutex_unlock(&mm->excl_lock);
	for (; c; c = next) {
		struct uhmm_pagemap_stats st;

		next = c->next;
		for (uint64_t i = 0; i < EXCL_CHUNK_PAGES; i++) {
			struct uhmm_page *page = uhmm_pagemap_page(c->pgmap, i);
			uint64_t addr;

			pthread_mutex_lock(&mm->dp_lock);
			addr = page->vaddr;
			pthread_mutex_unlock(&mm->dp_lock);
			if (addr)	/* every page back to the CPU before the userfaultfd goes */
				(void)uhmm_dp_fault(mm, addr, UHMM_FAULT_EVICT, 0);
		}
		uhmm_pagemap_stats(c->pgmap, &st);
		if (st.allocated) {	/* still in use: leak it rather than free memory a mapping names */
			uhmm_log(UHMM_LOG_WARN, "uhmm: %llu device-exclusive pages could not go back",
				 (unsigned long long)st.allocated);
			uhmm_stat_add(UHMM_STAT(pages_leaked), st.allocated);
			continue;
		}
		uhmm_pagemap_free_internal(c->pgmap);
		uhmm_kfree(c->mem);
		uhmm_kfree(c);
	}
}
