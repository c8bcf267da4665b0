// SPDX-License-Identifier: MIT
/*
 * Migration between system memory and device-private memory, in the
 * kernel's three steps (mm/migrate_device.c):
 *
 *  setup:    register the range MISSING|WP; invalidate device mappings
 *            (UHMM_NOTIFY_MIGRATE with the owner); claim each page in the
 *            device-private table (DP_BUSY: other migrations skip it, CPU
 *            faults on it wait); write-protect the present ones (CPU writes
 *            wait, reads go on: the data cannot change under the copy).
 *  pages:    system -> device: zap the CPU page (zap.c: UFFDIO_MOVE out,
 *            else a MADV_DONTNEED the worker knows is ours) and map the
 *            device page in the table;
 *            device -> system: install the driver-filled staging page
 *            (UFFDIO_COPY) and unmap the device page.
 *  finalize: un-protect what did not move, drop references, release the
 *            claims, and only then wake the CPU threads that waited.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

/* per-entry state kept in migrate->priv */
#define MS_CLAIMED (1u << 0)
#define MS_WP (1u << 1)
#define MS_COMMITTED (1u << 2)
#define MS_EMPTY (1u << 3)	/* a hole or the zero page: protected, never un-protected */
#define MS_VMA_WRITE (1u << 4)	/* its VMA is writable (for a page found filled, see recheck) */
#define MS_UNIT (1u << 5)	/* first entry of a 2 MiB unit the driver took whole (pages()) */
#define MS_COPY (1u << 6)	/* a MOVE to the device that could not move: copied, then committed (pages()) */
#define MS_LIVE (1u << 7)	/* a data page left writable (ZERO_COPY): it moves with what the CPU wrote */

#define UNIT_PAGES UHMM_PMD_PAGES	/* a THP, or a device unit: 512 */
#define UNIT_ORDER (UHMM_PMD_SHIFT - UHMM_PAGE_SHIFT)

struct mig_priv {
	struct uhmm_mm *mm;
	uint64_t t0;		/* setup's start, for the trace */
	uint64_t *base_src;	/* the base-page src entries, once a unit is offered (SELECT_COMPOUND) */
	uint8_t st[];
};

#define SELECT_KNOWN (UHMM_MIGRATE_VMA_SELECT_SYSTEM | UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE | \
		      UHMM_MIGRATE_VMA_SELECT_DEVICE_COHERENT | UHMM_MIGRATE_VMA_SELECT_COMPOUND | \
		      UHMM_MIGRATE_VMA_ZERO_COPY)

/* ---- the migration gate (see internal.h) ---- */

/* Gate passes this thread holds: a nested migration must not wait for a fork
 * that waits for the outer one. */
static __thread unsigned int gate_depth;
/* This thread is the one forking: its evictions pass the closed gate. */
static __thread bool gate_closer;

static void gate_enter(struct uhmm_mm *mm)
{
	/*
	 * The service thread passes: migrations in flight may wait for it
	 * (uhmm_service_sync()), and fork() pauses it before copying the page
	 * tables anyway.
	 */
	bool passes = gate_depth || gate_closer || uhmm_in_service_thread();

	pthread_mutex_lock(&mm->lock);
	while (mm->fork_pending && !passes)
		pthread_cond_wait(&mm->cond, &mm->lock);
	mm->migrating++;
	pthread_mutex_unlock(&mm->lock);
	gate_depth++;
}

static void gate_exit(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->lock);
	/* only a fork waits for this: a broadcast would also wake the worker */
	if (--mm->migrating == 0 && mm->fork_pending)
		pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
	if (gate_depth)
		gate_depth--;	/* finalize may run on another thread than setup */
}

void uhmm_migrate_gate_close(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->lock);
	mm->fork_pending = true;
	while (mm->migrating)
		pthread_cond_wait(&mm->cond, &mm->lock);
	pthread_mutex_unlock(&mm->lock);
	gate_closer = true;
}

bool uhmm_migrate_gate_closer(void)
{
	return gate_closer;
}

void uhmm_migrate_gate_open(struct uhmm_mm *mm)
{
	gate_closer = false;
	pthread_mutex_lock(&mm->lock);
	mm->fork_pending = false;
	pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
}

/* ---- registration and helpers shared with the fault path ---- */

/* Is @addr's page in @set, one of @mm's span sets (under mm->lock)? */
bool uhmm_mm_span_covers(struct uhmm_mm *mm, const struct uhmm_spanset *set, uint64_t addr)
{
	bool in;

	pthread_mutex_lock(&mm->lock);
	in = uhmm_spanset_covers(set, addr, addr + UHMM_PAGE_SIZE);
	pthread_mutex_unlock(&mm->lock);
	return in;
}

bool uhmm_mm_is_missing(struct uhmm_mm *mm, uint64_t addr)
{
	return uhmm_mm_span_covers(mm, &mm->missing, addr);
}

void uhmm_poisoned_add(struct uhmm_mm *mm, uint64_t addr)
{
	pthread_mutex_lock(&mm->lock);
	if (uhmm_spanset_add(&mm->poisoned, addr, addr + UHMM_PAGE_SIZE))
		uhmm_log(UHMM_LOG_WARN, "uhmm: no memory to remember the poisoned page %#llx",
			 (unsigned long long)addr);
	pthread_mutex_unlock(&mm->lock);
}

void uhmm_poisoned_drop(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	pthread_mutex_lock(&mm->lock);
	if (mm->poisoned.n)
		uhmm_spanset_remove(&mm->poisoned, start, end);
	pthread_mutex_unlock(&mm->lock);
}

/* mremap() moved [from, from + len) to @to, the poison markers with the page table. */
void uhmm_poisoned_move(struct uhmm_mm *mm, uint64_t from, uint64_t to, uint64_t len)
{
	pthread_mutex_lock(&mm->lock);
	if (mm->poisoned.n && uhmm_spanset_move(&mm->poisoned, from, to, len))
		uhmm_log(UHMM_LOG_WARN, "uhmm: no memory to move the poisoned pages of %#llx", (unsigned long long)from);
	pthread_mutex_unlock(&mm->lock);
}

bool uhmm_poisoned(struct uhmm_mm *mm, uint64_t addr)
{
	return uhmm_mm_span_covers(mm, &mm->poisoned, addr);
}

/*
 * Private anonymous memory: what can hold device-private pages. Not a
 * private file mapping, even where the kernel lets its copy-on-write pages
 * migrate: once uhmm zaps such a page the next touch is refilled from the
 * page cache (a MISSING fault only fires when the file has no page), so the
 * CPU would read the file instead of the device's data.
 */
static bool vma_migratable(const struct uhmm_vma *v)
{
	return !(v->flags & (UHMM_VMA_SHARED | UHMM_VMA_SPECIAL | UHMM_VMA_HUGETLB | UHMM_VMA_FILE)) &&
	       (v->flags & UHMM_VMA_READ);
}

static int register_missing_piece(struct uhmm_mm *mm, uint64_t s, uint64_t e)
{
	int ret = 0;

	if (uhmm_kmem_owns(s, e))
		return 0;
	pthread_mutex_lock(&mm->lock);
	if (!uhmm_spanset_covers(&mm->missing, s, e)) {
		ret = uhmm_uffd_register(mm->uffd, s, e,
					 UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, NULL);
		if (ret == 0)
			ret = uhmm_spanset_add(&mm->missing, s, e);
		if (ret == 0)
			ret = uhmm_spanset_add(&mm->registered, s, e);
	}
	pthread_mutex_unlock(&mm->lock);
	if (ret == -EBUSY)
		return -EEXIST;	/* the application's own userfaultfd */
	return ret == -EINVAL ? 0 : ret;	/* a file mapping cannot trap: not migratable */
}

/* Make the migratable VMA pieces of [start, end) trap missing pages. */
static int register_missing(struct uhmm_mm *mm, const struct uhmm_vma *v, int n, uint64_t start,
			    uint64_t end)
{
	int ret;

	for (int i = 0; i < n; i++) {
		if (!vma_migratable(&v[i]))
			continue;
		ret = register_missing_piece(mm, v[i].start > start ? v[i].start : start,
					     v[i].end < end ? v[i].end : end);
		if (ret)
			return ret;
	}
	return 0;
}

/* Under mm->lock. */
static void self_zap_remove(struct uhmm_mm *mm, size_t i)
{
	mm->self_zaps[i] = mm->self_zaps[--mm->n_self_zaps];
}

int uhmm_mm_self_zap(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	uint64_t t0 = uhmm_now_ns();
	size_t i;
	int ret = 0;

	pthread_mutex_lock(&mm->lock);
	if (mm->n_self_zaps == mm->cap_self_zaps) {
		size_t cap = mm->cap_self_zaps ? 2 * mm->cap_self_zaps : 8;
		struct uhmm_self_zap *z = uhmm_krealloc(mm->self_zaps, cap * sizeof(*z));

		if (z) {
			mm->self_zaps = z;
			mm->cap_self_zaps = cap;
		} else {
			ret = -ENOMEM;
		}
	}
	if (!ret)	/* ours for every event until madvise() returns, then as below */
		mm->self_zaps[mm->n_self_zaps++] = (struct uhmm_self_zap){ start, end, UINT64_MAX };
	pthread_mutex_unlock(&mm->lock);
	if (ret)
		return ret;
	/* raw: the interposed madvise() would invalidate the devices again;
	 * DONTNEED_LOCKED (5.18+) where the range is mlocked */
	if (syscall(SYS_madvise, start, end - start, MADV_DONTNEED) == 0 ||
	    (errno == EINVAL && syscall(SYS_madvise, start, end - start, MADV_DONTNEED_LOCKED) == 0)) {
		uhmm_stat_add(UHMM_STAT(zaps_madvised), (end - start) >> UHMM_PAGE_SHIFT);
		if (uhmm_tracing())	/* the slow zap: worth seeing */
			uhmm_trace_span("self_zap", "migrate", t0, uhmm_now_ns(), "\"start\":\"%#llx\",\"npages\":%llu",
					(unsigned long long)start, (unsigned long long)((end - start) >> UHMM_PAGE_SHIFT));
	} else {
		ret = -errno;
	}
	/* Every event this zap raised has been read (madvise waited for that) and is queued below the mark. */
	uint64_t until = uhmm_service_read_mark(mm);

	pthread_mutex_lock(&mm->lock);
	for (i = 0; i < mm->n_self_zaps; i++)
		if (mm->self_zaps[i].start == start && mm->self_zaps[i].end == end &&
		    mm->self_zaps[i].until == UINT64_MAX)
			break;
	if (i < mm->n_self_zaps)
		mm->self_zaps[i].until = until;
	pthread_mutex_unlock(&mm->lock);
	return ret;
}

/*
 * Is the REMOVE event of [start, end) the worker is handling one of uhmm's
 * own zaps? Entries whose events are all behind the worker are dropped.
 * Worker only: ev_done, which it raises after each message, is then the
 * index of the message in hand.
 */
bool uhmm_mm_is_self_zap(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	bool ours = false;

	pthread_mutex_lock(&mm->lock);
	for (size_t i = 0; i < mm->n_self_zaps;) {
		const struct uhmm_self_zap *z = &mm->self_zaps[i];

		if (z->until <= mm->ev_done) {
			self_zap_remove(mm, i);
			continue;
		}
		ours = ours || (z->start <= start && end <= z->end);
		i++;
	}
	pthread_mutex_unlock(&mm->lock);
	return ours;
}

/*
 * Install @len bytes of @data at @addr (missing there), without waking:
 * finalize wakes. Returns the bytes installed (a partial install stops at
 * the first page that is not missing), or -errno if none. EAGAIN means an
 * event (munmap, madvise, mremap) is raised and uhmm's reader has not read
 * it yet: the copy is tried again once the reader had a chance to run.
 */
static long install_range(struct uhmm_mm *mm, uint64_t addr, const void *data, uint64_t len)
{
	struct uffdio_copy c = {
		.dst = addr, .src = (uintptr_t)data, .len = len, .mode = UFFDIO_COPY_MODE_DONTWAKE,
	};

	for (int tries = 0;; tries++) {
		int err = uhmm_inject(UHMM_INJECT_UFFD_COPY);

		if (!err) {
			if (ioctl(mm->uffd, UFFDIO_COPY, &c) == 0)
				return (long)len;
			err = -errno;
		}
		if (c.copy > 0)
			return (long)c.copy;
		if (err != -EAGAIN || tries == UHMM_EAGAIN_TRIES)
			return err;
		c.copy = 0;	/* the mm changed under us: try again */
		sched_yield();	/* spinning would only delay the reader (2 CPUs: seen 270k ioctls/s) */
	}
}

int uhmm_install_page(struct uhmm_mm *mm, uint64_t addr, const void *data)
{
	long n = install_range(mm, addr, data, UHMM_PAGE_SIZE);

	return n < 0 ? (int)n : 0;
}

static int write_protect(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = end - start }, .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return uhmm_uffd_ioctl(mm->uffd, UFFDIO_WRITEPROTECT, &wp);
}

/*
 * Staging pages for device -> system: a per-thread slab of 511 pages in a
 * 2 MiB aligned block mapped with a raw system call (page 0 is the header),
 * handed out in order so that a driver filling a window gets contiguous
 * pages, which uhmm then installs with one UFFDIO_COPY. uhmm's own memory
 * (kmem.c): no migration can take it, freeing it raises no event. A slab is
 * freed when its owner has moved on (or exited) and every page has been freed.
 */
#define SLAB_PAGES (UHMM_PMD_SIZE / UHMM_PAGE_SIZE)

struct staging_slab {
	atomic_long refs;	/* one per page out, plus one while it is the owner's current slab */
	size_t used;		/* pages handed out, from 1 (the header); owner thread only */
	bool unit;		/* a staging unit: header page, then 2 MiB of data from +2 MiB */
};

static __thread struct staging_slab *cur_slab;
static pthread_key_t slab_key;		/* its destructor drops an exiting thread's slab */
/*
 * The worker role's slab. Service threads take the role in turn, one at a
 * time (service.c), and only the role runs driver callbacks, so they share
 * one slab, as the one worker thread had one: per-thread slabs would keep
 * a slab per service thread. Handed over with the role under mm->lock.
 */
static struct staging_slab *service_slab;
static pthread_once_t slab_key_once = PTHREAD_ONCE_INIT;

/*
 * Empty slabs are kept for the next one (a few, process-wide, lock-free):
 * a fresh slab costs a page fault and the kernel's zeroing per page, a
 * quarter of a migration to system memory in the profile. A driver fills
 * every staging page it takes (as a kernel driver fills the page
 * alloc_page() gives it), so what a reused page held does not matter.
 */
#define SLAB_SPARES 4
static _Atomic(struct staging_slab *) slab_spares[SLAB_SPARES];

static _Atomic(struct staging_slab *) unit_spares[SLAB_SPARES];	/* the same, for staging units */

/* A spare of @spares, or NULL. */
static struct staging_slab *spare_take(_Atomic(struct staging_slab *) *spares)
{
	for (int i = 0; i < SLAB_SPARES; i++) {
		struct staging_slab *spare = atomic_exchange(&spares[i], NULL);

		if (spare)
			return spare;
	}
	return NULL;
}

static void slab_put(struct staging_slab *slab)
{
	_Atomic(struct staging_slab *) *spares = slab->unit ? unit_spares : slab_spares;

	if (atomic_fetch_sub(&slab->refs, 1) != 1)
		return;
	for (int i = 0; i < SLAB_SPARES; i++) {
		struct staging_slab *none = NULL;

		if (atomic_compare_exchange_strong(&spares[i], &none, slab))
			return;
	}
	uhmm_kfree(slab);
}

static void slab_thread_exit(void *slab)
{
	slab_put(slab);	/* the owner's reference: it has moved on for good */
}

static void slab_key_init(void)
{
	if (pthread_key_create(&slab_key, slab_thread_exit))
		uhmm_log(UHMM_LOG_WARN, "uhmm: no thread key: an exiting thread keeps its staging slab");
}

static struct staging_slab *slab_new(void)
{
	struct staging_slab *spare = spare_take(slab_spares);

	if (spare) {
		atomic_store(&spare->refs, 1);
		spare->used = 1;
		return spare;
	}

	/* uhmm's own memory (2 MiB blocks are 2 MiB-aligned): no migration can take it */
	struct staging_slab *slab = uhmm_kmalloc(UHMM_PMD_SIZE);

	if (!slab)
		return NULL;
	atomic_init(&slab->refs, 1);
	slab->used = 1;
	slab->unit = false;
	return slab;
}

UHMM_EXPORT void *uhmm_migrate_alloc_system_page(uint64_t *dst)
{
	void *page;

	bool role = uhmm_in_service_thread();
	struct staging_slab **cur = role ? &service_slab : &cur_slab;

	if (!dst || uhmm_inject(UHMM_INJECT_STAGING_ALLOC))
		return NULL;
	if (!*cur || (*cur)->used == SLAB_PAGES) {
		struct staging_slab *fresh = slab_new();

		if (!fresh)
			return NULL;
		if (*cur)
			slab_put(*cur);	/* the owner's reference */
		*cur = fresh;
		if (!role) {
			pthread_once(&slab_key_once, slab_key_init);
			pthread_setspecific(slab_key, fresh);
		}
	}
	page = (char *)*cur + (*cur)->used++ * UHMM_PAGE_SIZE;
	atomic_fetch_add(&(*cur)->refs, 1);
	*dst = uhmm_migrate_pfn((uintptr_t)page >> UHMM_PAGE_SHIFT);
	return page;
}

/*
 * The worker role's slab across the service threads' life: a new set
 * starts without one (a forked child's copy of the parent's is the
 * parent's state, abandoned), a stopped set drops its reference.
 */
void uhmm_staging_service_slab(bool put)
{
	if (put && service_slab)
		slab_put(service_slab);
	service_slab = NULL;
}

/*
 * A staging unit for a device unit coming back whole: 2 MiB, 2 MiB-aligned,
 * installed with one UFFDIO_COPY. A 4 MiB block of uhmm's own memory: the
 * header in its first page, the data in its second half.
 */
UHMM_EXPORT void *uhmm_migrate_alloc_system_huge_page(uint64_t *dst)
{
	struct staging_slab *slab;

	if (!dst || uhmm_inject(UHMM_INJECT_STAGING_ALLOC))
		return NULL;
	slab = spare_take(unit_spares);	/* its pages are faulted in already */
	if (!slab)
		slab = uhmm_kmalloc(2 * UHMM_PMD_SIZE);
	if (!slab)
		return NULL;
	atomic_init(&slab->refs, UNIT_PAGES);	/* one per page: finalize frees them one by one */
	slab->used = 0;
	slab->unit = true;
	*dst = uhmm_migrate_pfn(((uintptr_t)slab + UHMM_PMD_SIZE) >> UHMM_PAGE_SHIFT) | UHMM_MIGRATE_PFN_COMPOUND;
	return (char *)slab + UHMM_PMD_SIZE;
}

UHMM_EXPORT uint64_t uhmm_migrate_pfn_data(const void *data)
{
	if (!data || ((uintptr_t)data & (UHMM_PAGE_SIZE - 1)) || uhmm_inject(UHMM_INJECT_STAGING_ALLOC))
		return 0;
	return uhmm_migrate_pfn((uintptr_t)data >> UHMM_PAGE_SHIFT) | UHMM_MIGRATE_PFN_DATA;
}

static void staging_free(void *page)
{
	slab_put(uhmm_kmem_block(page));	/* a slab's header is its block's first page */
}

static void *system_page_addr(uint64_t mpfn)
{
	return (void *)(uintptr_t)(uhmm_migrate_pfn_to_pfn(mpfn) << UHMM_PAGE_SHIFT);
}

/* ---- collect ---- */

struct collect {
	struct uhmm_migrate_vma *m;
	struct mig_priv *priv;
	uint8_t *pte;		/* UHMM_PTE_* per page (SELECT_SYSTEM) */
};

/*
 * Collect one page of a migratable VMA (or a device page); claims it.
 * @traps: the page lies in a span that traps missing pages (checked once
 * per VMA piece by the caller).
 */
static void collect_page(struct collect *c, const struct uhmm_vma *v, uint64_t i, bool traps)
{
	struct uhmm_migrate_vma *m = c->m;
	uint64_t addr = m->start + (i << UHMM_PAGE_SHIFT), e;
	struct uhmm_page *page;
	uint8_t pte = c->pte ? c->pte[i] : 0;

	/* No entry, and only device pages selected: not even a claim (it would make nodes). */
	if (!(m->flags & UHMM_MIGRATE_VMA_SELECT_SYSTEM) &&
	    !uhmm_radix_get(&c->priv->mm->devpriv, addr >> UHMM_PAGE_SHIFT))
		return;
	e = uhmm_dp_claim_locked(c->priv->mm, addr);
	if (e & DP_BUSY)
		return;	/* another migration holds it */
	page = DP_PAGE(e);
	if (page) {
		if ((m->flags & UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE) && page->pgmap->owner == m->pgmap_owner)
			m->src[i] = uhmm_migrate_pfn(uhmm_page_to_pfn(page)) | UHMM_MIGRATE_PFN_MIGRATE |
				    UHMM_MIGRATE_PFN_WRITE;
	} else if ((m->flags & UHMM_MIGRATE_VMA_SELECT_SYSTEM) && vma_migratable(v) && traps) {
		if ((pte & UHMM_PTE_PRESENT) && (pte & UHMM_PTE_ZERO))
			m->src[i] = UHMM_MIGRATE_PFN_MIGRATE;	/* zero page: no data */
		else if ((pte & UHMM_PTE_PRESENT) && !(pte & UHMM_PTE_FILE))
			m->src[i] = uhmm_migrate_pfn(addr >> UHMM_PAGE_SHIFT) | UHMM_MIGRATE_PFN_MIGRATE |
				    ((v->flags & UHMM_VMA_WRITE) ? UHMM_MIGRATE_PFN_WRITE : 0);
		else if (!(pte & (UHMM_PTE_PRESENT | UHMM_PTE_SWAPPED)) && !(v->flags & UHMM_VMA_FILE))
			m->src[i] = UHMM_MIGRATE_PFN_MIGRATE;	/* a hole of anonymous memory */
	}
	if (!(m->src[i] & UHMM_MIGRATE_PFN_MIGRATE)) {
		/*
		 * Not ours to migrate. An entry an interposed munmap()/madvise()
		 * marked dropped before its system call (uhmm_dp_mark_dropped())
		 * is ours to free once claimed: its drop_range() may have passed
		 * it while we held it. Releasing it frees its page, which must
		 * not happen under dp_lock: the claim is kept, and finalize
		 * releases it (and the page) like any other. Releasing it here
		 * lost the page's reference (the pool's "could not go back").
		 */
		if ((e & DP_DROPPED) && page)
			c->priv->st[i] |= MS_CLAIMED;
		else
			(void)uhmm_dp_release_locked(c->priv->mm, addr);
		return;
	}
	c->priv->st[i] |= MS_CLAIMED;
	m->cpages++;
	if (page)
		return;
	if (!(m->src[i] & UHMM_MIGRATE_PFN_VALID))
		c->priv->st[i] |= MS_EMPTY;
	else
		c->priv->st[i] |= (m->flags & UHMM_MIGRATE_VMA_ZERO_COPY) ? MS_LIVE : MS_WP;
	if (v->flags & UHMM_VMA_WRITE)
		c->priv->st[i] |= MS_VMA_WRITE;
}

/* Leave entry @k where it is after all: not collected, its claim released. */
static void uncollect(struct collect *c, uint64_t k)
{
	c->priv->st[k] = 0;
	c->m->src[k] = 0;
	c->m->cpages--;
	uhmm_dp_release(c->priv->mm, c->m->start + (k << UHMM_PAGE_SHIFT));
}

/*
 * Write-protect the runs of collected system entries, the empty ones too:
 * a zero page is present, so a CPU write to it (copy-on-write, no fault in
 * a MISSING span) would put data there that the zap then throws away; once
 * protected, the write faults and waits for finalize. Protecting a hole is a
 * no-op the run does not need to avoid. Live pages (ZERO_COPY) are not
 * protected: they move with what the CPU wrote (UFFDIO_WRITEPROTECT was
 * most of a zero-copy migration's setup).
 */
static void collect_protect(struct collect *c)
{
	struct uhmm_migrate_vma *m = c->m;
	const uint8_t prot = MS_WP | MS_EMPTY;

	for (uint64_t i = 0; i < m->npages;) {
		uint64_t j = i;

		if (!(c->priv->st[i] & prot)) {
			i++;
			continue;
		}
		while (j < m->npages && (c->priv->st[j] & prot))
			j++;
		if (write_protect(c->priv->mm, m->start + (i << UHMM_PAGE_SHIFT),
				  m->start + (j << UHMM_PAGE_SHIFT), true)) {
			/* cannot block writers: leave these pages where they are */
			for (uint64_t k = i; k < j; k++)
				uncollect(c, k);
		}
		i = j;
	}
}

/*
 * The page-table snapshot was taken before the claims and the protection,
 * and the program may have changed the page since: a hole or zero page it
 * showed may hold data now (a CPU write to the zero page, another migration
 * bringing the page back, a fault served just before the claim), and
 * migrating it "without data" would zap that data; a data page may be gone
 * (madvise(DONTNEED) before the claim), and copying it would fault on a page
 * this very migration holds. Claimed and protected, a page cannot fill any
 * more (faults wait, installs need the claim, writes fault); a later zap is
 * marked DP_DROPPED and its fault served with zeros. So look again, and
 * migrate each page as what it is now.
 */
static void collect_recheck(struct collect *c)
{
	struct uhmm_migrate_vma *m = c->m;
	const uint8_t sys = MS_WP | MS_EMPTY | MS_LIVE;
	bool any = false;

	for (uint64_t i = 0; c->pte && i < m->npages && !any; i++)
		any = c->priv->st[i] & sys;
	if (!any || uhmm_pagemap_read(m->start, m->end, c->pte, 0))
		return;
	for (uint64_t i = 0; i < m->npages; i++) {
		uint8_t pte = c->pte[i], st = c->priv->st[i];
		uint64_t addr = m->start + (i << UHMM_PAGE_SHIFT);
		bool empty = !(pte & (UHMM_PTE_PRESENT | UHMM_PTE_SWAPPED)) || (pte & UHMM_PTE_ZERO);

		if (!(st & sys) || empty == !!(st & MS_EMPTY))
			continue;	/* a system entry still what it was */
		if (st & MS_LIVE) {
			/* Emptied before the claim, and not protected: were it the
			 * zero page now, a write could fill it unseen. Rare: it stays. */
			uncollect(c, i);
		} else if (empty) {
			c->priv->st[i] = (uint8_t)((st & ~MS_WP) | MS_EMPTY);
			m->src[i] = UHMM_MIGRATE_PFN_MIGRATE;
		} else {
			c->priv->st[i] = (uint8_t)((st & ~MS_EMPTY) | MS_WP);
			m->src[i] = uhmm_migrate_pfn(addr >> UHMM_PAGE_SHIFT) | UHMM_MIGRATE_PFN_MIGRATE |
				    ((st & MS_VMA_WRITE) ? UHMM_MIGRATE_PFN_WRITE : 0);
		}
	}
}

/*
 * Units (SELECT_COMPOUND): a 2 MiB-aligned block of the range whose 512
 * entries were all collected as one thing: a THP (every page PMD-mapped),
 * a hole or zero page throughout, or the 512 pages of a device unit, in
 * order. It is offered as the kernel offers a THP: src[i] | COMPOUND, the
 * other 511 entries 0. The base-page entries are kept: pages() restores
 * them, whether the driver takes the unit whole or page by page.
 */
static bool block_is_unit(const struct collect *c, uint64_t i)
{
	const struct uhmm_migrate_vma *m = c->m;
	const uint8_t *st = c->priv->st;
	struct uhmm_page *head = uhmm_migrate_pfn_to_page(m->src[i]);
	bool empty = st[i] & MS_EMPTY;

	if (head && (uhmm_page_order(head) != UNIT_ORDER || uhmm_page_index(head) % UNIT_PAGES))
		return false;
	for (uint64_t j = 0; j < UNIT_PAGES; j++) {
		uint64_t s = m->src[i + j];

		if (!(s & UHMM_MIGRATE_PFN_MIGRATE))
			return false;
		if (head ? uhmm_migrate_pfn_to_pfn(s) != uhmm_page_to_pfn(head) + j
			 : uhmm_migrate_pfn_to_page(s) || !!(st[i + j] & MS_EMPTY) != empty ||
				   (!empty && !(c->pte && (c->pte[i + j] & UHMM_PTE_HUGE))))
			return false;
	}
	return true;
}

static void collect_units(struct collect *c)
{
	struct uhmm_migrate_vma *m = c->m;
	uint64_t first = (uhmm_align_up(m->start, UHMM_PMD_SIZE) - m->start) >> UHMM_PAGE_SHIFT;

	if (!(m->flags & UHMM_MIGRATE_VMA_SELECT_COMPOUND))
		return;
	for (uint64_t i = first; i + UNIT_PAGES <= m->npages; i += UNIT_PAGES) {
		if (!block_is_unit(c, i))
			continue;
		if (!c->priv->base_src) {
			c->priv->base_src = uhmm_kmalloc(m->npages * sizeof(*m->src));
			if (!c->priv->base_src)
				return;	/* offered page by page */
			memcpy(c->priv->base_src, m->src, m->npages * sizeof(*m->src));
		}
		m->src[i] |= UHMM_MIGRATE_PFN_COMPOUND;
		memset(&m->src[i + 1], 0, (UNIT_PAGES - 1) * sizeof(*m->src));
	}
}

static void collect_vmas(struct collect *c, const struct uhmm_vma *v, int n)
{
	struct uhmm_migrate_vma *m = c->m;

	for (int k = 0; k < n; k++) {
		uint64_t s = v[k].start > m->start ? v[k].start : m->start;
		uint64_t e = v[k].end < m->end ? v[k].end : m->end;

		bool traps;

		pthread_mutex_lock(&c->priv->mm->lock);
		traps = uhmm_spanset_covers(&c->priv->mm->missing, s, e);
		pthread_mutex_unlock(&c->priv->mm->lock);
		pthread_mutex_lock(&c->priv->mm->dp_lock);	/* one claim round per piece */
		for (uint64_t a = s; a < e; a += UHMM_PAGE_SIZE)
			collect_page(c, &v[k], (a - m->start) >> UHMM_PAGE_SHIFT, traps);
		pthread_mutex_unlock(&c->priv->mm->dp_lock);
	}
}

static int migrate_validate(struct uhmm_migrate_vma *m)
{
	if (!m || !m->mm || !m->src || !m->dst || !uhmm_mm_is_current(m->mm))
		return -EINVAL;
	if (uhmm_check_range(m->start, m->end))
		return -EINVAL;
	if ((m->flags & ~(unsigned long)SELECT_KNOWN) ||
	    !(m->flags & (UHMM_MIGRATE_VMA_SELECT_SYSTEM | UHMM_MIGRATE_VMA_SELECT_DEVICE_PRIVATE)))
		return -EINVAL;
	return 0;
}

static int note_last(void *arg, uint64_t key, uint64_t *val)
{
	(void)val;
	*(uint64_t *)arg = key;
	return 0;
}

/*
 * The VMAs a setup collects from, with the fewest PROCMAP_QUERYs (one per
 * VMA). A device-private selection collects only what the device-private
 * table holds, so the VMAs past its last entry in the range need no query
 * (a driver's fault-around window around a lone page crosses several
 * mappings; seven queries were most of a one-page fault-back). An entry
 * added after this walk belongs to a migration to a device that claimed it
 * after us. And when the first page holds a device page (not dropped) it
 * needs none at all: uhmm put that page there, from an anonymous private
 * VMA, and anything that ends or replaces the VMA reaches uhmm first (an
 * interposed munmap() or madvise() marks the entry dropped before its
 * system call; a raw one raises an unmap event, which drops it). One that
 * races this setup is the race a lookup has too, a moment later: its event
 * is handled after this migration, and an install on a gone VMA fails and
 * leaves the page on the device. This is what a CPU fault on a device page
 * migrates: its one PROCMAP_QUERY was a fifth of the service thread's
 * system calls. The whole range is then collected from, with no walk to
 * find where its entries end (collect_page() passes over a page with no
 * entry). Otherwise the VMA at start is looked up in any case (the kernel
 * requires one).
 */
static int setup_vmas(const struct uhmm_migrate_vma *m, struct uhmm_vma *v, int max)
{
	uint64_t first = m->start >> UHMM_PAGE_SHIFT, first_val, last = UINT64_MAX, end;

	if (m->flags & UHMM_MIGRATE_VMA_SELECT_SYSTEM)
		return uhmm_vma_list(m->start, m->end, v, max);
	pthread_mutex_lock(&m->mm->dp_lock);
	first_val = uhmm_radix_get(&m->mm->devpriv, first);
	if (!DP_PAGE(first_val) || (first_val & DP_DROPPED))
		(void)uhmm_radix_walk(&m->mm->devpriv, first, (m->end >> UHMM_PAGE_SHIFT) - 1, note_last, &last);
	pthread_mutex_unlock(&m->mm->dp_lock);
	if (DP_PAGE(first_val) && !(first_val & DP_DROPPED)) {
		v[0] = (struct uhmm_vma){ .start = m->start, .end = m->end, .page_shift = UHMM_PAGE_SHIFT };
		return 1;
	}
	end = last == UINT64_MAX ? m->start + UHMM_PAGE_SIZE : (last + 1) << UHMM_PAGE_SHIFT;
	return uhmm_vma_list(m->start, end, v, max);
}

UHMM_EXPORT int uhmm_migrate_vma_setup(struct uhmm_migrate_vma *m)
{
	return uhmm_migrate_setup_as(m, UHMM_NOTIFY_MIGRATE, m ? m->pgmap_owner : NULL);
}

/*
 * After a fork() every anonymous page of the parent is copy-on-write, not
 * marked exclusive, until it is written (even once the child has exited),
 * and UFFDIO_MOVE refuses such a page with EBUSY, as it refuses a pinned
 * one: the zap would leave it where it is, and a driver that copies with
 * plain loads (unlike uhmm_access_vm()) could never migrate it. A
 * read-only pin (process_vm_readv() pins) makes the kernel unshare it:
 * reused in place when nobody else maps it (nothing copied), copied when a
 * child still does; no userfaultfd event either way. So once the process
 * has forked, setup reads one byte of each present page before it claims
 * anything: a page dropped meanwhile faults and is served as usual, which
 * it could not be once claimed. Best effort: a failure leaves the page to
 * the zap's EBUSY.
 */
static void unshare_present(uint64_t start, const uint8_t *pte, uint64_t npages)
{
	enum { BATCH = 1024 };	/* UIO_MAXIOV */
	struct iovec *remote = uhmm_kmalloc(BATCH * sizeof(*remote));
	char *scratch = uhmm_kmalloc(BATCH);
	uint64_t done = 0;

	for (uint64_t i = 0; remote && scratch && i < npages;) {
		struct iovec local = { scratch, 0 };
		int n = 0;

		for (; i < npages && n < BATCH; i++)
			if ((pte[i] & UHMM_PTE_PRESENT) && !(pte[i] & (UHMM_PTE_ZERO | UHMM_PTE_FILE)))
				remote[n++] = (struct iovec){ (void *)(uintptr_t)(start + (i << UHMM_PAGE_SHIFT)), 1 };
		local.iov_len = (size_t)n;
		if (n && process_vm_readv(uhmm_self_pid(), &local, 1, remote, (unsigned long)n, 0) > 0)
			done += (uint64_t)n;
	}
	uhmm_stat_add(UHMM_STAT(zaps_unshared), done);
	uhmm_kfree(remote);
	uhmm_kfree(scratch);
}

/*
 * Setup whose invalidation says @event and @owner: a migration is
 * (MIGRATE, pgmap_owner); device-exclusive access (exclusive.c) is
 * (EXCLUSIVE, the device taking it) and its revocation (EXCLUSIVE, NULL),
 * as in the kernel.
 */
int uhmm_migrate_setup_as(struct uhmm_migrate_vma *m, enum uhmm_notifier_event event, void *owner)
{
	struct collect c = { .m = m };
	struct uhmm_notifier_range r;
	struct uhmm_vma v[32];
	int n, ret = migrate_validate(m);

	if (ret)
		return ret;
	m->npages = (m->end - m->start) >> UHMM_PAGE_SHIFT;
	m->cpages = 0;
	m->priv = NULL;
	memset(m->src, 0, m->npages * sizeof(*m->src));
	memset(m->dst, 0, m->npages * sizeof(*m->dst));
	c.priv = uhmm_kcalloc(1, sizeof(*c.priv) + m->npages);
	if (!c.priv)
		return -ENOMEM;
	c.priv->mm = m->mm;
	c.priv->t0 = uhmm_now_ns();
	/*
	 * Every migration passes the gate: one bringing a page back that
	 * commits after fork() copied the page tables would leave the child a
	 * hole. Only the forking thread's own evictions pass it closed.
	 * Order: mmap_lock, then the gate.
	 */
	pthread_rwlock_rdlock(&m->mm->mmap_lock);	/* no mremap() until finalize */
	gate_enter(m->mm);

	/* One VMA list serves registration and collection; the registered
	 * sets are exact once the events read so far are handled. Pieces past
	 * the 32nd are simply not collected. Not while forking: the worker may
	 * be waiting at the closed gate. */
	if (!gate_closer)
		uhmm_service_sync(m->mm);
	n = setup_vmas(m, v, UHMM_ARRAY_SIZE(v));
	ret = n < 0 ? n : 0;
	n = n > (int)UHMM_ARRAY_SIZE(v) ? (int)UHMM_ARRAY_SIZE(v) : n;
	if (!ret && (n == 0 || v[0].start > m->start || (v[0].flags & UHMM_VMA_SPECIAL)))
		ret = -EINVAL;	/* the kernel requires a VMA at start */
	if (!ret && (m->flags & UHMM_MIGRATE_VMA_SELECT_SYSTEM)) {
		ret = register_missing(m->mm, v, n, m->start, m->end);
		c.pte = ret ? NULL : uhmm_kmalloc(m->npages);
		if (!ret && !c.pte)
			ret = -ENOMEM;
		/* No UHMM_PTE_FILE asked: only private anonymous mappings are
		 * collected (vma_migratable()), and they hold no file page. */
		if (!ret)
			ret = uhmm_pagemap_read(m->start, m->end, c.pte, 0);
		if (!ret && atomic_load_explicit(&m->mm->forked, memory_order_relaxed))
			unshare_present(m->start, c.pte, m->npages);
	}
	if (ret)
		goto err;

	r = (struct uhmm_notifier_range){ .start = m->start, .end = m->end, .event = event,
					   .flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = owner };
	uhmm_invalidate_start(m->mm, &r);
	collect_vmas(&c, v, n);
	collect_protect(&c);
	collect_recheck(&c);
	collect_units(&c);
	uhmm_invalidate_end(m->mm);
	uhmm_kfree(c.pte);
	m->priv = c.priv;
	if (m->cpages)
		uhmm_stat_add(UHMM_STAT(migrations), 1);
	return 0;
err:
	gate_exit(m->mm);
	pthread_rwlock_unlock(&m->mm->mmap_lock);
	uhmm_kfree(c.pte);
	uhmm_kfree(c.priv);	/* base_src is only made after the last error */
	m->cpages = 0;
	return ret;
}

/* ---- commit ---- */

/*
 * Device -> system: put the staging page in place and unmap the device
 * page. Under dp_lock, so that an address the program unmaps or zaps
 * meanwhile (DP_DROPPED, set under the same lock before its system call)
 * is never filled again.
 */
static bool commit_to_system(struct uhmm_mm *mm, uint64_t addr, uint64_t dst)
{
	bool ok;

	pthread_mutex_lock(&mm->dp_lock);
	ok = !(uhmm_radix_get(&mm->devpriv, addr >> UHMM_PAGE_SHIFT) & DP_DROPPED) &&
	     uhmm_install_page(mm, addr, system_page_addr(dst)) == 0;
	/* The table's reference passes to the migration; finalize drops it. */
	if (ok)
		(void)uhmm_dp_remove_locked(mm, addr);
	pthread_mutex_unlock(&mm->dp_lock);
	return ok;
}

static int entry_dropped(void *arg, uint64_t key, uint64_t *val)
{
	(void)arg;
	(void)key;
	return (*val & DP_DROPPED) != 0;
}

/* Is any entry of [i, j) dropped? (dp_lock held; one walk, not a lookup per page) */
static bool run_dropped(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t i, uint64_t j)
{
	uint64_t first = (m->start >> UHMM_PAGE_SHIFT) + i;

	return uhmm_radix_walk(&p->mm->devpriv, first, first + (j - i) - 1, entry_dropped, NULL) != 0;
}

/*
 * Install the run [addr, addr + len) from @dst on: moved in from the
 * driver's memory where dst says MOVE (zero copy; what will not move is
 * copied from the same memory: a page there shared with a fork child, say),
 * else copied. As install_range(): the bytes installed, stopping at a page
 * that is not missing, or -errno if none.
 */
static long install_run(struct uhmm_mm *mm, uint64_t addr, uint64_t dst, uint64_t len)
{
	const char *data = system_page_addr(dst);
	uint64_t moved;
	long copied;
	int err;

	if (!(dst & UHMM_MIGRATE_PFN_MOVE))
		return install_range(mm, addr, data, len);
	moved = uhmm_move_pages(mm->uffd, addr, (uintptr_t)data, len, &err);
	uhmm_stat_add(UHMM_STAT(pages_moved), moved >> UHMM_PAGE_SHIFT);
	if (moved == len || err == EEXIST)
		return moved ? (long)moved : -EEXIST;
	copied = install_range(mm, addr + moved, data + moved, len - moved);
	return copied > 0 ? (long)moved + copied : moved ? (long)moved : copied;
}

/*
 * Device -> system for entries [i, j) whose staging pages are contiguous
 * (the slab hands them out in order): one UFFDIO_COPY (or UFFDIO_MOVE) for
 * the run, page by page only for what it could not install.
 */
static void commit_run_to_system(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t i, uint64_t j)
{
	uint64_t addr = m->start + (i << UHMM_PAGE_SHIFT), ok = 0;
	bool dropped;
	long done;

	pthread_mutex_lock(&p->mm->dp_lock);	/* see commit_to_system() */
	dropped = run_dropped(m, p, i, j);
	done = dropped ? 0 : install_run(p->mm, addr, m->dst[i], (j - i) << UHMM_PAGE_SHIFT);
	ok = done > 0 ? (uint64_t)done >> UHMM_PAGE_SHIFT : 0;
	for (uint64_t k = i; k < i + ok; k++) {
		(void)uhmm_dp_remove_locked(p->mm, m->start + (k << UHMM_PAGE_SHIFT));
		p->st[k] |= MS_COMMITTED;
	}
	pthread_mutex_unlock(&p->mm->dp_lock);
	/*
	 * The rest goes page by page: all of a run with a dropped entry (each
	 * page checked alone), or those after the page the copy stopped at
	 * (that one is not missing there: it stays).
	 */
	for (uint64_t k = i + ok; k < j; k++) {
		bool stopped_here = !dropped && k == i + ok;

		if (!stopped_here && commit_to_system(p->mm, m->start + (k << UHMM_PAGE_SHIFT), m->dst[k]))
			p->st[k] |= MS_COMMITTED;
		else
			m->src[k] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	}
}

static bool staging_follows(uint64_t prev, uint64_t next)
{
	return uhmm_migrate_pfn_to_pfn(next) == uhmm_migrate_pfn_to_pfn(prev) + 1 &&
	       !((next ^ prev) & UHMM_MIGRATE_PFN_MOVE);	/* a run is moved or copied */
}

/* The host memory a MOVE dst entry's page moves into, or 0: the driver copied. */
static uint64_t move_target(uint64_t dst)
{
	struct uhmm_page *page = uhmm_migrate_pfn_to_page(dst);

	return (dst & UHMM_MIGRATE_PFN_MOVE) && page ? uhmm_page_host_addr(page) : 0;
}

static void commit_run_to_device(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t i, uint64_t j);

/*
 * Live pages (ZERO_COPY) of [k, e) that are to be copied after all: a
 * write between the copy and the zap would be lost, so they are protected
 * first, as setup protects every page of a copying driver (and unprotected
 * by finalize if they stay). One that cannot be protected stays.
 */
static void protect_live(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t k, uint64_t e)
{
	bool live = false, ok;

	for (uint64_t q = k; q < e; q++)
		live |= (p->st[q] & MS_LIVE) != 0;
	if (!live)
		return;
	ok = write_protect(p->mm, m->start + (k << UHMM_PAGE_SHIFT), m->start + (e << UHMM_PAGE_SHIFT), true) == 0;
	for (uint64_t q = k; q < e; q++) {
		if (!(p->st[q] & MS_LIVE))
			continue;
		p->st[q] &= (uint8_t)~MS_LIVE;
		if (ok) {
			p->st[q] |= MS_WP;
		} else {
			p->st[q] &= (uint8_t)~MS_COPY;
			m->src[q] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		}
	}
}

#define PRESENT_BATCH 64	/* pages still_present() asks pagemap about at once */

/*
 * Is page @q (of a run ending at @e) in the CPU page table? The program's
 * madvise(DONTNEED) does not wait for migrations: one whose drop-mark walk
 * ran before this migration's claim zaps the page with no mark on the
 * claim until its drop_range() after the call, and a read then faults on
 * our own claim and is deferred (make stress hung so when a move failed:
 * architecture.md, section 8). A page gone is left as the program left it.
 * The check can come any time after the claim (a read after it waits at
 * most until the mark, then is served with zeros), so one pagemap read
 * serves up to PRESENT_BATCH pages (@pte, @base: the batch read last). An
 * unreadable pagemap says present: the read decides, as before.
 */
static bool still_present(const struct uhmm_migrate_vma *m, uint64_t q, uint64_t e, uint8_t *pte, uint64_t *base)
{
	if (*base == UINT64_MAX || q < *base || q >= *base + PRESENT_BATCH) {
		uint64_t n = e - q < PRESENT_BATCH ? e - q : PRESENT_BATCH;

		*base = q;
		if (uhmm_pagemap_read(m->start + (q << UHMM_PAGE_SHIFT), m->start + ((q + n) << UHMM_PAGE_SHIFT), pte, 0))
			memset(pte, UHMM_PTE_PRESENT, n);
	}
	return pte[q - *base] & UHMM_PTE_PRESENT;
}

/*
 * The MOVE entries of [i, j) that would not move (MS_COPY): copied into
 * their device pages as a driver copies (uhmm_access_vm() from this
 * thread, outside dp_lock: a page the program dropped meanwhile faults to
 * the service threads, which take dp_lock), then committed like a copied
 * run. A page that cannot be read stays in system memory.
 */
static void copy_unmoved(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t i, uint64_t j)
{
	for (uint64_t k = i, e; k < j; k = e) {
		for (; k < j && !(p->st[k] & MS_COPY); k++)
			;
		for (e = k; e < j && (p->st[e] & MS_COPY); e++)
			;
		uint8_t pte[PRESENT_BATCH];
		uint64_t base = UINT64_MAX;

		protect_live(m, p, k, e);	/* what it cannot protect leaves the copy */
		for (uint64_t q = k; q < e; q++) {
			if (!(p->st[q] & MS_COPY))
				continue;
			p->st[q] &= (uint8_t)~MS_COPY;
			if (still_present(m, q, e, pte, &base) &&
			    uhmm_access_vm(m->start + (q << UHMM_PAGE_SHIFT), (void *)(uintptr_t)move_target(m->dst[q]),
					   UHMM_PAGE_SIZE, 0) == UHMM_PAGE_SIZE)
				m->dst[q] &= ~UHMM_MIGRATE_PFN_MOVE;	/* copied: commit it as such */
			else
				m->src[q] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		}
		if (k < e)
			(void)uhmm_inject(UHMM_INJECT_COPY_ZAP_DELAY);	/* a CPU write here must wait */
		for (uint64_t a = k, b; a < e; a = b) {	/* runs of the copied ones */
			for (; a < e && !(m->src[a] & UHMM_MIGRATE_PFN_MIGRATE); a++)
				;
			for (b = a; b < e && (m->src[b] & UHMM_MIGRATE_PFN_MIGRATE); b++)
				;
			if (a < b)
				commit_run_to_device(m, p, a, b);
		}
	}
}

/*
 * Take the CPU pages of entries [i, j) out of the page table: moved into
 * their device pages' memory where dst says MOVE (zero copy: the page
 * itself goes), zapped where the driver copied. A page that will not move
 * (shared with a fork child, pinned, a protection the device memory's
 * mapping does not have) is left in place and marked MS_COPY: the caller
 * copies it outside dp_lock and commits it as a copied page. Returns the
 * bytes from entry i on that were handled, up to a pinned page the zap
 * found (it stays, and the rest of the run with it), or -errno with
 * nothing taken.
 */
static long take_run(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t i, uint64_t j)
{
	uint64_t k = i;

	while (k < j) {
		uint64_t addr = m->start + (k << UHMM_PAGE_SHIFT), host = move_target(m->dst[k]), e = k + 1;

		if (!host) {
			while (e < j && !move_target(m->dst[e]))
				e++;
			long z = uhmm_zap_range(p->mm, addr, m->start + (e << UHMM_PAGE_SHIFT));

			if (z < 0)
				return k == i ? z : (long)((k - i) << UHMM_PAGE_SHIFT);
			k += (uint64_t)z >> UHMM_PAGE_SHIFT;
			if (k < e)
				break;	/* pinned */
			continue;
		}
		while (e < j && move_target(m->dst[e]) == host + ((e - k) << UHMM_PAGE_SHIFT))
			e++;
		int err;
		uint64_t moved = uhmm_move_to_host(p->mm, host, addr, (e - k) << UHMM_PAGE_SHIFT, &err);

		uhmm_stat_add(UHMM_STAT(pages_moved), moved >> UHMM_PAGE_SHIFT);
		k += moved >> UHMM_PAGE_SHIFT;
		/*
		 * Not moved: copied and zapped instead. EBUSY too: a page shared
		 * with a fork child is refused as a pinned one is; the copy's
		 * read pin unshares it, and a page really pinned stops the zap.
		 */
		for (; k < e; k++)
			p->st[k] |= MS_COPY;
	}
	return (long)((k - i) << UHMM_PAGE_SHIFT);
}

/*
 * System -> device: take a run of CPU pages out, then map the device pages.
 * The check for entries the program dropped meanwhile, the taking and the
 * mapping are one step under dp_lock (see commit_to_system()): a dropped
 * page is left alone, and its data goes with the program's own zap.
 */
static void commit_run_to_device(struct uhmm_migrate_vma *m, struct mig_priv *p, uint64_t i, uint64_t j)
{
	long taken;

	pthread_mutex_lock(&p->mm->dp_lock);
	taken = run_dropped(m, p, i, j) ? -1 : take_run(m, p, i, j);
	if (taken > 0) {
		/* up to a pinned page, if one stopped it: the rest stays where it is */
		uint64_t end = i + ((uint64_t)taken >> UHMM_PAGE_SHIFT);

		for (uint64_t k = i; k < end; k++)
			if (!(p->st[k] & MS_COPY) &&
			    uhmm_dp_install_locked(p->mm, m->start + (k << UHMM_PAGE_SHIFT),
						   uhmm_migrate_pfn_to_page(m->dst[k])) == 0)
				p->st[k] |= MS_COMMITTED;
	}
	pthread_mutex_unlock(&p->mm->dp_lock);
	copy_unmoved(m, p, i, j);
	for (uint64_t k = i; k < j; k++)
		if (!(p->st[k] & MS_COMMITTED))
			m->src[k] &= ~UHMM_MIGRATE_PFN_MIGRATE;
}

/* Count @n pages that moved to @addr's device or back, and trace where they live now. */
static void account_pages(uint64_t addr, uint64_t n, bool to_dev, const void *owner)
{
	uhmm_stat_add(to_dev ? UHMM_STAT(pages_to_device) : UHMM_STAT(pages_to_system), n);
	uhmm_stat_add(to_dev ? UHMM_STAT(bytes_to_device) : UHMM_STAT(bytes_to_system), n << UHMM_PAGE_SHIFT);
	if (uhmm_tracing())
		uhmm_trace_residency(addr, n, to_dev ? "device" : "system", owner);
}

/* Account the committed entries of [i, j), one call per run of them. */
static void account_run(struct uhmm_migrate_vma *m, const struct mig_priv *p, uint64_t i, uint64_t j, bool to_dev)
{
	for (uint64_t k = i; k < j; k++) {
		uint64_t r = k;
		struct uhmm_page *dpage = uhmm_migrate_pfn_to_page(m->dst[k]);

		while (r < j && (p->st[r] & MS_COMMITTED))
			r++;
		if (r > k)
			account_pages(m->start + (k << UHMM_PAGE_SHIFT), r - k, to_dev, dpage ? dpage->pgmap->owner : NULL);
		k = r;
	}
}

/* Which way entry @i goes: 1 to the device, -1 to the system, 0 nowhere. */
static int entry_direction(uint64_t src, uint64_t dst)
{
	bool sdev = uhmm_migrate_pfn_to_page(src) != NULL, ddev = uhmm_migrate_pfn_to_page(dst) != NULL;

	if (!(src & UHMM_MIGRATE_PFN_MIGRATE) || !(dst & UHMM_MIGRATE_PFN_VALID) || sdev == ddev)
		return 0;
	if (ddev && (dst & UHMM_MIGRATE_PFN_MOVE) && !move_target(dst))
		return 0;	/* nowhere to move it, and the driver copied nothing: it stays */
	return ddev ? 1 : -1;
}

/*
 * A unit's destination, taken whole: 512 device pages of one pagemap from a
 * 512-aligned index, or a staging unit (uhmm_migrate_alloc_system_huge_page()).
 */
static bool unit_dst_ok(uint64_t dst)
{
	struct uhmm_page *head = uhmm_migrate_pfn_to_page(dst);

	if (!(dst & UHMM_MIGRATE_PFN_VALID) || !(dst & UHMM_MIGRATE_PFN_COMPOUND))
		return false;
	if (!head)
		return uhmm_migrate_pfn_to_pfn(dst) % UNIT_PAGES == 0;
	return uhmm_page_index(head) % UNIT_PAGES == 0 &&
	       uhmm_page_index(head) + UNIT_PAGES <= head->pgmap->npages;
}

/*
 * Back to base-page entries (uhmm keeps every page's state per 4 KiB): the
 * src entries as collected; a unit the driver took whole gets the dst
 * entries of its 512 pages; one it did not (no COMPOUND in dst[i], as when
 * a device cannot allocate a huge page) is split: the driver filled
 * dst[i + j] page by page, as for the kernel's migrate_vma_split_pages().
 */
static void expand_units(struct uhmm_migrate_vma *m, struct mig_priv *p)
{
	for (uint64_t i = 0; p->base_src && i < m->npages; i++) {
		uint64_t d = m->dst[i];

		if (!(m->src[i] & UHMM_MIGRATE_PFN_COMPOUND))
			continue;
		memcpy(&m->src[i], &p->base_src[i], UNIT_PAGES * sizeof(*m->src));
		if (unit_dst_ok(d)) {
			for (uint64_t j = 0; j < UNIT_PAGES; j++)
				m->dst[i + j] = uhmm_migrate_pfn(uhmm_migrate_pfn_to_pfn(d) + j) |
						(d & (UHMM_MIGRATE_PFN_WRITE | UHMM_MIGRATE_PFN_DATA |
						      UHMM_MIGRATE_PFN_MOVE));
			p->st[i] |= MS_UNIT;
		} else {
			m->dst[i] = d & ~UHMM_MIGRATE_PFN_COMPOUND;
		}
		i += UNIT_PAGES - 1;
	}
}

/* Units that moved whole: a device unit is marked on its first page (order), and counted. */
static void account_units(struct uhmm_migrate_vma *m, struct mig_priv *p)
{
	for (uint64_t i = 0; p->base_src && i < m->npages; i++) {
		bool whole = p->st[i] & MS_UNIT;
		struct uhmm_page *head = uhmm_migrate_pfn_to_page(m->dst[i]);

		if (!whole)
			continue;
		for (uint64_t j = 0; j < UNIT_PAGES && whole; j++)
			whole = p->st[i + j] & MS_COMMITTED;
		if (whole && head)
			atomic_store_explicit(&head->order, UNIT_ORDER, memory_order_relaxed);	/* the table holds all 512 */
		if (whole)
			uhmm_stat_add(UHMM_STAT(units_migrated), 1);
		i += UNIT_PAGES - 1;
	}
}

/*
 * ZERO_COPY: a live page whose dst is not a place to move it into stays
 * where it is. The driver promised to move every page; had it copied one,
 * what the CPU wrote since would be lost with the zap.
 */
static void refuse_copied_live(struct uhmm_migrate_vma *m, const struct mig_priv *p)
{
	if (!(m->flags & UHMM_MIGRATE_VMA_ZERO_COPY))
		return;
	for (uint64_t i = 0; i < m->npages; i++)
		if ((p->st[i] & MS_LIVE) && (m->dst[i] & UHMM_MIGRATE_PFN_VALID) && !move_target(m->dst[i]))
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
}

UHMM_EXPORT void uhmm_migrate_vma_pages(struct uhmm_migrate_vma *m)
{
	struct mig_priv *p;

	if (!m || !(p = m->priv))
		return;
	expand_units(m, p);
	refuse_copied_live(m, p);
	for (uint64_t i = 0; i < m->npages;) {
		int dir = entry_direction(m->src[i], m->dst[i]);
		uint64_t j = i + 1;

		if (dir == 1) {
			while (j < m->npages && entry_direction(m->src[j], m->dst[j]) == 1)
				j++;
			commit_run_to_device(m, p, i, j);
			account_run(m, p, i, j, true);
		} else if (dir == -1) {
			while (j < m->npages && entry_direction(m->src[j], m->dst[j]) == -1 &&
			       staging_follows(m->dst[j - 1], m->dst[j]))
				j++;
			commit_run_to_system(m, p, i, j);
			account_run(m, p, i, j, false);
		} else {
			m->src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
		}
		i = j;
	}
	account_units(m, p);
}

/* Drop one entry's page references; the caller releases its claim and wakes. */
static void finalize_entry(uint64_t src, uint64_t dst, uint8_t st)
{
	struct uhmm_page *spage = uhmm_migrate_pfn_to_page(src), *dpage = uhmm_migrate_pfn_to_page(dst);

	if (dpage)
		uhmm_page_put(dpage);	/* the driver's; the table took its own */
	else if ((dst & UHMM_MIGRATE_PFN_VALID) && !(dst & UHMM_MIGRATE_PFN_DATA))
		staging_free(system_page_addr(dst));	/* (driver data is the driver's) */
	if (spage && (st & MS_COMMITTED))
		uhmm_page_put(spage);	/* the table's, passed on in pages() */
}

/* Protected pages that stay are writable again: one UFFDIO_WRITEPROTECT per run of them, not per page. */
static void unprotect_stayed(const struct uhmm_migrate_vma *m, const struct mig_priv *p)
{
	const uint8_t which = MS_WP | MS_COMMITTED;

	for (uint64_t i = 0, j; i < m->npages; i = j) {
		for (; i < m->npages && (p->st[i] & which) != MS_WP; i++)
			;
		for (j = i; j < m->npages && (p->st[j] & which) == MS_WP; j++)
			;
		if (i < j)
			write_protect(p->mm, m->start + (i << UHMM_PAGE_SHIFT), m->start + (j << UHMM_PAGE_SHIFT), false);
	}
}

UHMM_EXPORT void uhmm_migrate_vma_finalize(struct uhmm_migrate_vma *m)
{
	struct mig_priv *p;

	if (!m || !(p = m->priv))
		return;
	for (uint64_t i = 0; i < m->npages; i++)
		finalize_entry(m->src[i], m->dst[i], p->st[i]);
	unprotect_stayed(m, p);
	pthread_mutex_lock(&p->mm->dp_lock);
	for (uint64_t i = 0; i < m->npages; i++) {
		struct uhmm_page *dropped = NULL;

		if (p->st[i] & MS_CLAIMED)
			dropped = uhmm_dp_release_locked(p->mm, m->start + (i << UHMM_PAGE_SHIFT));
		if (dropped) {	/* its address went away while we held it (rare) */
			pthread_mutex_unlock(&p->mm->dp_lock);
			uhmm_page_put(dropped);	/* page_free: never under dp_lock */
			pthread_mutex_lock(&p->mm->dp_lock);
		}
	}
	pthread_mutex_unlock(&p->mm->dp_lock);
	/* Claims are released: a thread woken now and faulting again is served. */
	uhmm_wake(p->mm, m->start, m->end);
	if (uhmm_tracing())
		uhmm_trace_span("migrate", "migrate", p->t0, uhmm_now_ns(),
				"\"start\":\"%#llx\",\"npages\":%llu,\"cpages\":%llu",
				(unsigned long long)m->start, (unsigned long long)m->npages,
				(unsigned long long)m->cpages);
	gate_exit(p->mm);
	pthread_rwlock_unlock(&p->mm->mmap_lock);
	uhmm_kfree(p->base_src);
	uhmm_kfree(p);
	m->priv = NULL;
}

/* ---- eviction by device pfn (migrate_device_range) ---- */

/*
 * The kernel's API carries only src and dst: the address each page was
 * claimed at is kept on the page (claim_addr), and a committed entry is
 * marked with a src bit below UHMM_MIGRATE_PFN_SHIFT that the API leaves
 * unused.
 */
#define MIGRATE_PFN_COMMITTED (1ULL << 5)

static uint8_t device_entry_state(uint64_t src)
{
	if (!(src & UHMM_MIGRATE_PFN_VALID))
		return 0;
	return MS_CLAIMED | ((src & MIGRATE_PFN_COMMITTED) ? MS_COMMITTED : 0);
}

static uint64_t page_vaddr(struct uhmm_mm *mm, const struct uhmm_page *page)
{
	uint64_t addr;

	pthread_mutex_lock(&mm->dp_lock);
	addr = page->vaddr;
	pthread_mutex_unlock(&mm->dp_lock);
	return addr;
}

/* Claim @page at @addr for an eviction; false if it is held or no longer there. */
static bool claim_device_page(struct uhmm_mm *mm, struct uhmm_page *page, uint64_t addr)
{
	uint64_t e = uhmm_dp_claim(mm, addr);

	if (e & DP_BUSY)
		return false;
	if (DP_PAGE(e) != page) {
		uhmm_dp_release(mm, addr);
		return false;
	}
	page->claim_addr = addr;
	return true;
}

UHMM_EXPORT int uhmm_migrate_device_range(uint64_t *src, uint64_t start_pfn, uint64_t npages)
{
	struct uhmm_page *first = uhmm_pfn_to_page(start_pfn), *last;
	struct uhmm_mm *mm;
	bool any = false;

	if (!src || !npages || !first)
		return -EINVAL;
	last = uhmm_pfn_to_page(start_pfn + npages - 1);
	if (!last || last->pgmap != first->pgmap)
		return -EINVAL;
	mm = first->pgmap->mm;
	/* Held until finalize if a page is collected: claims must not straddle an mremap(). */
	pthread_rwlock_rdlock(&mm->mmap_lock);
	gate_enter(mm);	/* an eviction committing after fork() copied the page tables leaves the child a hole */
	/* page->vaddr is exact once the events read so far (an mremap's) are handled */
	if (!gate_closer)
		uhmm_service_sync(mm);
	/*
	 * Runs of pages mapped at consecutive addresses are claimed inside a
	 * MIGRATE invalidation of their addresses, as the kernel unmaps them
	 * (migrate_device_unmap()): the notifier sequence moves, so a device
	 * whose uhmm_range_fault() reported one of these pages just before the
	 * claim cannot map it afterwards, and write into a page whose data is
	 * about to leave.
	 */
	for (uint64_t i = 0, j; i < npages; i = j) {
		uint64_t addr = page_vaddr(mm, first + i);
		struct uhmm_notifier_range r;

		for (j = i + 1; addr && j < npages && page_vaddr(mm, first + j) == addr + ((j - i) << UHMM_PAGE_SHIFT);)
			j++;
		for (uint64_t k = i; k < j; k++)
			src[k] = 0;
		if (!addr)
			continue;
		r = (struct uhmm_notifier_range){ .start = addr, .end = addr + ((j - i) << UHMM_PAGE_SHIFT),
						   .event = UHMM_NOTIFY_MIGRATE, .flags = UHMM_NOTIFIER_RANGE_BLOCKABLE,
						   .owner = first->pgmap->owner };
		uhmm_invalidate_start(mm, &r);
		for (uint64_t k = i; k < j; k++) {
			if (!claim_device_page(mm, first + k, addr + ((k - i) << UHMM_PAGE_SHIFT)))
				continue;
			src[k] = uhmm_migrate_pfn(start_pfn + k) | UHMM_MIGRATE_PFN_MIGRATE | UHMM_MIGRATE_PFN_WRITE;
			any = true;
		}
		uhmm_invalidate_end(mm);
	}
	if (!any) {	/* finalize has nothing to do */
		gate_exit(mm);
		pthread_rwlock_unlock(&mm->mmap_lock);
	}
	return 0;
}

UHMM_EXPORT void uhmm_migrate_device_pages(uint64_t *src, uint64_t *dst, uint64_t npages)
{
	for (uint64_t i = 0; src && dst && i < npages; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);

		if (page && entry_direction(src[i], dst[i]) == -1 &&
		    commit_to_system(page->pgmap->mm, page->claim_addr, dst[i])) {
			src[i] |= MIGRATE_PFN_COMMITTED;
			account_pages(page->claim_addr, 1, false, NULL);
		} else
			src[i] &= ~UHMM_MIGRATE_PFN_MIGRATE;
	}
}

UHMM_EXPORT void uhmm_migrate_device_finalize(uint64_t *src, uint64_t *dst, uint64_t npages)
{
	struct uhmm_mm *locked = NULL;	/* the mmap_lock migrate_device_range() kept */

	for (uint64_t i = 0; src && dst && i < npages; i++) {
		struct uhmm_page *page = uhmm_migrate_pfn_to_page(src[i]);
		struct uhmm_mm *mm;
		uint64_t addr;

		if (!page) {
			if (dst[i] & UHMM_MIGRATE_PFN_VALID)
				finalize_entry(0, dst[i], 0);
			continue;
		}
		mm = page->pgmap->mm;
		addr = page->claim_addr;
		finalize_entry(src[i], dst[i], device_entry_state(src[i]));
		uhmm_dp_release(mm, addr);	/* and wakes */
		src[i] &= ~MIGRATE_PFN_COMMITTED;
		locked = mm;
	}
	if (locked) {
		gate_exit(locked);
		pthread_rwlock_unlock(&locked->mmap_lock);
	}
}
