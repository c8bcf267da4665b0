// SPDX-License-Identifier: MIT
/*
 * Device memory: pagemaps (the kernel's dev_pagemap / memremap_pages) and
 * their pages. Every pagemap gets a range of device pfns from one
 * process-wide space starting at UHMM_DEVICE_PFN_BASE; ranges are never
 * reused, so a stale pfn can never name a page of another pagemap.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

#define PGMAP_MAX 4096

/*
 * The pfn space. Lookups (uhmm_pfn_to_page(), several per page of every
 * migration) take no lock: slots are only ever appended, each filled
 * before the count that shows it is published (release), and a removal
 * only clears the slot's pages pointer. A lookup reads nothing but these
 * arrays, never the pagemap itself, which may be freed meanwhile: as with
 * any pfn, a page of a pagemap being removed is the caller's race. @lock
 * orders the writers (add, remove). It was a rwlock taken by every lookup:
 * 15% of a migration's profile.
 */
static struct {
	pthread_mutex_t lock;
	struct uhmm_page *pages[PGMAP_MAX];	/* each slot's pages; NULL once removed */
	uint64_t first[PGMAP_MAX];		/* first pfn of each slot, increasing, kept */
	uint64_t npages[PGMAP_MAX];
	struct uhmm_pagemap *maps[PGMAP_MAX];	/* for registry_del (under lock) */
	size_t n;
	uint64_t next_pfn;
} reg = { PTHREAD_MUTEX_INITIALIZER, { NULL }, { 0 }, { 0 }, { NULL }, 0, UHMM_DEVICE_PFN_BASE };

static int registry_add(struct uhmm_pagemap *pgmap)
{
	int ret = 0;

	pthread_mutex_lock(&reg.lock);
	if (reg.n == PGMAP_MAX || reg.next_pfn + pgmap->npages > (1ULL << 53) - 1) {
		ret = -ENOSPC;
	} else {
		size_t i = reg.n;

		pgmap->pfn_first = reg.next_pfn;
		reg.next_pfn += pgmap->npages;
		__atomic_store_n(&reg.first[i], pgmap->pfn_first, __ATOMIC_RELAXED);
		__atomic_store_n(&reg.npages[i], pgmap->npages, __ATOMIC_RELAXED);
		__atomic_store_n(&reg.pages[i], pgmap->pages, __ATOMIC_RELAXED);
		reg.maps[i] = pgmap;
		__atomic_store_n(&reg.n, i + 1, __ATOMIC_RELEASE);	/* the slot is whole before it shows */
	}
	pthread_mutex_unlock(&reg.lock);
	return ret;
}

static void registry_del(struct uhmm_pagemap *pgmap)
{
	pthread_mutex_lock(&reg.lock);
	for (size_t i = 0; i < reg.n; i++)
		if (reg.maps[i] == pgmap) {
			reg.maps[i] = NULL;
			__atomic_store_n(&reg.pages[i], NULL, __ATOMIC_RELEASE);
		}
	pthread_mutex_unlock(&reg.lock);
}

UHMM_EXPORT struct uhmm_page *uhmm_pfn_to_page(uint64_t pfn)
{
	struct uhmm_page *pages;
	uint64_t first;
	size_t lo = 0, hi;

	if (pfn < UHMM_DEVICE_PFN_BASE)
		return NULL;
	hi = __atomic_load_n(&reg.n, __ATOMIC_ACQUIRE);
	while (lo < hi) {	/* lo = number of slots starting at or below pfn */
		size_t mid = lo + (hi - lo) / 2;

		if (__atomic_load_n(&reg.first[mid], __ATOMIC_RELAXED) <= pfn)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!lo)
		return NULL;
	pages = __atomic_load_n(&reg.pages[lo - 1], __ATOMIC_ACQUIRE);
	first = __atomic_load_n(&reg.first[lo - 1], __ATOMIC_RELAXED);
	if (!pages || pfn - first >= __atomic_load_n(&reg.npages[lo - 1], __ATOMIC_RELAXED))
		return NULL;
	return &pages[pfn - first];
}

UHMM_EXPORT int uhmm_pagemap_add(struct uhmm_mm *mm, uint64_t npages, void *owner,
				 const struct uhmm_pagemap_ops *ops, void *driver_data,
				 struct uhmm_pagemap **out)
{
	int ret = uhmm_pagemap_add_internal(mm, npages, owner, ops, driver_data, out);

	if (ret == 0)
		atomic_fetch_add(&mm->refs, 1);	/* a driver's pool keeps the mm */
	return ret;
}

/*
 * A pool uhmm keeps for itself (device-exclusive pages) holds no reference
 * on the mm: the mm's teardown empties and frees it.
 */
int uhmm_pagemap_add_internal(struct uhmm_mm *mm, uint64_t npages, void *owner,
			      const struct uhmm_pagemap_ops *ops, void *driver_data, struct uhmm_pagemap **out)
{
	struct uhmm_pagemap *pgmap;
	int ret;

	if (!mm || !ops || !out || !npages || !ops->page_free || !ops->migrate_to_ram)
		return -EINVAL;
	if (!uhmm_mm_is_current(mm) || npages > (1ULL << 40))
		return -EINVAL;
	pgmap = uhmm_kcalloc(1, sizeof(*pgmap));
	if (!pgmap)
		return -ENOMEM;
	pgmap->pages = uhmm_kcalloc(npages, sizeof(*pgmap->pages));
	if (!pgmap->pages) {
		uhmm_kfree(pgmap);
		return -ENOMEM;
	}
	pgmap->mm = mm;
	pgmap->npages = npages;
	pgmap->owner = owner;
	pgmap->ops = ops;
	pgmap->driver_data = driver_data;
	for (uint64_t i = 0; i < npages; i++)
		pgmap->pages[i].pgmap = pgmap;
	ret = registry_add(pgmap);
	if (ret) {
		uhmm_kfree(pgmap->pages);
		uhmm_kfree(pgmap);
		return ret;
	}
	*out = pgmap;
	return 0;
}

void uhmm_pagemap_free_internal(struct uhmm_pagemap *pgmap)
{
	registry_del(pgmap);
	uhmm_kfree(pgmap->pages);
	uhmm_kfree(pgmap);
}

/* Evict the pages still holding data; the number a migration held (busy). */
static uint64_t pagemap_evict(struct uhmm_pagemap *pgmap)
{
	uint64_t busy = 0;

	for (uint64_t i = 0; i < pgmap->npages; i++) {
		uint64_t addr;

		pthread_mutex_lock(&pgmap->mm->dp_lock);
		addr = pgmap->pages[i].vaddr;
		pthread_mutex_unlock(&pgmap->mm->dp_lock);
		if (addr && uhmm_dp_fault(pgmap->mm, addr, UHMM_FAULT_EVICT, 0) == -EBUSY)
			busy++;
	}
	return busy;
}

UHMM_EXPORT int uhmm_pagemap_remove(struct uhmm_pagemap *pgmap)
{
	if (!pgmap)
		return -EINVAL;
	/*
	 * Every page still holding data goes back through migrate_to_ram().
	 * A page a migration holds right now (a fault being served, say) is
	 * waited for: claims are short. References the driver itself keeps
	 * are its business: -EBUSY, and the pool stays.
	 */
	for (int tries = 0; tries < 5000; tries++) {
		if (pagemap_evict(pgmap) == 0 && atomic_load(&pgmap->allocated) == 0)
			break;
		if (atomic_load(&pgmap->mapped) == 0 && tries > 100)
			break;	/* only driver references left: no point waiting */
		usleep(1000);
	}
	if (atomic_load(&pgmap->allocated) != 0)
		return -EBUSY;
	struct uhmm_mm *mm = pgmap->mm;

	for (uint64_t i = 0, j; i < pgmap->npages; i = j) {	/* host memory left set: unregistered, a run at a time */
		uint64_t host = atomic_load_explicit(&pgmap->pages[i].host, memory_order_relaxed);

		for (j = i + 1; host && j < pgmap->npages &&
				atomic_load_explicit(&pgmap->pages[j].host, memory_order_relaxed) ==
					host + ((j - i) << UHMM_PAGE_SHIFT);
		     j++)
			;
		if (host)
			uhmm_zap_unregister_host(mm, host, (j - i) << UHMM_PAGE_SHIFT);
	}
	uhmm_pagemap_free_internal(pgmap);
	uhmm_mm_put(mm);
	return 0;
}

/* The pages [first, first + npages) of @pgmap, or -EINVAL. */
static int host_range_check(const struct uhmm_pagemap *pgmap, uint64_t first, uint64_t npages, const void *base)
{
	if (!pgmap || !npages || first > pgmap->npages || npages > pgmap->npages - first ||
	    ((uintptr_t)base & (UHMM_PAGE_SIZE - 1)))
		return -EINVAL;
	return 0;
}

UHMM_EXPORT int uhmm_pagemap_set_host_range(struct uhmm_pagemap *pgmap, uint64_t first, uint64_t npages, void *base)
{
	uint64_t b = (uintptr_t)base;
	int ret = host_range_check(pgmap, first, npages, base);

	if (ret || !base)
		return ret ? ret : -EINVAL;
	for (uint64_t i = first; i < first + npages; i++)
		if (atomic_load_explicit(&pgmap->pages[i].host, memory_order_relaxed))
			return -EINVAL;	/* set already: clear it first */
	if (!uhmm_has(UHMM_FEAT_UFFD_MOVE))
		return -EOPNOTSUPP;
	ret = uhmm_zap_register_host(pgmap->mm, b, npages << UHMM_PAGE_SHIFT);
	if (ret)
		return ret;
	for (uint64_t i = 0; i < npages; i++)
		atomic_store_explicit(&pgmap->pages[first + i].host, b + (i << UHMM_PAGE_SHIFT), memory_order_release);
	return 0;
}

UHMM_EXPORT int uhmm_pagemap_set_host_memory(struct uhmm_pagemap *pgmap, void *base)
{
	return pgmap ? uhmm_pagemap_set_host_range(pgmap, 0, pgmap->npages, base) : -EINVAL;
}

/*
 * Forget the host memory of [first, first + npages) (set by one call) and
 * unregister it: before the driver frees that memory, which another user
 * of the address space may then map (and a userfaultfd registration there
 * would stay behind).
 */
UHMM_EXPORT int uhmm_pagemap_clear_host_range(struct uhmm_pagemap *pgmap, uint64_t first, uint64_t npages)
{
	uint64_t base;
	int ret = host_range_check(pgmap, first, npages, NULL);

	if (ret)
		return ret;
	base = atomic_load_explicit(&pgmap->pages[first].host, memory_order_acquire);
	for (uint64_t i = 0; i < npages; i++)
		atomic_store_explicit(&pgmap->pages[first + i].host, 0, memory_order_release);
	if (base)
		uhmm_zap_unregister_host(pgmap->mm, base, npages << UHMM_PAGE_SHIFT);
	return 0;
}

/* Where @page keeps its data, for a move (UHMM_MIGRATE_PFN_MOVE); 0 if it has no host memory. */
uint64_t uhmm_page_host_addr(const struct uhmm_page *page)
{
	return atomic_load_explicit(&page->host, memory_order_acquire);
}

UHMM_EXPORT void *uhmm_pagemap_driver_data(const struct uhmm_pagemap *pgmap)
{
	return pgmap ? pgmap->driver_data : NULL;
}

UHMM_EXPORT void *uhmm_pagemap_owner(const struct uhmm_pagemap *pgmap)
{
	return pgmap ? pgmap->owner : NULL;
}

UHMM_EXPORT int uhmm_pagemap_stats(const struct uhmm_pagemap *pgmap, struct uhmm_pagemap_stats *out)
{
	if (!pgmap || !out)
		return -EINVAL;
	out->npages = pgmap->npages;
	out->allocated = atomic_load(&pgmap->allocated);
	out->free = out->npages - out->allocated;
	out->mapped = atomic_load(&pgmap->mapped);
	out->poisoned = atomic_load(&pgmap->poisoned);
	return 0;
}

UHMM_EXPORT struct uhmm_page *uhmm_pagemap_page(struct uhmm_pagemap *pgmap, uint64_t index)
{
	return pgmap && index < pgmap->npages ? &pgmap->pages[index] : NULL;
}

UHMM_EXPORT int uhmm_page_init(struct uhmm_page *page)
{
	unsigned int zero = 0;

	if (!page)
		return -EINVAL;
	if (!atomic_compare_exchange_strong(&page->refs, &zero, 1))
		return -EBUSY;
	atomic_fetch_add(&page->pgmap->allocated, 1);
	return 0;
}

UHMM_EXPORT void uhmm_page_get(struct uhmm_page *page)
{
	atomic_fetch_add(&page->refs, 1);
}

static struct uhmm_page *unit_head(const struct uhmm_page *page);

/* A page of a device unit leaves it: the rest are 4 KiB pages from now on. */
static void unit_break(struct uhmm_page *page)
{
	struct uhmm_page *head = unit_head(page);

	if (atomic_load_explicit(&head->order, memory_order_relaxed))
		atomic_store_explicit(&head->order, 0, memory_order_relaxed);
}

UHMM_EXPORT void uhmm_page_put(struct uhmm_page *page)
{
	if (!page)
		return;
	if (atomic_fetch_sub(&page->refs, 1) != 1)
		return;
	unit_break(page);
	atomic_fetch_sub(&page->pgmap->allocated, 1);
	page->pgmap->ops->page_free(page);
}

static struct uhmm_page *unit_head(const struct uhmm_page *page)
{
	return &page->pgmap->pages[uhmm_page_index(page) & ~(uint64_t)(UHMM_PMD_PAGES - 1)];
}

UHMM_EXPORT unsigned int uhmm_page_order(const struct uhmm_page *page)
{
	return page ? atomic_load_explicit(&unit_head(page)->order, memory_order_relaxed) : 0;
}

UHMM_EXPORT uint64_t uhmm_page_to_pfn(const struct uhmm_page *page)
{
	return page->pgmap->pfn_first + (uint64_t)(page - page->pgmap->pages);
}

UHMM_EXPORT struct uhmm_pagemap *uhmm_page_pgmap(const struct uhmm_page *page)
{
	return page->pgmap;
}

UHMM_EXPORT uint64_t uhmm_page_index(const struct uhmm_page *page)
{
	return (uint64_t)(page - page->pgmap->pages);
}

UHMM_EXPORT void *uhmm_page_zone_device_data(const struct uhmm_page *page)
{
	return page->zone_device_data;
}

UHMM_EXPORT void uhmm_page_set_zone_device_data(struct uhmm_page *page, void *data)
{
	page->zone_device_data = data;
}
