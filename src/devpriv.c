// SPDX-License-Identifier: MIT
/*
 * The device-private table and the CPU fault path.
 *
 * A page whose data lives in device memory is absent from the CPU page
 * table, inside a span registered MISSING|WP, and mm->devpriv says which
 * device page holds it (the kernel keeps a device-private swap entry in the
 * page table instead). A CPU touch traps to the worker, which calls the
 * pagemap's migrate_to_ram(). The table holds one reference on each page it
 * maps. An entry marked DP_BUSY belongs to a migration in flight: faults on
 * it wait (the migration wakes them), other migrations skip it.
 */
#include <signal.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

#define FAULT_TRIES 8

static uint64_t vpn(uint64_t addr) { return addr >> UHMM_PAGE_SHIFT; }

uint64_t uhmm_dp_get(struct uhmm_mm *mm, uint64_t addr)
{
	uint64_t v;

	pthread_mutex_lock(&mm->dp_lock);
	v = uhmm_radix_get(&mm->devpriv, vpn(addr));
	pthread_mutex_unlock(&mm->dp_lock);
	return v;
}

bool uhmm_dp_any(struct uhmm_mm *mm)
{
	bool any;

	pthread_mutex_lock(&mm->dp_lock);
	any = mm->devpriv.count != 0;
	pthread_mutex_unlock(&mm->dp_lock);
	return any;
}

/* The _locked variants are for callers that hold mm->dp_lock across a range. */
uint64_t uhmm_dp_claim_locked(struct uhmm_mm *mm, uint64_t addr)
{
	uint64_t *slot = uhmm_radix_slot(&mm->devpriv, vpn(addr), true), v;

	if (!slot)
		return DP_BUSY;	/* no memory for the node: report busy, skip it */
	v = *slot;
	if (!(v & DP_BUSY)) {
		mm->devpriv.count += v == 0;
		*slot = v | DP_BUSY;
	}
	return v;
}

struct uhmm_page *uhmm_dp_release_locked(struct uhmm_mm *mm, uint64_t addr)
{
	uint64_t *slot = uhmm_radix_slot(&mm->devpriv, vpn(addr), false);
	struct uhmm_page *dropped = NULL;

	if (slot && *slot) {
		if ((*slot & DP_DROPPED) && DP_PAGE(*slot))
			dropped = uhmm_dp_remove_locked(mm, addr);	/* its address is gone */
		*slot &= ~DP_FLAGS;
		mm->devpriv.count -= *slot == 0;
		if (mm->dp_waiters)	/* uhmm_dp_wait_unclaimed(); none is the common case */
			pthread_cond_broadcast(&mm->dp_cond);
	}
	return dropped;
}

int uhmm_dp_install_locked(struct uhmm_mm *mm, uint64_t addr, struct uhmm_page *page)
{
	uint64_t *slot = uhmm_radix_slot(&mm->devpriv, vpn(addr), true);

	if (!slot)
		return -ENOMEM;
	mm->devpriv.count += *slot == 0;
	*slot = (uintptr_t)page | (*slot & DP_FLAGS);
	mm->dp_installs++;
	page->vaddr = addr;
	uhmm_page_get(page);
	atomic_fetch_add(&page->pgmap->mapped, 1);
	return 0;
}

uint64_t uhmm_dp_claim(struct uhmm_mm *mm, uint64_t addr)
{
	uint64_t v;

	pthread_mutex_lock(&mm->dp_lock);
	v = uhmm_dp_claim_locked(mm, addr);
	pthread_mutex_unlock(&mm->dp_lock);
	return v;
}

void uhmm_dp_release(struct uhmm_mm *mm, uint64_t addr)
{
	struct uhmm_page *dropped;

	pthread_mutex_lock(&mm->dp_lock);
	dropped = uhmm_dp_release_locked(mm, addr);
	pthread_mutex_unlock(&mm->dp_lock);
	if (dropped)
		uhmm_page_put(dropped);
	/* a CPU fault that found the page busy meanwhile is waiting for this */
	uhmm_wake(mm, uhmm_align_down(addr, UHMM_PAGE_SIZE), uhmm_align_down(addr, UHMM_PAGE_SIZE) + UHMM_PAGE_SIZE);
}

/* Claimed by a migration, or its page in a CPU fault's migrate_to_ram() (dp_lock). */
static bool entry_held(uint64_t v)
{
	return (v & DP_BUSY) || (DP_PAGE(v) && DP_PAGE(v)->faulting);
}

/*
 * Wait (10 ms at most) until no migration holds @addr, nor a CPU fault
 * its page: the kernel's migration_entry_wait(). uhmm_range_fault() calls
 * it before it returns -EBUSY for a held page, so that a device retrying at
 * once does not spin against a stream of migrations (seen under TSan: a
 * device READ gave up after a second of -EBUSY). Bounded: the holder may
 * be the caller.
 */
void uhmm_dp_wait_unclaimed(struct uhmm_mm *mm, uint64_t addr)
{
	struct timespec until;

	uhmm_deadline_ms(&until, 10);
	pthread_mutex_lock(&mm->dp_lock);
	mm->dp_waiters++;
	while (entry_held(uhmm_radix_get(&mm->devpriv, vpn(addr))) &&
	       pthread_cond_timedwait(&mm->dp_cond, &mm->dp_lock, &until) == 0)
		;
	mm->dp_waiters--;
	pthread_mutex_unlock(&mm->dp_lock);
}

/* Map @addr to @page (the entry must be claimed); the table takes a reference. */
int uhmm_dp_install(struct uhmm_mm *mm, uint64_t addr, struct uhmm_page *page)
{
	int ret;

	pthread_mutex_lock(&mm->dp_lock);
	ret = uhmm_dp_install_locked(mm, addr, page);
	pthread_mutex_unlock(&mm->dp_lock);
	return ret;
}

/* Unmap @addr's page, keeping a busy mark; the caller owns the returned reference. */
struct uhmm_page *uhmm_dp_remove_locked(struct uhmm_mm *mm, uint64_t addr)
{
	uint64_t *slot = uhmm_radix_slot(&mm->devpriv, vpn(addr), false);
	struct uhmm_page *page = NULL;

	if (slot && DP_PAGE(*slot)) {
		page = DP_PAGE(*slot);
		page->vaddr = 0;
		atomic_fetch_sub(&page->pgmap->mapped, 1);
		*slot &= DP_FLAGS;
		mm->devpriv.count -= *slot == 0;
	}
	return page;
}

struct uhmm_page *uhmm_dp_remove(struct uhmm_mm *mm, uint64_t addr)
{
	struct uhmm_page *page;

	pthread_mutex_lock(&mm->dp_lock);
	page = uhmm_dp_remove_locked(mm, addr);
	pthread_mutex_unlock(&mm->dp_lock);
	return page;
}

static int mark_dropped(void *arg, uint64_t key, uint64_t *val)
{
	(void)key;
	if (arg)
		*val |= DP_DROPPED;
	else
		*val &= ~DP_DROPPED;
	return 0;
}

void uhmm_dp_mark_dropped(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool dropped)
{
	if (end <= start)
		return;
	pthread_mutex_lock(&mm->dp_lock);
	(void)uhmm_radix_walk(&mm->devpriv, vpn(start), vpn(end - 1), mark_dropped, dropped ? mm : NULL);
	pthread_mutex_unlock(&mm->dp_lock);
}

struct drop_ctx {
	struct uhmm_page **pages;
	size_t n, cap;
};

/* Collect the pages to release; entries a migration owns are left to it. */
static int drop_one(void *arg, uint64_t key, uint64_t *val)
{
	struct drop_ctx *d = arg;
	struct uhmm_page *page = DP_PAGE(*val);

	(void)key;
	if (*val & DP_BUSY) {
		*val |= DP_DROPPED;	/* the migration holding it must not bring it back */
		return 0;
	}
	if (!page)
		return 0;
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 64;
		struct uhmm_page **p = uhmm_krealloc(d->pages, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		d->pages = p;
		d->cap = cap;
	}
	page->vaddr = 0;
	atomic_fetch_sub(&page->pgmap->mapped, 1);
	d->pages[d->n++] = page;
	*val = 0;
	return 0;
}

/*
 * munmap / madvise(DONTNEED) of device-resident memory: the data is gone
 * with the mapping, as in the kernel; the device pages are released
 * (page_free is called outside the lock).
 */
void uhmm_dp_drop_range(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	struct drop_ctx d = { 0 };

	if (end <= start)
		return;
	do {
		d.n = 0;
		pthread_mutex_lock(&mm->dp_lock);
		int ret = uhmm_radix_walk(&mm->devpriv, vpn(start), vpn(end - 1), drop_one, &d);
		pthread_mutex_unlock(&mm->dp_lock);
		for (size_t i = 0; i < d.n; i++)
			uhmm_page_put(d.pages[i]);
		if (ret != -ENOMEM || d.n == 0)
			break;	/* ENOMEM after progress: go again for the rest */
	} while (1);
	uhmm_kfree(d.pages);
}

/* Keys and values of table entries, gathered by a radix walk. */
struct move_ctx {
	uint64_t *keys, *vals;
	size_t n, cap;
};

static int move_push(struct move_ctx *m, uint64_t key, uint64_t val)
{
	if (m->n == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 64;
		uint64_t *k = uhmm_krealloc(m->keys, cap * sizeof(*k)), *v;

		if (!k)
			return -ENOMEM;
		m->keys = k;
		v = uhmm_krealloc(m->vals, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		m->vals = v;
		m->cap = cap;
	}
	m->keys[m->n] = key;
	m->vals[m->n++] = val;
	return 0;
}

/* Gather and empty the slot (mremap re-keys what it took). */
static int move_collect(void *arg, uint64_t key, uint64_t *val)
{
	int ret = move_push(arg, key, *val);

	if (!ret)
		*val = 0;
	return ret;
}

/* Gather only: the table is left as it is. */
static int key_collect(void *arg, uint64_t key, uint64_t *val)
{
	return move_push(arg, key, *val);
}

/* mremap() moved a span: its device pages move with it. */
void uhmm_dp_move_range(struct uhmm_mm *mm, uint64_t from, uint64_t to, uint64_t len)
{
	struct move_ctx m = { 0 };
	size_t lost = 0;

	if (!len)
		return;
	pthread_mutex_lock(&mm->dp_lock);
	/* The walk empties the old slots (and keeps the count exact). */
	uhmm_radix_walk(&mm->devpriv, vpn(from), vpn(from + len - 1), move_collect, &m);
	for (size_t i = 0; i < m.n; i++) {
		uint64_t key = m.keys[i] - vpn(from) + vpn(to);
		struct uhmm_page *page = DP_PAGE(m.vals[i]);

		if (uhmm_radix_set(&mm->devpriv, key, m.vals[i]) == 0) {
			if (page)
				page->vaddr = key << UHMM_PAGE_SHIFT;
			continue;
		}
		/* No memory for the new node: the data is lost; release it below. */
		if (page) {
			page->vaddr = 0;
			atomic_fetch_sub(&page->pgmap->mapped, 1);
			m.vals[lost++] = (uintptr_t)page;
		}
	}
	pthread_mutex_unlock(&mm->dp_lock);
	for (size_t i = 0; i < lost; i++)
		uhmm_page_put(DP_PAGE(m.vals[i]));	/* page_free outside the lock */
	uhmm_kfree(m.keys);
	uhmm_kfree(m.vals);
}

/*
 * The device cannot give @addr back: the CPU gets SIGBUS there, never zeros.
 * Only while the table still maps a device page there and the address is
 * still mapped: a driver's migrate_to_ram() also fails when the program
 * unmapped or moved the address meanwhile (its setup finds no VMA). The
 * worker serves a fault queued before the program's mremap() before that
 * call's REMAP event, which then moves the entry to where the page is now:
 * poisoning it first would lose the page. And a poison marker left at an
 * unmapped address would SIGBUS whatever the program maps there next.
 *
 * Only @failed, the page the driver could not return: while its
 * migrate_to_ram() waited for mmap_lock, an mremap() may have moved that
 * page away and another mapping's device page in (make stress poisoned a
 * live page so: a device's fault on an exclusive page raced two mremap()s
 * of the program). Returns -ESTALE then, nothing poisoned: the caller
 * looks again, as after a page that moved. 0 otherwise.
 */
static int dp_poison(struct uhmm_mm *mm, uint64_t addr, struct uhmm_page *failed, pid_t tid)
{
	struct uffdio_poison p = { .range = { .start = addr, .len = UHMM_PAGE_SIZE } };
	struct uhmm_page *page = NULL;
	bool other = false;
	uint64_t v;
	int ret;

	if (!uhmm_vma_covers(addr, addr + UHMM_PAGE_SIZE))
		return 0;	/* its UNMAP or REMAP event, still queued, drops or moves the entry */
	pthread_mutex_lock(&mm->dp_lock);
	v = uhmm_dp_claim_locked(mm, addr);
	if (!(v & DP_BUSY)) {
		other = DP_PAGE(v) && DP_PAGE(v) != failed;
		page = other ? NULL : uhmm_dp_remove_locked(mm, addr);
	}
	pthread_mutex_unlock(&mm->dp_lock);
	if (v & DP_BUSY)
		return 0;
	if (!page) {
		uhmm_dp_release(mm, addr);	/* gone or replaced meanwhile: the CPU's retry sees what is there now */
		return other ? -ESTALE : 0;
	}
	atomic_fetch_add(&page->pgmap->poisoned, 1);
	uhmm_page_put(page);
	uhmm_stat_add(UHMM_STAT(poisons), 1);
	if (uhmm_tracing())
		uhmm_trace_residency(addr, 1, "poisoned", NULL);
	/* ENOENT: the address was unmapped meanwhile, nothing left to poison */
	ret = uhmm_uffd_ioctl(mm->uffd, UFFDIO_POISON, &p);
	if (!ret)
		uhmm_poisoned_add(mm, addr);
	if (ret && ret != -EEXIST && ret != -ENOENT) {
		/* No UFFDIO_POISON (before 6.6): signal the faulting thread. */
		uhmm_log(UHMM_LOG_ERR, "uhmm: cannot poison %#llx: %s", (unsigned long long)addr,
			 strerror(-ret));
		if (tid > 0)
			syscall(SYS_tgkill, mm->pid, tid, SIGBUS);
	}
	uhmm_dp_release(mm, addr);
	uhmm_log(UHMM_LOG_WARN, "uhmm: device could not return page %#llx: poisoned",
		 (unsigned long long)addr);
	return 0;
}

/* @addr's entry, and whether any device page was mapped since @installs. */
static uint64_t dp_entry_since(struct uhmm_mm *mm, uint64_t addr, uint64_t installs, bool *moved)
{
	uint64_t v;

	pthread_mutex_lock(&mm->dp_lock);
	v = uhmm_radix_get(&mm->devpriv, vpn(addr));
	*moved = mm->dp_installs != installs;
	pthread_mutex_unlock(&mm->dp_lock);
	return v;
}

#define EVICT_WAIT_MS 10000	/* an eviction waits out a busy device this long, then poisons */

/*
 * The driver's migrate_to_ram(). Its -EAGAIN (the device is using the page)
 * puts off a CPU access, which faults again; an eviction cannot be put off
 * (fork() would copy a hole, pagemap removal would lose the page), so it
 * calls again every millisecond, up to EVICT_WAIT_MS.
 */
static int call_migrate_to_ram(struct uhmm_page *page, struct uhmm_vm_fault *vmf)
{
	for (int waited = 0;; waited++) {
		int ret = page->pgmap->ops->migrate_to_ram(vmf);

		if (ret != -EAGAIN || !(vmf->flags & UHMM_FAULT_EVICT) || waited >= EVICT_WAIT_MS)
			return ret;
		usleep(1000);
	}
}

/* The page's migrate_to_ram() is over: a fault waiting for it looks again. */
static void fault_unlock(struct uhmm_mm *mm, struct uhmm_page *page)
{
	pthread_mutex_lock(&mm->dp_lock);
	page->faulting = false;
	if (mm->dp_waiters)
		pthread_cond_broadcast(&mm->dp_cond);
	pthread_mutex_unlock(&mm->dp_lock);
}

/*
 * Bring @addr's device page back. Returns 0 when the driver moved it (or it
 * was never device-private; another device may have taken it since, so
 * the caller looks again), -EBUSY when a migration holds it (the caller
 * waits for its wake-up) or the driver said -EAGAIN (its device is using
 * the page: the worker defers the fault and retries it within a
 * millisecond), or the driver's error after poisoning the page.
 */
int uhmm_dp_fault(struct uhmm_mm *mm, uint64_t addr, unsigned int flags, pid_t tid)
{
	bool cpu_touch = flags & UHMM_FAULT_CPU_TOUCH;
	struct uhmm_page *tried = NULL;	/* the page the driver last failed to return */
	int ret = 0;

	flags &= ~UHMM_FAULT_CPU_TOUCH;	/* the driver's flags */
	addr = uhmm_align_down(addr, UHMM_PAGE_SIZE);
	for (int i = 0; i < FAULT_TRIES; i++) {
		uint64_t v, installs;
		bool moved;
		struct uhmm_page *page;
		struct uhmm_vm_fault vmf;

		pthread_mutex_lock(&mm->dp_lock);
		installs = mm->dp_installs;
		v = uhmm_radix_get(&mm->devpriv, vpn(addr));
		if (v & DP_DROPPED)
			v = DP_BUSY;	/* the program is zapping it: wait for that to finish */
		page = DP_PAGE(v);
		/*
		 * One CPU access's fault at a time calls a page's
		 * migrate_to_ram(), as the kernel's do_swap_page() holds the page
		 * lock: the others wait, then find it back (faults served in the
		 * faulting threads run side by side; the service worker's are one
		 * at a time anyway). Other callers go on regardless, as before.
		 */
		if (page && !(v & DP_BUSY) && page->faulting && cpu_touch)
			v |= DP_BUSY;
		if (page && !(v & DP_BUSY)) {
			uhmm_page_get(page);	/* keep it alive across the callback */
			page->faulting |= cpu_touch;
		}
		pthread_mutex_unlock(&mm->dp_lock);
		if (!page)
			return (v & DP_BUSY) ? -EBUSY : 0;
		if (v & DP_BUSY)
			return -EBUSY;
		vmf = (struct uhmm_vm_fault){ .mm = mm, .address = addr, .page = page, .flags = flags };
		uhmm_stat_add(UHMM_STAT(faults_device), 1);
		ret = call_migrate_to_ram(page, &vmf);
		tried = page;	/* compared, never used, once put below */
		if (cpu_touch)
			fault_unlock(mm, page);
		uhmm_page_put(page);
		if (ret == -EAGAIN && !(flags & UHMM_FAULT_EVICT))
			return -EBUSY;	/* the device is using it: fault again later (VM_FAULT_RETRY) */
		if (ret)
			break;
		/*
		 * Still there? Another migration may have held the page while
		 * the driver's setup looked (it skips busy pages): if one holds
		 * it now, its finalize wakes us. Moved (another page there now,
		 * or this one mapped again: a device took it back since, as
		 * when two devices pull the same pages): done, the caller looks
		 * again, as the kernel retries the access. Only the same page,
		 * with nothing mapped since, is a driver that did not move it:
		 * try again, then give up (seen before: a page poisoned while
		 * two devices and a reader fought over it).
		 */
		v = dp_entry_since(mm, addr, installs, &moved);
		if (v & DP_BUSY)
			return -EBUSY;
		if (DP_PAGE(v) != page || moved)
			return 0;
		ret = -EAGAIN;
		sched_yield();
	}
	if (ret == -EAGAIN)
		ret = -EIO;
	if (dp_poison(mm, addr, tried, tid) == -ESTALE)
		return 0;	/* another page there now: the caller looks again */
	return ret;
}

/* Evict every device page of [start, end). */
int uhmm_dp_evict_range(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	struct move_ctx m = { 0 };
	int ret = 0;

	if (end <= start)
		return 0;
	pthread_mutex_lock(&mm->dp_lock);
	/* -ENOMEM stops the walk early: what was gathered is still evicted. */
	uhmm_radix_walk(&mm->devpriv, vpn(start), vpn(end - 1), key_collect, &m);
	pthread_mutex_unlock(&mm->dp_lock);
	for (size_t i = 0; i < m.n; i++) {
		int r;

		if (!DP_PAGE(m.vals[i]))
			continue;
		r = uhmm_dp_fault(mm, m.keys[i] << UHMM_PAGE_SHIFT, UHMM_FAULT_EVICT, 0);
		if (r && r != -EBUSY && !ret)
			ret = r;
	}
	uhmm_kfree(m.keys);
	uhmm_kfree(m.vals);
	return ret;
}

/* The range this thread woke last: a fault the migration woke needs no second wake. */
static __thread uint64_t woke_start, woke_end;

void uhmm_wake(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	struct uffdio_range r = { .start = start, .len = end - start };

	if (mm->faults_in_thread)
		return;	/* nobody waits in the kernel: every fault is a SIGBUS or an EFAULT */
	ioctl(mm->uffd, UFFDIO_WAKE, &r);
	woke_start = start;
	woke_end = end;
}

/*
 * Zero pages for [start, end), read-only zero page or a writable zeroed copy.
 * Each page's check and install are one step under dp_lock: a migration that
 * claims the page in between would otherwise take it for a hole and zap what
 * the install put there.
 */
int uhmm_fill_missing(struct uhmm_mm *mm, uint64_t start, uint64_t end, bool write)
{
	static const char zeros[UHMM_PAGE_SIZE] __attribute__((aligned(4096)));

	for (uint64_t a = start; a < end; a += UHMM_PAGE_SIZE) {
		int ret = 0;

		pthread_mutex_lock(&mm->dp_lock);
		if (uhmm_radix_get(&mm->devpriv, vpn(a)) == 0) {	/* else device-private or busy: not ours */
			if (write) {
				ret = uhmm_install_page(mm, a, zeros);
			} else {
				struct uffdio_zeropage z = { .range = { .start = a, .len = UHMM_PAGE_SIZE } };

				ret = ioctl(mm->uffd, UFFDIO_ZEROPAGE, &z) < 0 ? -errno : 0;
			}
		}
		pthread_mutex_unlock(&mm->dp_lock);
		if (ret && ret != -EEXIST)
			return ret;
	}
	return 0;
}

/*
 * A missing page in a trapping span. Device-private: migrate it back.
 * Otherwise it is an ordinary first touch: the zero page, and the CPU
 * takes it from there. Returns 0 (served), -EBUSY (a migration holds the
 * page: fault again once it is done), or the -errno of a UFFDIO_ZEROPAGE
 * that failed (-EEXIST: a page is there).
 */
static int serve_missing(struct uhmm_mm *mm, uint64_t page, unsigned int flags, pid_t tid)
{
	struct uffdio_zeropage z = { .range = { .start = page, .len = UHMM_PAGE_SIZE } };
	uint64_t v;
	int err = 0;

	/*
	 * Check and install in one step (see uhmm_fill_missing()). A busy
	 * entry without a device page that the program zapped meanwhile
	 * (DP_DROPPED) is a system page a migration took before madvise()
	 * discarded it: the migration will not commit it, and its own copy may
	 * be the thread faulting here, so waiting for it would never end.
	 * What the program asked for is what it gets: zeros.
	 */
	pthread_mutex_lock(&mm->dp_lock);
	v = uhmm_radix_get(&mm->devpriv, vpn(page));
	if (v == (DP_BUSY | DP_DROPPED))
		v = 0;
	if (!v && ioctl(mm->uffd, UFFDIO_ZEROPAGE, &z) < 0)
		err = errno;
	pthread_mutex_unlock(&mm->dp_lock);
	if (!v) {
		if (!err) {	/* the install woke the page's waiters */
			woke_start = page;
			woke_end = page + UHMM_PAGE_SIZE;
		}
		return -err;
	}
	if (v & DP_BUSY)
		return -EBUSY;
	return uhmm_dp_fault(mm, page, flags | UHMM_FAULT_CPU_TOUCH, tid) == -EBUSY ? -EBUSY : 0;
}

/* A missing page, read by a service thread: served, or deferred until its holder is done. */
void uhmm_fault_missing(struct uhmm_mm *mm, uint64_t addr, unsigned int uffd_flags, pid_t tid)
{
	uint64_t page = uhmm_align_down(addr, UHMM_PAGE_SIZE);

	woke_start = woke_end = 0;
	if (serve_missing(mm, page, (uffd_flags & UFFD_PAGEFAULT_FLAG_WRITE) ? UHMM_FAULT_WRITE : 0, tid) ==
	    -EBUSY) {
		uhmm_service_defer(mm, page);
		return;
	}
	/*
	 * The install or the migration that brought the page back woke its
	 * range after the faulting thread began to wait (its fault was read
	 * before): a second UFFDIO_WAKE would only cost a system call. Any
	 * other outcome (-EEXIST: already there) wakes.
	 */
	if (!(woke_start <= page && page + UHMM_PAGE_SIZE <= woke_end))
		uhmm_wake(mm, page, page + UHMM_PAGE_SIZE);
}

/*
 * Lift the write protection of [start, end), but not of the pages a
 * migration holds (it protects them for its copy, and they must stay so
 * until its finalize). The check and the un-protection are one step under
 * dp_lock: a migration claiming a page in between would find it writable.
 * Returns 0, -EBUSY if some page was held (the others are un-protected), or
 * the ioctl's -errno.
 */
int uhmm_unprotect_unless_busy(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	int ret = 0;

	pthread_mutex_lock(&mm->dp_lock);
	for (uint64_t a = start, b; a < end; a = b) {
		bool busy = uhmm_radix_get(&mm->devpriv, vpn(a)) & DP_BUSY;

		for (b = a + UHMM_PAGE_SIZE; b < end && busy == !!(uhmm_radix_get(&mm->devpriv, vpn(b)) & DP_BUSY);)
			b += UHMM_PAGE_SIZE;
		if (busy) {
			ret = -EBUSY;
			continue;
		}
		struct uffdio_writeprotect wp = { .range = { .start = a, .len = b - a }, .mode = 0 };

		int err = uhmm_uffd_ioctl(mm->uffd, UFFDIO_WRITEPROTECT, &wp);

		if (err && !ret)
			ret = err;
	}
	pthread_mutex_unlock(&mm->dp_lock);
	return ret;
}

/*
 * A write is about to replace the zero pages of [start, end) that devices
 * may map: devices drop them, then the protection that makes a write trap
 * is lifted (not of pages a migration holds; -EBUSY then). Both inside one
 * invalidation, as the kernel brackets a PTE change: with the protection
 * lifted after the invalidation *ended*, another device's
 * uhmm_range_fault() could run in between, see the zero page, protect it
 * and map it, and the un-protection would take its protection away: the
 * write then replaced the zero page with no fault and no invalidation, and
 * that device read zeros for ever (seen in make stress under load: a device
 * WRITE to fresh memory racing a READ of another device).
 */
int uhmm_release_zero_pages(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	struct uhmm_notifier_range r = {
		.start = start, .end = end, .event = UHMM_NOTIFY_CLEAR, .flags = UHMM_NOTIFIER_RANGE_BLOCKABLE,
	};
	int ret;

	uhmm_invalidate_start(mm, &r);
	(void)uhmm_inject(UHMM_INJECT_UNPROTECT_DELAY);	/* a thread preempted here, when asked */
	ret = uhmm_unprotect_unless_busy(mm, start, end);
	uhmm_invalidate_end(mm);
	return ret;
}

/*
 * A write to a write-protected page. A migration in flight holds it: the
 * writer waits until finalize wakes it. Otherwise it is a zero page that
 * uhmm_range_fault() reported to devices (or a stray): the write is about
 * to replace it, so devices drop it first (the kernel's copy-on-write
 * invalidation), then the write goes on. Returns 0, -EBUSY (held), or the
 * -errno of the un-protection.
 */
static int serve_wp(struct uhmm_mm *mm, uint64_t page)
{
	/* held: no invalidation for it (the fault comes back every deferral) */
	if (uhmm_dp_get(mm, page) & DP_BUSY)
		return -EBUSY;
	return uhmm_release_zero_pages(mm, page, page + UHMM_PAGE_SIZE);	/* -EBUSY: claimed since */
}

void uhmm_fault_wp(struct uhmm_mm *mm, uint64_t addr)
{
	uint64_t page = uhmm_align_down(addr, UHMM_PAGE_SIZE);
	int ret = serve_wp(mm, page);

	if (ret == -EBUSY)
		uhmm_service_defer(mm, page);
	else if (ret)
		uhmm_wake(mm, page, page + UHMM_PAGE_SIZE);
}

/*
 * A fault the faulting thread took as SIGBUS (UHMM_FAULTS_IN_THREAD), served
 * on that thread: nobody waits in the kernel, the access runs again when
 * the signal handler returns. The signal says neither missing nor
 * write-protect: a missing page is tried first, and a page found there
 * (-EEXIST) was a write to a protected one. Returns 0 (served), -EBUSY (a
 * migration holds the page: try again in a moment), -EAGAIN (nothing to
 * do, the page changed meanwhile: the access tells), or -ENOENT: not a
 * fault to serve (the address is in no range uhmm registered, or uhmm
 * poisoned the page: the SIGBUS is the program's).
 */
int uhmm_fault_in_thread(struct uhmm_mm *mm, uint64_t addr, bool write, pid_t tid)
{
	uint64_t page = uhmm_align_down(addr, UHMM_PAGE_SIZE);
	int ret;

	/*
	 * In the order the service threads would serve it: after every event
	 * read before it. The program's munmap() or madvise() returned once
	 * its event was read, not handled; a fault on the range's remaining
	 * pages must not race that handling (the reference device's unit,
	 * half unmapped, was seen poisoned in thread mode under load). Cheap
	 * when no event is pending: mm->lock, taken and dropped.
	 */
	uhmm_service_sync(mm);
	if (!uhmm_mm_span_covers(mm, &mm->registered, page))
		return -ENOENT;
	ret = serve_missing(mm, page, write ? UHMM_FAULT_WRITE : 0, tid);
	if (ret != -EEXIST)
		return ret == 0 || ret == -EBUSY ? ret : -EAGAIN;
	/*
	 * A page is there: a write to a protected one, or a poison marker
	 * uhmm put (without CONFIG_MEMORY_FAILURE its SIGBUS is BUS_ADRERR
	 * too); the program's drop of one before the fault was handled above.
	 */
	if (uhmm_poisoned(mm, page))
		return -ENOENT;
	ret = serve_wp(mm, page);
	return ret == 0 || ret == -EBUSY ? ret : -EAGAIN;
}
