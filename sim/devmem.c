// SPDX-License-Identifier: MIT
/*
 * The reference device's memory and the commands that migrate to and from
 * it (after lib/test_hmm.c). Device memory is host memory that is not
 * mapped at any mirrored address: chunks of DM_CHUNK_DEV_PAGES pages, each
 * a uhmm pagemap, allocated on demand. Free pages sit on a free list;
 * page_free() puts them back.
 *
 * Lock order: dm->lock (device page table) is never held across a uhmm
 * migration call; dm->mem_lock (chunks, free list) is a leaf.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include "dmirror_internal.h"
#include "inject.h"

#define DM_CHUNK_DEV_PAGES 16384	/* 64 MiB of device memory per chunk */
#define DM_MAX_CHUNKS 64
#define DM_MIGRATE_PAGES 512		/* pages per migrate_vma call */
#define DM_FAULT_AROUND 16		/* pages brought back by a first CPU fault ... */
#define DM_FAULT_AROUND_MAX 2048	/* ... up to 8 MiB for a sequential scan */
#define DM_UNIT_PAGES 512		/* a 2 MiB unit: a THP migrated whole */
#define DM_UNIT_SIZE (DM_UNIT_PAGES * DM_PAGE_SIZE)

struct dmirror_chunk {
	struct uhmm_pagemap *pgmap;	/* its driver data is this chunk */
	char *mem;			/* backing store, DM_CHUNK_DEV_PAGES pages */
	unsigned char *is_free;		/* per page, under mem_lock: catches a double free */
	struct uhmm_dmirror *dm;
};

struct dmirror_devmem {
	pthread_mutex_t mem_lock;
	/*
	 * Every chunk is host memory uhmm can move pages into and out of
	 * (uhmm_pagemap_set_host_memory()): migrations move pages, not copy
	 * them. Set where uhmm can move at all (host_memory_moves()); cleared
	 * for good if a chunk cannot be registered.
	 */
	bool movable;
	struct dmirror_chunk chunks[DM_MAX_CHUNKS];
	unsigned int nchunks;
	struct uhmm_page **free;	/* free-list stack */
	size_t nfree;
};

static char device_owners[DM_NDEVICES];

void *dmirror_device_owner(unsigned int device)
{
	return &device_owners[device];
}

/* Chunks are only ever appended to a fixed array, and the count published last. */
static unsigned int devmem_nchunks(struct dmirror_devmem *mem)
{
	return __atomic_load_n(&mem->nchunks, __ATOMIC_ACQUIRE);
}

/* Do migrations move pages into and out of our memory (zero copy)? */
static bool devmem_movable(struct uhmm_dmirror *dm)
{
	return __atomic_load_n(&dm->devmem->movable, __ATOMIC_RELAXED) &&
	       !(__atomic_load_n(&dm->flags, __ATOMIC_RELAXED) & UHMM_DMIRROR_FLAG_COPY);
}

/*
 * The chunk a device page belongs to: its pagemap's driver data, no
 * search (the backing store is looked up a few times for every page a
 * migration moves).
 */
static struct dmirror_chunk *page_chunk(const struct uhmm_page *page)
{
	return uhmm_pagemap_driver_data(uhmm_page_pgmap(page));
}

static struct uhmm_dmirror *page_dmirror(const struct uhmm_page *page)
{
	return page_chunk(page)->dm;
}

/* The backing store of a device page. */
static char *page_mem(struct uhmm_page *page)
{
	return page_chunk(page)->mem + (uhmm_page_index(page) << DM_PAGE_SHIFT);
}

static unsigned char *page_free_flag(struct uhmm_page *page)
{
	return &page_chunk(page)->is_free[uhmm_page_index(page)];
}

/*
 * A page freed twice would be handed out twice, and two addresses would
 * share one page of device memory: uhmm's reference counting must never
 * let that happen, and the reference device says so loudly if it does.
 */
static void dmirror_page_free(struct uhmm_page *page)
{
	struct dmirror_devmem *mem = page_dmirror(page)->devmem;
	unsigned char *flag;

	pthread_mutex_lock(&mem->mem_lock);
	flag = page_free_flag(page);
	if (*flag) {
		fprintf(stderr, "dmirror: device page %p freed twice\n", (void *)page);
		abort();
	}
	*flag = 1;
	mem->free[mem->nfree++] = page;
	pthread_mutex_unlock(&mem->mem_lock);
}

static int dmirror_migrate_to_ram(struct uhmm_vm_fault *vmf);

static const struct uhmm_pagemap_ops dmirror_pagemap_ops = {
	.page_free = dmirror_page_free,
	.migrate_to_ram = dmirror_migrate_to_ram,
};

/* Add a chunk of device memory; caller holds mem_lock. */
static int devmem_add_chunk(struct uhmm_dmirror *dm)
{
	struct dmirror_devmem *mem = dm->devmem;
	struct dmirror_chunk *c = &mem->chunks[mem->nchunks];
	struct uhmm_page **grown;
	int ret;

	if (mem->nchunks == DM_MAX_CHUNKS)
		return -ENOMEM;
	grown = uhmm_krealloc(mem->free, (mem->nchunks + 1) * DM_CHUNK_DEV_PAGES * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	mem->free = grown;
	/*
	 * Device memory is not the program's: uhmm's own memory, which no
	 * migration can take (a stale pointer of the program's may well name
	 * an address this chunk now occupies) and no notifier watches.
	 */
	c->mem = uhmm_kmalloc(DM_CHUNK_DEV_PAGES * DM_PAGE_SIZE);
	if (!c->mem)
		return -ENOMEM;
	c->is_free = uhmm_kmalloc(DM_CHUNK_DEV_PAGES);
	c->dm = dm;
	ret = c->is_free ? uhmm_pagemap_add(dm->mm, DM_CHUNK_DEV_PAGES, dm->owner, &dmirror_pagemap_ops, c,
					    &c->pgmap) : -ENOMEM;
	if (ret) {
		uhmm_kfree(c->is_free);
		uhmm_kfree(c->mem);
		return ret;
	}
	if (uhmm_pagemap_set_host_memory(c->pgmap, c->mem))
		__atomic_store_n(&mem->movable, false, __ATOMIC_RELAXED);
	memset(c->is_free, 1, DM_CHUNK_DEV_PAGES);
	for (uint64_t i = DM_CHUNK_DEV_PAGES; i-- > 0;)
		mem->free[mem->nfree++] = uhmm_pagemap_page(c->pgmap, i);
	/* published last: readers take the count without mem_lock (devmem_nchunks()) */
	__atomic_store_n(&mem->nchunks, mem->nchunks + 1, __ATOMIC_RELEASE);
	return 0;
}

/* FAIL_ALLOC: the next allocation fails (the flag goes with it). */
static bool fail_alloc(struct uhmm_dmirror *dm)
{
	/* a plain load first: this runs for every page a migration allocates */
	return (__atomic_load_n(&dm->flags, __ATOMIC_RELAXED) & UHMM_DMIRROR_FLAG_FAIL_ALLOC) &&
	       (__atomic_fetch_and(&dm->flags, ~UHMM_DMIRROR_FLAG_FAIL_ALLOC, __ATOMIC_RELAXED) &
		UHMM_DMIRROR_FLAG_FAIL_ALLOC);
}

/* A device page with one reference, or NULL (out of memory, or FAIL_ALLOC). */
static struct uhmm_page *devmem_alloc(struct uhmm_dmirror *dm)
{
	struct dmirror_devmem *mem = dm->devmem;
	struct uhmm_page *page = NULL;

	if (fail_alloc(dm) || uhmm_inject(UHMM_INJECT_DEVICE_ALLOC))
		return NULL;
	pthread_mutex_lock(&mem->mem_lock);
	if (mem->nfree || devmem_add_chunk(dm) == 0) {
		page = mem->free[--mem->nfree];
		*page_free_flag(page) = 0;
	}
	pthread_mutex_unlock(&mem->mem_lock);
	if (page && uhmm_page_init(page)) {
		dmirror_page_free(page);	/* cannot happen: free pages have no reference */
		page = NULL;
	}
	return page;
}

/* Take the free unit at page @first of @c off the free list (mem_lock held). */
static void unit_take(struct dmirror_devmem *mem, struct dmirror_chunk *c, uint64_t first)
{
	size_t n = 0;

	memset(&c->is_free[first], 0, DM_UNIT_PAGES);
	for (size_t k = 0; k < mem->nfree; k++) {
		struct uhmm_page *p = mem->free[k];

		if (uhmm_page_pgmap(p) != c->pgmap || uhmm_page_index(p) - first >= DM_UNIT_PAGES)
			mem->free[n++] = p;
	}
	mem->nfree = n;
}

/* A 512-aligned run of free pages in @c, or -1 (mem_lock held). */
static int64_t unit_find(const struct dmirror_chunk *c)
{
	for (uint64_t first = 0; first < DM_CHUNK_DEV_PAGES; first += DM_UNIT_PAGES) {
		uint64_t k = 0;

		while (k < DM_UNIT_PAGES && c->is_free[first + k])
			k++;
		if (k == DM_UNIT_PAGES)
			return (int64_t)first;
	}
	return -1;
}

/*
 * 512 contiguous device pages, 512-aligned in their pagemap (2 MiB of
 * contiguous device memory), each with one reference: the first, or NULL
 * (out of memory, or FAIL_ALLOC: the kernel's test device then falls back
 * to base pages, and so does this one).
 */
static struct uhmm_page *devmem_alloc_unit(struct uhmm_dmirror *dm)
{
	struct dmirror_devmem *mem = dm->devmem;
	struct uhmm_page *head = NULL;

	if (fail_alloc(dm) || uhmm_inject(UHMM_INJECT_DEVICE_ALLOC))
		return NULL;
	pthread_mutex_lock(&mem->mem_lock);
	for (int tries = 0; !head && tries < 2; tries++) {
		for (unsigned int i = 0; !head && i < mem->nchunks; i++) {
			int64_t first = unit_find(&mem->chunks[i]);

			if (first >= 0) {
				unit_take(mem, &mem->chunks[i], (uint64_t)first);
				head = uhmm_pagemap_page(mem->chunks[i].pgmap, (uint64_t)first);
			}
		}
		if (!head && devmem_add_chunk(dm))
			break;
	}
	pthread_mutex_unlock(&mem->mem_lock);
	for (uint64_t j = 0; head && j < DM_UNIT_PAGES; j++)
		(void)uhmm_page_init(uhmm_pfn_to_page(uhmm_page_to_pfn(head) + j));	/* free: no reference */
	return head;
}

/*
 * A device page's way back. In a run of pages whose device memory is
 * contiguous (DM_DIRECT_RUN or more), uhmm copies them from our memory
 * straight into the new system pages, one UFFDIO_COPY for the run (no
 * staging copy: our memory is host memory, page aligned, out of every
 * migration's reach). Scattered pages go through uhmm's staging pages,
 * which are contiguous whatever the device pages are: one UFFDIO_COPY per
 * window instead of one per page. 0 when FAIL_ALLOC (or uhmm) says no
 * system memory.
 *
 * Movable memory (zero copy) moves from a shorter run on (move_run()).
 */
#define DM_DIRECT_RUN 16

/*
 * The shortest run of movable device memory that goes back by UFFDIO_MOVE
 * rather than through the staging pages. A move flushes the TLB of every
 * CPU running the process; a copy into an empty page-table entry flushes
 * nothing. In a command the service threads sleep, and a move costs ~1 us
 * a run against ~1.5 us a page copied: every run moves (uhmm bench,
 * MIGRATE_TO_SYS 16.7-17.5 -> 21.9-23.2 GB/s). In a CPU fault, the service
 * thread the same fault woke on the other CPU is usually running, and each
 * move's TLB flush sends it an IPI: a lone page moved made one fault-back
 * 28 -> 40 us. There a run moves from 8 pages on (the fault-back scan,
 * whose windows came back as runs of 1, 15, 1, 15 and 480 pages: 1.34-1.37x
 * -> 1.40-1.44x memcpy; one fault-back unchanged). docs/performance.md,
 * "Short runs of device memory move too".
 */
#define DM_FAULT_MOVE_RUN 8

static uint64_t move_run(const struct uhmm_migrate_vma *m)
{
	return m->fault_page ? DM_FAULT_MOVE_RUN : 1;
}

static uint64_t sysmem_from(struct uhmm_dmirror *dm, const void *dev, bool direct)
{
	uint64_t dst = 0;
	void *sys;

	if (fail_alloc(dm))
		return 0;
	if (direct)	/* a long run: the pages themselves go back (zero copy), or straight from us */
		return uhmm_migrate_pfn_data(dev) | (devmem_movable(dm) ? UHMM_MIGRATE_PFN_MOVE : 0);
	sys = uhmm_migrate_alloc_system_page(&dst);
	if (sys)
		memcpy(sys, dev, DM_PAGE_SIZE);
	return sys ? dst : 0;
}

/*
 * How many entries of @e from @i on (before @end), base pages carrying
 * @need, have device memory following each other? (src entries coming
 * back, dst entries going out) Within a chunk, consecutive pfns are
 * consecutive memory: the entries are compared, not looked up (a lookup
 * per page was a tenth of a fault-back's service time).
 */
static uint64_t mem_run(const uint64_t *e, uint64_t i, uint64_t end, uint64_t need)
{
	struct uhmm_page *page = uhmm_migrate_pfn_to_page(e[i]);
	uint64_t pfn = uhmm_migrate_pfn_to_pfn(e[i]), n = 1, in_chunk;

	if (!page)
		return 1;
	in_chunk = DM_CHUNK_DEV_PAGES - uhmm_page_index(page);	/* pages of its chunk from it on */
	end = end - i > in_chunk ? i + in_chunk : end;
	while (i + n < end && (e[i + n] & need) && !(e[i + n] & UHMM_MIGRATE_PFN_COMPOUND) &&
	       uhmm_migrate_pfn_to_pfn(e[i + n]) == pfn + n)
		n++;
	return n;
}

/* Can uhmm move pages into host memory here (uhmm_pagemap_set_host_memory())? */
static bool host_memory_moves(void)
{
	struct uhmm_features f;

	return uhmm_query_features(&f) == 0 && (f.flags & UHMM_FEAT_UFFD_MOVE) &&
	       !(f.flags & UHMM_FEAT_FALLBACK_FORCED);
}

int dmirror_devmem_attach(struct uhmm_dmirror *dm)
{
	dm->devmem = uhmm_kcalloc(1, sizeof(*dm->devmem));
	if (!dm->devmem)
		return -ENOMEM;
	pthread_mutex_init(&dm->devmem->mem_lock, NULL);
	dm->devmem->movable = host_memory_moves();
	return 0;
}

/*
 * A READ or WRITE of device memory (or of uhmm's copy of a page a device
 * holds exclusive) by an instance, under that instance's lock. Two
 * instances of one device share its pagemap owner, so each maps
 * the other's device pages as its own and may copy them while the other
 * does (two engines of one device): a race on the data, by design, as on
 * hardware, and no race on anything else. Invisible to TSan on purpose
 * (not instrumented, volatile so the loop stays a loop and does not become
 * an intercepted memcpy); every other access to device memory is seen.
 */
__attribute__((no_sanitize("thread")))
void dmirror_copy_device_memory(void *dst, const void *src)
{
	volatile uint64_t *d = dst;
	const volatile uint64_t *s = src;

	for (size_t i = 0; i < DM_PAGE_SIZE / sizeof(uint64_t); i++)
		d[i] = s[i];
}

int dmirror_devmem_copy(struct uhmm_dmirror *dm, uint64_t pfn, void *buf, int to_device)
{
	struct uhmm_page *page = uhmm_pfn_to_page(pfn);
	char *p = page ? page_mem(page) : NULL;

	(void)dm;
	if (!p)
		return -EFAULT;
	if (to_device)
		dmirror_copy_device_memory(p, buf);
	else
		dmirror_copy_device_memory(buf, p);
	return 0;
}

int dmirror_devmem_is_local(struct uhmm_dmirror *dm, uint64_t pfn)
{
	struct uhmm_page *page = uhmm_pfn_to_page(pfn);

	return page && uhmm_pagemap_owner(uhmm_page_pgmap(page)) == dm->owner;
}

/* ---- system -> device ---- */

/* Entry @k keeps no device page: it stays in system memory. */
static void drop_dst(const struct uhmm_migrate_vma *m, uint64_t k)
{
	uhmm_page_put(uhmm_migrate_pfn_to_page(m->dst[k]));
	((struct uhmm_migrate_vma *)m)->dst[k] = 0;
}

/* Copy the source pages [i, j) into their device pages with one scatter-gather access. */
static void copy_entries(struct uhmm_migrate_vma *m, uint64_t i, uint64_t j, struct iovec *iov)
{
	for (uint64_t k = i; k < j; k++)
		iov[k - i] = (struct iovec){ page_mem(uhmm_migrate_pfn_to_page(m->dst[k])), DM_PAGE_SIZE };
	if (uhmm_access_vm_iov(m->start + (i << DM_PAGE_SHIFT), iov, (int)(j - i), 0) >= 0)
		return;
	for (uint64_t k = i; k < j; k++) {	/* unmapped under us: page by page */
		if (uhmm_access_vm(m->start + (k << DM_PAGE_SHIFT), iov[k - i].iov_base, DM_PAGE_SIZE, 0) < 0)
			drop_dst(m, k);
	}
}

/*
 * Bring the source pages [i, j) of @m into their device pages: where our
 * memory for DM_DIRECT_RUN pages or more follows each other, uhmm moves
 * them in (zero copy, one UFFDIO_MOVE per run); the rest is read with one
 * scatter-gather access per run (moving pages one by one costs more than
 * copying them), unless we promised to move every page (ZERO_COPY: our
 * setup left them writable). Entries whose copy fails lose their device page. An
 * injected copy failure at page k is a transfer failing midway: k and the
 * pages after it in the run are not copied.
 */
static void migrate_copy_run(struct uhmm_dmirror *dm, struct uhmm_migrate_vma *m, uint64_t i, uint64_t j,
			     struct iovec *iov)
{
	bool zero_copy = m->flags & UHMM_MIGRATE_VMA_ZERO_COPY;	/* we promised to move every page */
	uint64_t stop = i, copy_from = i;

	while (stop < j && !uhmm_inject(UHMM_INJECT_COPY_TO_DEVICE))
		stop++;
	if (zero_copy && !devmem_movable(dm))
		stop = i;	/* a chunk would not take moves after all (rare): these stay */
	while (j > stop)
		drop_dst(m, --j);
	for (uint64_t k = i, n; devmem_movable(dm) && k < j; k += n) {
		n = mem_run(m->dst, k, j, UHMM_MIGRATE_PFN_VALID);
		if (n < DM_DIRECT_RUN && !zero_copy)
			continue;
		if (copy_from < k)
			copy_entries(m, copy_from, k, iov);
		for (uint64_t q = k; q < k + n; q++)
			m->dst[q] |= UHMM_MIGRATE_PFN_MOVE;
		copy_from = k + n;
	}
	if (copy_from < j)
		copy_entries(m, copy_from, j, iov);
}

static bool base_with_data(const struct uhmm_migrate_vma *m, uint64_t i)
{
	return (m->src[i] & UHMM_MIGRATE_PFN_VALID) && !(m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) && m->dst[i];
}

static void unit_put(struct uhmm_page *head)
{
	for (uint64_t j = 0; j < DM_UNIT_PAGES; j++)
		uhmm_page_put(uhmm_pfn_to_page(uhmm_page_to_pfn(head) + j));
}

/*
 * A unit offered whole (a THP, or 2 MiB of holes): 2 MiB of device memory
 * and one copy; without a unit to give (FAIL_ALLOC, fragmentation), base
 * pages for its 512 entries, as the kernel's test device does.
 */
static void unit_alloc_and_copy(struct uhmm_dmirror *dm, struct uhmm_migrate_vma *m, uint64_t i,
				struct iovec *iov)
{
	uint64_t s = m->src[i], flags = s & UHMM_MIGRATE_PFN_WRITE, at = m->start + (i << DM_PAGE_SHIFT);
	struct uhmm_page *head = devmem_alloc_unit(dm);

	if (head) {
		char *mem = page_mem(head);	/* a unit's pages are contiguous in its chunk */
		bool ok = !uhmm_inject(UHMM_INJECT_COPY_TO_DEVICE);

		if (ok && (s & UHMM_MIGRATE_PFN_VALID) && devmem_movable(dm))
			flags |= UHMM_MIGRATE_PFN_MOVE;	/* moved whole (a THP: one PMD) by uhmm */
		else if (ok && (s & UHMM_MIGRATE_PFN_VALID))
			ok = uhmm_access_vm(at, mem, DM_UNIT_SIZE, 0) >= 0;
		else if (ok)
			memset(mem, 0, DM_UNIT_SIZE);
		if (ok)
			m->dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(head)) | UHMM_MIGRATE_PFN_COMPOUND | flags;
		else
			unit_put(head);	/* stays in system memory */
		return;
	}
	for (uint64_t j = 0; j < DM_UNIT_PAGES; j++) {
		struct uhmm_page *dpage = devmem_alloc(dm);

		if (!dpage)
			break;	/* the rest stays in system memory */
		iov[j] = (struct iovec){ page_mem(dpage), DM_PAGE_SIZE };
		m->dst[i + j] = uhmm_migrate_pfn(uhmm_page_to_pfn(dpage)) | flags;
		if (!(s & UHMM_MIGRATE_PFN_VALID))
			memset(page_mem(dpage), 0, DM_PAGE_SIZE);
	}
	/* moved page by page where we promised to move (the pages were just taken: they have memory) */
	for (uint64_t j = 0; (m->flags & UHMM_MIGRATE_VMA_ZERO_COPY) && (s & UHMM_MIGRATE_PFN_VALID) && j < DM_UNIT_PAGES; j++)
		m->dst[i + j] |= m->dst[i + j] ? UHMM_MIGRATE_PFN_MOVE : 0;
	/* all or nothing: a split unit whose pages ran out stays in system memory */
	if (!m->dst[i + DM_UNIT_PAGES - 1] ||
	    ((s & UHMM_MIGRATE_PFN_VALID) && !(m->flags & UHMM_MIGRATE_VMA_ZERO_COPY) &&
	     uhmm_access_vm_iov(at, iov, DM_UNIT_PAGES, 0) < 0))
		for (uint64_t j = 0; j < DM_UNIT_PAGES; j++)
			if (m->dst[i + j])
				drop_dst(m, i + j);
}

/*
 * Pages taken from the free list one by one come in the reverse of the
 * order they were freed: a window that came back from us in address order
 * goes out again in descending memory. Runs of base entries whose device
 * memory descends are turned round, so that their memory ascends with the
 * addresses: one move (or copy) per run instead of one per page. A run
 * stops at a unit's first entry by its src, not its dst (so not mem_run()):
 * a unit split into base pages has base dst entries, filled already, which
 * must not be swapped.
 */
static void ascending_dst(struct uhmm_migrate_vma *m)
{
	for (uint64_t i = 0, j; i < m->npages; i = j) {
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {	/* a unit: allocated and filled already */
			j = i + DM_UNIT_PAGES;
			continue;
		}
		for (j = i + 1; j < m->npages && (m->dst[j - 1] & UHMM_MIGRATE_PFN_VALID) &&
				(m->dst[j] & UHMM_MIGRATE_PFN_VALID) && !(m->src[j] & UHMM_MIGRATE_PFN_COMPOUND) &&
				page_mem(uhmm_migrate_pfn_to_page(m->dst[j])) ==
					page_mem(uhmm_migrate_pfn_to_page(m->dst[j - 1])) - DM_PAGE_SIZE;
		     j++)
			;
		for (uint64_t a = i, b = j - 1; j - i > 1 && a < b; a++, b--) {
			uint64_t pa = m->dst[a] & ~UHMM_MIGRATE_PFN_WRITE, pb = m->dst[b] & ~UHMM_MIGRATE_PFN_WRITE;

			m->dst[a] = pb | (m->dst[a] & UHMM_MIGRATE_PFN_WRITE);
			m->dst[b] = pa | (m->dst[b] & UHMM_MIGRATE_PFN_WRITE);
		}
	}
}

/* Allocate device pages for the collected entries and copy the data in. */
static void migrate_alloc_and_copy(struct uhmm_dmirror *dm, struct uhmm_migrate_vma *m)
{
	struct iovec iov[DM_MIGRATE_PAGES];

	for (uint64_t i = 0; i < m->npages; i++) {
		struct uhmm_page *dpage;

		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
			unit_alloc_and_copy(dm, m, i, iov);
			i += DM_UNIT_PAGES - 1;
			continue;
		}
		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		dpage = devmem_alloc(dm);
		if (!dpage)
			continue;	/* stays in system memory */
		m->dst[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(dpage)) | (m->src[i] & UHMM_MIGRATE_PFN_WRITE);
	}
	ascending_dst(m);
	for (uint64_t i = 0; i < m->npages; i++) {	/* a hole or the zero page: zeros on the device */
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND)
			i += DM_UNIT_PAGES - 1;	/* a unit: filled already */
		else if ((m->dst[i] & UHMM_MIGRATE_PFN_VALID) && !(m->src[i] & UHMM_MIGRATE_PFN_VALID))
			memset(page_mem(uhmm_migrate_pfn_to_page(m->dst[i])), 0, DM_PAGE_SIZE);
	}
	/* Runs of pages with data to copy: one system call each (units copied themselves). */
	for (uint64_t i = 0, j; i < m->npages; i = j + 1) {
		for (; i < m->npages && !(base_with_data(m, i)); i++)
			;
		for (j = i; j < m->npages && base_with_data(m, j); j++)
			;
		if (i < j)
			migrate_copy_run(dm, m, i, j, iov);
	}
}

static uint64_t dpt_get_raw(struct uhmm_dmirror *dm, uint64_t addr)
{
	return uhmm_radix_get(&dm->pt, addr >> DM_PAGE_SHIFT);
}

/*
 * Remember the address a device page of ours is mapped at (eviction clears
 * it). Only the instance whose pool the page is in: another instance of the
 * device may map it too (same owner), under its own lock, not ours.
 */
void dmirror_devmem_note_addr(struct uhmm_dmirror *dm, uint64_t pfn, uint64_t addr)
{
	struct uhmm_page *page = uhmm_pfn_to_page(pfn);

	if (page && page_dmirror(page) == dm)
		uhmm_page_set_zone_device_data(page, (void *)(uintptr_t)addr);
}

/*
 * Map what migrated in the device page table (the kernel's finalize_and_map),
 * unless an invalidation came since @seq (taken after setup): the program
 * may have discarded or unmapped a page that pages() had moved, and the
 * page is freed at finalize. The kernel's test driver maps regardless; a
 * device that did would read the discarded data, then whatever the freed
 * page holds next. Not mapping is always safe: the next device access
 * faults and uhmm_range_fault() reports what is there now.
 */
static void migrate_map(struct uhmm_dmirror *dm, const struct uhmm_migrate_vma *m, unsigned long seq)
{
	pthread_mutex_lock(&dm->lock);
	if (uhmm_interval_read_retry(&dm->notifier, seq))
		goto out;	/* invalidate() sets the sequence under our lock: one look is enough */
	for (uint64_t i = 0; i < m->npages; i++) {
		uint64_t addr = m->start + (i << DM_PAGE_SHIFT);

		if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) || !(m->dst[i] & UHMM_MIGRATE_PFN_VALID))
			continue;
		/* writable only if the CPU could write it (the kernel's finalize_and_map) */
		uhmm_radix_set(&dm->pt, addr >> DM_PAGE_SHIFT,
			       DPT_READ | DPT_DEVPAGE | ((m->dst[i] & UHMM_MIGRATE_PFN_WRITE) ? DPT_WRITE : 0) |
				       (uhmm_migrate_pfn_to_pfn(m->dst[i]) << DPT_PFN_SHIFT));
		dmirror_devmem_note_addr(dm, uhmm_migrate_pfn_to_pfn(m->dst[i]), addr);
	}
out:
	pthread_mutex_unlock(&dm->lock);
}

__thread struct uhmm_dmirror *dmirror_migrating;

/* uhmm_migrate_vma_setup() as @dm's own migration (see dmirror_migrating). */
static int migrate_setup_as(struct uhmm_dmirror *dm, struct uhmm_migrate_vma *m)
{
	struct uhmm_dmirror *outer = dmirror_migrating_enter(dm);
	int ret = uhmm_migrate_vma_setup(m);

	dmirror_migrating_leave(outer);
	return ret;
}

/*
 * Where our memory takes moves, we move every page in and read none, and
 * uhmm leaves them writable meanwhile (UHMM_MIGRATE_VMA_ZERO_COPY: no write
 * protection, the largest part of a migration's setup).
 */
static unsigned long zero_copy_flag(struct uhmm_dmirror *dm)
{
	return devmem_movable(dm) ? UHMM_MIGRATE_VMA_ZERO_COPY : 0;
}

static int migrate_chunk_to_dev(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	uint64_t src[DM_MIGRATE_PAGES], dst[DM_MIGRATE_PAGES];
	struct uhmm_migrate_vma m = {
		.mm = dm->mm, .src = src, .dst = dst, .start = start, .end = end, .pgmap_owner = dm->owner,
		.flags = UHMM_MIGRATE_VMA_SELECT_SYSTEM | UHMM_MIGRATE_VMA_SELECT_COMPOUND | zero_copy_flag(dm),
	};
	int ret = migrate_setup_as(dm, &m);
	unsigned long seq;

	if (ret)
		return ret;
	seq = uhmm_interval_read_begin(&dm->notifier);	/* after setup's own MIGRATE invalidation */
	migrate_alloc_and_copy(dm, &m);
	uhmm_migrate_vma_pages(&m);
	(void)uhmm_inject(UHMM_INJECT_MAP_DELAY);	/* a device slow to map, when asked */
	migrate_map(dm, &m, seq);
	uhmm_migrate_vma_finalize(&m);
	return 0;
}

/* Every page of the range must have a VMA with read permission. */
static int apply_check_readable(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg)
{
	(void)dm;
	(void)arg;
	for (uint64_t i = 0; i < (range->end - range->start) >> DM_PAGE_SHIFT; i++)
		if (range->hmm_pfns[i] & UHMM_PFN_ERROR)
			return -EINVAL;
	return 0;
}

static int check_range_readable(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	uint64_t pfns[DM_CHUNK_PAGES];
	struct uhmm_range range = { .notifier = &dm->notifier, .hmm_pfns = pfns, .dev_private_owner = dm->owner };

	return dmirror_range_chunks(dm, &range, start, end, apply_check_readable, NULL);
}

/*
 * The device pages of table entries [@index, @index + @n) (under dm->lock)
 * as far as they are pages of this device: a reference on each into
 * @pages, which keeps its memory from being reused once the lock is
 * dropped, and their memory into @iov, contiguous memory as one segment
 * (*@niov of them). Returns how many pages it took.
 */
uint64_t dmirror_devmem_get_run(struct uhmm_dmirror *dm, uint64_t index, uint64_t n, struct uhmm_page **pages,
				struct iovec *iov, int *niov)
{
	uint64_t i;

	*niov = 0;
	for (i = 0; i < n; i++) {
		uint64_t e = uhmm_radix_get(&dm->pt, index + i);
		struct uhmm_page *page = (e & DPT_DEVPAGE) ? uhmm_pfn_to_page(e >> DPT_PFN_SHIFT) : NULL;
		char *mem;

		/* ours: dmirror_devmem_is_local(), without looking the pfn up again */
		if (!page || uhmm_pagemap_owner(uhmm_page_pgmap(page)) != dm->owner || !(mem = page_mem(page)))
			break;
		uhmm_page_get(page);
		pages[i] = page;
		if (*niov && (char *)iov[*niov - 1].iov_base + iov[*niov - 1].iov_len == mem)
			iov[*niov - 1].iov_len += DM_PAGE_SIZE;
		else
			iov[(*niov)++] = (struct iovec){ mem, DM_PAGE_SIZE };
	}
	return i;
}

void dmirror_devmem_put_run(struct uhmm_page **pages, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		uhmm_page_put(pages[i]);
}

/*
 * After copying a run without dm->lock (and under it again): how many of
 * its pages, from the first, are still mapped to the same device page? A
 * reference keeps a page's memory from being reused, not its data from
 * leaving: a migration to system memory may move the page out of device
 * memory (UFFDIO_MOVE, zero copy), and then the copy read a hole. But a
 * migration drops the page's entries (ours, and another instance's
 * through its invalidation) before anything moves, and the page cannot
 * come back to the same device page while referenced: a page still mapped
 * as it was stayed in place all through the copy.
 */
static uint64_t run_intact(struct uhmm_dmirror *dm, uint64_t index, struct uhmm_page **pages, uint64_t n)
{
	uint64_t i;

	for (i = 0; i < n; i++) {
		uint64_t e = uhmm_radix_get(&dm->pt, index + i);

		if (!(e & DPT_DEVPAGE) || uhmm_pfn_to_page(e >> DPT_PFN_SHIFT) != pages[i])
			break;
	}
	return i;
}

/*
 * Write a run that dmirror_devmem_get_run() took at @index to @ptr in this
 * process, with dm->lock (held on entry and on return) dropped meanwhile:
 * the write may fault into uhmm, and a fault-back of a device page takes
 * the lock. Returns how many of the run's pages, from the first, were
 * copied in place (run_intact()), or -EFAULT.
 */
int64_t dmirror_devmem_write_run(struct uhmm_dmirror *dm, uint64_t index, struct uhmm_page **pages, uint64_t n,
				 const struct iovec *iov, int niov, uint64_t ptr)
{
	ssize_t ret;

	pthread_mutex_unlock(&dm->lock);
	ret = uhmm_access_vm_iov(ptr, iov, niov, UHMM_ACCESS_WRITE);
	pthread_mutex_lock(&dm->lock);
	return ret < 0 ? -EFAULT : (int64_t)run_intact(dm, index, pages, n);
}

/*
 * Read the range back through the device page table, straight from device
 * memory into the caller's buffer: -ENOENT, with the buffer untouched, if a
 * page is not on this device. The write runs without the lock, because it
 * may fault: the caller's buffer may itself be on the device, and its
 * fault-back needs the lock (holding it here hung, test
 * migrate_read_back_into_device_resident_buffer); the references keep the
 * pages' memory. A page a CPU touch took back meanwhile makes it -ENOENT,
 * as if the touch came first, but with the buffer written.
 */
static int read_back_device(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *c)
{
	struct uhmm_page **pages = uhmm_kmalloc(c->npages * sizeof(*pages));
	struct iovec *iov = uhmm_kmalloc(c->npages * sizeof(*iov));
	uint64_t n = 0;
	int niov = 0, ret = pages && iov ? 0 : -ENOMEM;

	if (!ret) {
		int64_t copied;

		pthread_mutex_lock(&dm->lock);
		n = dmirror_devmem_get_run(dm, c->addr >> DM_PAGE_SHIFT, c->npages, pages, iov, &niov);
		copied = n < c->npages ? -ENOENT
				       : dmirror_devmem_write_run(dm, c->addr >> DM_PAGE_SHIFT, pages, n, iov, niov, c->ptr);
		pthread_mutex_unlock(&dm->lock);
		/* short: a CPU touch took a page back meanwhile, as if before the read-back */
		ret = copied < 0 ? (int)copied : (uint64_t)copied < n ? -ENOENT : 0;
	}
	dmirror_devmem_put_run(pages, n);
	uhmm_kfree(iov);
	uhmm_kfree(pages);
	if (!ret) {
		c->cpages = c->npages;
		c->faults = 0;
	}
	return ret;
}

static int migrate_to_dev(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *c)
{
	uint64_t end = c->addr + (c->npages << DM_PAGE_SHIFT);
	int ret = check_range_readable(dm, c->addr, end);

	for (uint64_t a = c->addr; !ret && a < end; a += DM_MIGRATE_PAGES * DM_PAGE_SIZE)
		ret = migrate_chunk_to_dev(dm, a, end - a > DM_MIGRATE_PAGES * DM_PAGE_SIZE
							  ? a + DM_MIGRATE_PAGES * DM_PAGE_SIZE : end);
	return ret ? ret : read_back_device(dm, c);
}

/* ---- device -> system ---- */

/*
 * Device -> system: copy device pages into system pages and drop them from
 * the device page table. The copy and the unmapping from our page table are one
 * step under our lock: a device WRITE either lands before the copy (and
 * goes with it) or finds no entry and faults (and waits for the page).
 */
/* A unit comes back whole (2 MiB of system memory, one copy), or page by page. */
static void unit_copy_to_sys(struct uhmm_dmirror *dm, struct uhmm_migrate_vma *m, uint64_t i, const char *dev)
{
	bool fail = fail_alloc(dm);	/* "the system cannot give 2 MiB" */
	char *sys;

	if (!fail && devmem_movable(dm)) {	/* moved whole: a THP stays one */
		m->dst[i] = uhmm_migrate_pfn_data(dev) | UHMM_MIGRATE_PFN_COMPOUND | UHMM_MIGRATE_PFN_MOVE;
		return;
	}
	sys = fail ? NULL : uhmm_migrate_alloc_system_huge_page(&m->dst[i]);
	if (sys) {
		memcpy(sys, dev, DM_UNIT_SIZE);
		return;
	}
	for (uint64_t j = 0; j < DM_UNIT_PAGES; j++)
		m->dst[i + j] = sysmem_from(dm, dev + (j << DM_PAGE_SHIFT), true);	/* contiguous */
}

/*
 * Drop the entries that got a system page from our page table (a unit's
 * 512 with it). Set to 0, not cleared: a clear frees the nodes it empties,
 * and a lone page's round trip then freed and made four nodes each time
 * (+1.5 us a fault-back). Consecutive keys cost a compare each (the tree
 * keeps its last leaf).
 */
static void dpt_drop_leaving(struct uhmm_dmirror *dm, const struct uhmm_migrate_vma *m)
{
	for (uint64_t i = 0; i < m->npages; i++) {
		uint64_t n = (m->dst[i] & UHMM_MIGRATE_PFN_COMPOUND) ? DM_UNIT_PAGES : 1;

		for (uint64_t j = 0; (m->dst[i] & UHMM_MIGRATE_PFN_VALID) && j < n; j++)
			uhmm_radix_set(&dm->pt, (m->start >> DM_PAGE_SHIFT) + i + j, 0);
		i += n - 1;
	}
}

static void migrate_copy_to_sys(struct uhmm_dmirror *dm, struct uhmm_migrate_vma *m)
{
	uint64_t run_start = 0, run_end = 0;	/* the run of contiguous device memory entry i is in */
	char *run_mem = NULL;			/* ... its memory ... */
	bool direct = false;			/* ... and is it long enough to be copied straight from us? */

	pthread_mutex_lock(&dm->lock);
	for (uint64_t i = 0; i < m->npages; i++) {
		struct uhmm_page *spage = uhmm_migrate_pfn_to_page(m->src[i]);

		if (!spage || !(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) || uhmm_inject(UHMM_INJECT_COPY_TO_SYSTEM))
			continue;	/* not ours to move, or the copy failed: it stays */
		if (m->src[i] & UHMM_MIGRATE_PFN_COMPOUND) {
			unit_copy_to_sys(dm, m, i, page_mem(spage));	/* contiguous in its chunk */
			i += DM_UNIT_PAGES - 1;
			continue;
		}
		if (i >= run_end) {
			uint64_t n = mem_run(m->src, i, m->npages, UHMM_MIGRATE_PFN_MIGRATE);

			run_start = i;
			run_end = i + n;
			run_mem = page_mem(spage);
			direct = n >= (devmem_movable(dm) ? move_run(m) : DM_DIRECT_RUN);
		}
		m->dst[i] = sysmem_from(dm, run_mem + ((i - run_start) << DM_PAGE_SHIFT), direct);
	}
	/* The data is leaving the device: its mappings go (our own MIGRATE events keep them). */
	dpt_drop_leaving(dm, m);
	pthread_mutex_unlock(&dm->lock);
}

static uint64_t count_migrated(const struct uhmm_migrate_vma *m)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < m->npages; i++)
		n += (m->src[i] & UHMM_MIGRATE_PFN_MIGRATE) && (m->dst[i] & UHMM_MIGRATE_PFN_VALID);
	return n;
}

/* Was entry @k collected, alone or in a unit offered whole? (before pages()) */
static bool entry_collected(const struct uhmm_migrate_vma *m, uint64_t k)
{
	uint64_t into = ((m->start >> DM_PAGE_SHIFT) + k) % DM_UNIT_PAGES;

	return (m->src[k] & UHMM_MIGRATE_PFN_MIGRATE) ||
	       (k >= into && (m->src[k - into] & UHMM_MIGRATE_PFN_COMPOUND));
}

/*
 * Returns 0 with *@migrated counted and *@first saying what became of entry
 * @fi (the faulting page's): 1 moved (or its address went away meanwhile),
 * 0 not collected (another migration held it), -1 no system page for it.
 */
static int migrate_range_to_sys_with(struct uhmm_dmirror *dm, void *owner, uint64_t start, uint64_t end,
				     struct uhmm_page *fault_page, uint64_t *migrated, int *first, uint64_t fi,
				     uint64_t *src, uint64_t *dst)
{
	struct uhmm_migrate_vma m = {
		.mm = dm->mm, .src = src, .dst = dst, .start = start, .end = end, .pgmap_owner = owner,
		.flags = UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE | UHMM_MIGRATE_VMA_SELECT_COMPOUND,
		.fault_page = fault_page,
	};
	int ret = migrate_setup_as(dm, &m);
	bool collected;

	if (ret)
		return ret;
	collected = entry_collected(&m, fi);
	migrate_copy_to_sys(dm, &m);
	uhmm_migrate_vma_pages(&m);
	*migrated += count_migrated(&m);
	if (first)
		*first = !collected ? 0 : (dst[fi] & UHMM_MIGRATE_PFN_VALID) ? 1 : -1;	/* -1: no system page */
	uhmm_migrate_vma_finalize(&m);
	return 0;
}

/*
 * As migrate_range_to_sys_with(), with arrays for the range: on the stack
 * up to DM_MIGRATE_PAGES (a command's chunk, a unit), else allocated (a
 * fault-around window of up to DM_FAULT_AROUND_MAX). Without memory for
 * them, the window shrinks to what the stack holds: it starts at the
 * faulting page, which stays in it.
 */
static int migrate_range_to_sys(struct uhmm_dmirror *dm, void *owner, uint64_t start, uint64_t end,
				struct uhmm_page *fault_page, uint64_t *migrated, int *first, uint64_t fi)
{
	uint64_t src_on_stack[DM_MIGRATE_PAGES], dst_on_stack[DM_MIGRATE_PAGES];
	uint64_t n = (end - start) >> DM_PAGE_SHIFT, *src = src_on_stack, *dst = dst_on_stack;
	int ret;

	if (n > DM_MIGRATE_PAGES) {	/* a fault-around window, which starts at the faulting page */
		uint64_t *both = uhmm_kmalloc(2 * n * sizeof(*both));	/* setup zeroes both halves */

		if (both) {
			src = both;
			dst = both + n;
		} else {
			end = start + DM_MIGRATE_PAGES * DM_PAGE_SIZE;
		}
	}
	ret = migrate_range_to_sys_with(dm, owner, start, end, fault_page, migrated, first, fi, src, dst);
	if (src != src_on_stack)
		uhmm_kfree(src);
	return ret;
}

static int migrate_to_sys(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *c)
{
	uint64_t end = c->addr + (c->npages << DM_PAGE_SHIFT), migrated = 0;
	int ret = 0;

	for (uint64_t a = c->addr; !ret && a < end; a += DM_MIGRATE_PAGES * DM_PAGE_SIZE)
		ret = migrate_range_to_sys(dm, dm->owner, a,
					   end - a > DM_MIGRATE_PAGES * DM_PAGE_SIZE ? a + DM_MIGRATE_PAGES * DM_PAGE_SIZE : end,
					   NULL, &migrated, NULL, 0);
	if (!ret) {
		c->cpages = migrated;
		c->faults = 0;
	}
	return ret;
}

/*
 * How many pages to bring back with the fault at @addr: a fault where one
 * of the recent windows ended continues a sequential scan, and that
 * stream's window doubles (up to 8 MiB: a fault of a scan costs ~80 us
 * whatever its window, on this 2-CPU VM mostly the other CPU's share, and
 * 2 MiB windows left the scan at 9.8 GB/s against 14.5-15.1 with 8 MiB);
 * any other fault starts a new
 * stream at 16 pages, replacing the oldest. Not fewer: a fault's round
 * trip (~30 us here) costs as much as copying a hundred pages, so random
 * access gains from the neighbours it brings (halving it down to one page
 * made a random scan 1.4x slower in uhmm bench). Several streams: threads
 * scanning at once each keep their own (with one shared hint, two threads
 * kept each other's windows at 16 pages: 8 GB/s for one thread, 1.3 for
 * two, uhmm bench --scaling). Racy on purpose: a lost update only costs a
 * smaller window.
 */
static uint64_t fault_around_pages(struct uhmm_dmirror *dm, uint64_t addr)
{
	uint64_t n = DM_FAULT_AROUND;
	unsigned int k;

	for (k = 0; k < DM_FA_STREAMS; k++)
		if (addr == __atomic_load_n(&dm->fa[k].next, __ATOMIC_RELAXED))
			break;
	if (k < DM_FA_STREAMS) {
		n = __atomic_load_n(&dm->fa[k].pages, __ATOMIC_RELAXED) * 2;
		n = n > DM_FAULT_AROUND_MAX ? DM_FAULT_AROUND_MAX : n < DM_FAULT_AROUND ? DM_FAULT_AROUND : n;
	} else {
		k = (unsigned int)(__atomic_fetch_add(&dm->fa_victim, 1, __ATOMIC_RELAXED) % DM_FA_STREAMS);
	}
	__atomic_store_n(&dm->fa[k].pages, n, __ATOMIC_RELAXED);
	__atomic_store_n(&dm->fa[k].next, addr + n * DM_PAGE_SIZE, __ATOMIC_RELAXED);
	return n;
}

/*
 * The CPU touched one of our pages: bring it back, with the pages after it
 * (the kernel lets a driver migrate more than the faulting page, faulting
 * page first: it is entry 0 of the window, copied first). The window adapts
 * (fault_around_pages()): a sequential scan takes one fault per 8 MiB.
 */
static int dmirror_migrate_to_ram(struct uhmm_vm_fault *vmf)
{
	struct uhmm_dmirror *dm = page_dmirror(vmf->page);
	uint64_t migrated = 0, start = vmf->address;
	uint64_t end = start + fault_around_pages(dm, start) * DM_PAGE_SIZE;
	int first = 0;
	int ret;

	if (uhmm_page_order(vmf->page)) {	/* part of a unit: the unit comes back whole */
		start = vmf->address & ~(uint64_t)(DM_UNIT_SIZE - 1);
		end = start + DM_UNIT_SIZE;
	}
	ret = migrate_range_to_sys(dm, uhmm_pagemap_owner(uhmm_page_pgmap(vmf->page)), start, end, vmf->page,
				   &migrated, &first, (vmf->address - start) >> DM_PAGE_SHIFT);
	if (ret)
		return ret;
	/* Not even collected (another migration held it): uhmm looks again. */
	return first < 0 ? -ENOMEM : 0;
}

/* ---- eviction ---- */

/* Evict one chunk with migrate_device_range (no addresses needed). */
static int evict_chunk(struct uhmm_dmirror *dm, struct dmirror_chunk *chunk)
{
	uint64_t n = DM_CHUNK_DEV_PAGES, first = uhmm_page_to_pfn(uhmm_pagemap_page(chunk->pgmap, 0));
	uint64_t *src = uhmm_kcalloc(n, sizeof(*src)), *dst = uhmm_kcalloc(n, sizeof(*dst));
	struct uhmm_dmirror *outer = dmirror_migrating_enter(dm);	/* as in migrate_setup_as() */
	int ret = src && dst ? uhmm_migrate_device_range(src, first, n) : -ENOMEM;

	dmirror_migrating_leave(outer);

	/* As in migrate_copy_to_sys(): copy and unmap from our table in one step. */
	pthread_mutex_lock(&dm->lock);
	for (uint64_t i = 0; !ret && i < n; i++) {
		uint64_t addr, e;

		if (!(src[i] & UHMM_MIGRATE_PFN_MIGRATE))
			continue;
		addr = (uint64_t)(uintptr_t)uhmm_page_zone_device_data(uhmm_pagemap_page(chunk->pgmap, i));
		e = addr ? dpt_get_raw(dm, addr) : 0;
		if ((e & DPT_DEVPAGE) && e >> DPT_PFN_SHIFT == first + i)
			uhmm_radix_set(&dm->pt, addr >> DM_PAGE_SHIFT, 0);	/* still this page at that address */
		if (uhmm_inject(UHMM_INJECT_COPY_TO_SYSTEM))
			continue;	/* the copy failed: the page stays (a CPU touch brings it back) */
		dst[i] = uhmm_migrate_pfn_data(chunk->mem + (i << DM_PAGE_SHIFT)) |
			 (devmem_movable(dm) ? UHMM_MIGRATE_PFN_MOVE : 0);
	}
	pthread_mutex_unlock(&dm->lock);
	if (!ret) {
		uhmm_migrate_device_pages(src, dst, n);
		uhmm_migrate_device_finalize(src, dst, n);
	}
	uhmm_kfree(src);
	uhmm_kfree(dst);
	return ret;
}

static int dmirror_release(struct uhmm_dmirror *dm)
{
	int ret = 0;

	pthread_mutex_lock(&dm->lock);
	/* Every device-page mapping goes: the pages are leaving. */
	uhmm_radix_free(&dm->pt);
	pthread_mutex_unlock(&dm->lock);
	for (unsigned int i = 0, n = devmem_nchunks(dm->devmem); i < n && !ret; i++)
		ret = evict_chunk(dm, &dm->devmem->chunks[i]);
	return ret;
}

/*
 * Evict everything, then remove the pagemaps. If one cannot be removed (a
 * page still referenced), its memory and our bookkeeping must outlive it:
 * leak them rather than let a late page_free() touch freed memory.
 * Returns 0 or -EBUSY.
 */
int dmirror_devmem_detach(struct uhmm_dmirror *dm)
{
	struct dmirror_devmem *mem = dm->devmem;
	int ret = 0;

	dmirror_release(dm);
	for (unsigned int i = 0; i < mem->nchunks; i++) {
		/* Evicts anything left (pages migrated meanwhile), then frees. */
		if (uhmm_pagemap_remove(mem->chunks[i].pgmap) == 0)
			uhmm_kfree(mem->chunks[i].mem);
		else
			ret = -EBUSY;
	}
	if (ret)
		return ret;
	for (unsigned int i = 0; i < mem->nchunks; i++)
		uhmm_kfree(mem->chunks[i].is_free);
	uhmm_kfree(mem->free);
	pthread_mutex_destroy(&mem->mem_lock);
	uhmm_kfree(mem);
	dm->devmem = NULL;
	return 0;
}

__attribute__((visibility("default"))) int uhmm_dmirror_memstats(struct uhmm_dmirror *dm,
								 struct uhmm_pagemap_stats *out)
{
	struct uhmm_pagemap_stats one;

	if (!dm || !out || !dm->devmem)
		return -EINVAL;
	/* Faults already taken finish their bookkeeping first. */
	uhmm_mm_sync(dm->mm);
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&dm->devmem->mem_lock);
	for (unsigned int i = 0; i < dm->devmem->nchunks; i++) {
		uhmm_pagemap_stats(dm->devmem->chunks[i].pgmap, &one);
		out->npages += one.npages;
		out->allocated += one.allocated;
		out->free += one.free;
		out->mapped += one.mapped;
		out->poisoned += one.poisoned;
	}
	pthread_mutex_unlock(&dm->devmem->mem_lock);
	return 0;
}

/* Free our copy of the bookkeeping without touching the pagemaps (a forked child's). */
void dmirror_devmem_forget(struct uhmm_dmirror *dm)
{
	if (!dm->devmem)
		return;
	uhmm_kfree(dm->devmem->free);
	uhmm_kfree(dm->devmem);
	dm->devmem = NULL;
}

int dmirror_migrate_cmd(struct uhmm_dmirror *dm, unsigned int cmd, struct uhmm_dmirror_cmd *c)
{
	int ret;

	switch (cmd) {
	case UHMM_DMIRROR_MIGRATE_TO_DEV:
		return migrate_to_dev(dm, c);
	case UHMM_DMIRROR_MIGRATE_TO_SYS:
		return migrate_to_sys(dm, c);
	case UHMM_DMIRROR_RELEASE:
		ret = dmirror_release(dm);
		if (!ret) {
			c->cpages = 0;
			c->faults = 0;
		}
		return ret;
	default:
		return -EINVAL;
	}
}
