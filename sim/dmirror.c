// SPDX-License-Identifier: MIT
/*
 * The reference device ("dmirror"), after the kernel's lib/test_hmm.c: a
 * simulated device with its own page table, reaching host memory only
 * through it, kept coherent with the CPU by an interval notifier and the
 * read_begin / range_fault / read_retry protocol. It uses uhmm's public API
 * only (plus the internal radix tree as a container).
 *
 * Lock: dmirror->lock protects the device page table; the invalidate
 * callback takes it; device copies run under it, so that once invalidate()
 * returns the device no longer touches the old pages. uhmm_range_fault() is
 * always called without it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dmirror_internal.h"

/* ---- device page table ---- */

static uint64_t dpt_get(struct uhmm_dmirror *dm, uint64_t addr)
{
	return uhmm_radix_get(&dm->pt, addr >> DM_PAGE_SHIFT);
}

static int dpt_set(struct uhmm_dmirror *dm, uint64_t addr, uint64_t entry)
{
	return uhmm_radix_set(&dm->pt, addr >> DM_PAGE_SHIFT, entry);
}

static void dpt_clear(struct uhmm_dmirror *dm, uint64_t start, uint64_t end)
{
	if (end > start)
		uhmm_radix_clear(&dm->pt, start >> DM_PAGE_SHIFT, (end - 1) >> DM_PAGE_SHIFT);
}

/* Device page-table entry for one hmm_pfns[] value (VALID assumed). */
static uint64_t dpt_entry_from_pfn(uint64_t hmm_pfn)
{
	uint64_t e = DPT_READ;

	if (hmm_pfn & UHMM_PFN_WRITE)
		e |= DPT_WRITE;
	if (uhmm_pfn_is_zero(hmm_pfn))
		e |= DPT_ZERO;
	if (uhmm_pfn_to_pfn(hmm_pfn) >= UHMM_DEVICE_PFN_BASE)
		e |= DPT_DEVPAGE | (uhmm_pfn_to_pfn(hmm_pfn) << DPT_PFN_SHIFT);
	return e;
}

/* ---- the notifier ---- */

static int drop_system_entry(void *arg, uint64_t key, uint64_t *val)
{
	(void)arg;
	(void)key;
	if (!(*val & DPT_DEVPAGE))
		*val = 0;
	return 0;
}

static bool dmirror_invalidate(struct uhmm_interval_notifier *sub,
			       const struct uhmm_notifier_range *range, unsigned long cur_seq)
{
	struct uhmm_dmirror *dm = (struct uhmm_dmirror *)((char *)sub - offsetof(struct uhmm_dmirror, notifier));

	bool own = range->owner == dm->owner && dmirror_migrating == dm;
	bool own_migration = own && range->event == UHMM_NOTIFY_MIGRATE;

	pthread_mutex_lock(&dm->lock);
	/*
	 * Taking a page exclusive for ourselves: the kernel's drivers skip
	 * their own EXCLUSIVE event, so that the sequence they read before
	 * make_device_exclusive() still says whether anything else came since.
	 */
	if (!(own && range->event == UHMM_NOTIFY_EXCLUSIVE))
		uhmm_interval_set_seq(sub, cur_seq);
	/*
	 * Our own migrations map the device pages themselves; but the system
	 * pages they take must go now, or a READ/WRITE of ours racing the
	 * migration would copy through a page that is being write-protected
	 * and zapped (and, holding our lock, wait on a fault that needs it).
	 */
	if (own_migration && range->end > range->start)
		uhmm_radix_walk(&dm->pt, range->start >> DM_PAGE_SHIFT, (range->end - 1) >> DM_PAGE_SHIFT,
				drop_system_entry, NULL);
	else
		dpt_clear(dm, range->start, range->end);
	dm->invalidations++;
	pthread_mutex_unlock(&dm->lock);
	return true;
}

static const struct uhmm_interval_notifier_ops dmirror_notifier_ops = {
	.invalidate = dmirror_invalidate,
};

/* ---- device faults ---- */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Install the pages of @range in the device page table; caller holds the lock. */
static int dmirror_install(struct uhmm_dmirror *dm, const struct uhmm_range *range)
{
	uint64_t n = (range->end - range->start) >> DM_PAGE_SHIFT;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t pfn = range->hmm_pfns[i];
		int ret;

		if (!(pfn & UHMM_PFN_VALID))
			continue;
		ret = dpt_set(dm, range->start + (i << DM_PAGE_SHIFT), dpt_entry_from_pfn(pfn));
		if (ret)
			return ret;
		if (uhmm_pfn_to_pfn(pfn) >= UHMM_DEVICE_PFN_BASE)	/* where eviction finds it */
			dmirror_devmem_note_addr(dm, uhmm_pfn_to_pfn(pfn), range->start + (i << DM_PAGE_SHIFT));
	}
	return 0;
}

/*
 * The driver side of the sequence protocol for one chunk: snapshot (and
 * fault) with uhmm_range_fault(), then, under the device lock, either the
 * snapshot is still good (read_retry false) and @apply uses it, or go round.
 * Gives up with -EBUSY after UHMM_RANGE_DEFAULT_TIMEOUT_MS.
 */
int dmirror_range_locked(struct uhmm_dmirror *dm, struct uhmm_range *range,
			 int (*apply)(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg),
			 void *arg)
{
	uint64_t deadline = now_ms() + UHMM_RANGE_DEFAULT_TIMEOUT_MS;
	int ret;

	for (;;) {
		if (now_ms() > deadline)
			return -EBUSY;
		range->notifier_seq = uhmm_interval_read_begin(range->notifier);
		ret = uhmm_range_fault(range);
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		pthread_mutex_lock(&dm->lock);
		if (uhmm_interval_read_retry(range->notifier, range->notifier_seq)) {
			pthread_mutex_unlock(&dm->lock);
			continue;
		}
		ret = apply(dm, range, arg);
		pthread_mutex_unlock(&dm->lock);
		return ret;
	}
}

/*
 * Apply @apply to [start, end) in chunks of DM_CHUNK_PAGES, each under the
 * sequence protocol (dmirror_range_locked). @range supplies the notifier,
 * the pfn array (DM_CHUNK_PAGES entries) and the request.
 */
int dmirror_range_chunks(struct uhmm_dmirror *dm, struct uhmm_range *range, uint64_t start, uint64_t end,
			 int (*apply)(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg),
			 void *arg)
{
	for (uint64_t addr = start; addr < end; addr = range->end) {
		int ret;

		range->start = addr;
		range->end = end - addr > DM_CHUNK_BYTES ? addr + DM_CHUNK_BYTES : end;
		ret = dmirror_range_locked(dm, range, apply, arg);
		if (ret)
			return ret;
	}
	return 0;
}

static int apply_install(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg)
{
	(void)arg;
	return dmirror_install(dm, range);
}

/* One device fault pass over [start, end): counts as one fault. */
static int dmirror_fault(struct uhmm_dmirror *dm, uint64_t start, uint64_t end, bool write)
{
	uint64_t pfns[DM_CHUNK_PAGES];
	struct uhmm_range range = {
		.notifier = &dm->notifier,
		.hmm_pfns = pfns,
		.default_flags = UHMM_PFN_REQ_FAULT | (write ? UHMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = dm->owner,
	};

	return dmirror_range_chunks(dm, &range, start, end, apply_install, NULL);
}

/* ---- READ / WRITE ---- */

/*
 * Copy one run of mapped pages between the device's bounce buffer and
 * memory, under the lock. System pages go through uhmm_access_vm(), so a
 * page unmapped behind the device's back is an error, not a crash.
 */
static int dmirror_copy_page(struct uhmm_dmirror *dm, uint64_t entry, uint64_t addr, char *bounce,
			     bool write)
{
	if (entry & DPT_ATOMIC) {	/* device-exclusive: uhmm's copy of the page */
		void *mem = (void *)(uintptr_t)(entry & ~(DM_PAGE_SIZE - 1));

		/* another instance of the device, same owner, may hold the same page */
		dmirror_copy_device_memory(write ? mem : bounce, write ? bounce : mem);
		return 0;
	}
	if (entry & DPT_DEVPAGE)
		return dmirror_devmem_copy(dm, entry >> DPT_PFN_SHIFT, bounce, write);
	if (entry & DPT_ZERO) {
		memset(bounce, 0, DM_PAGE_SIZE);
		return 0;
	}
	return uhmm_access_vm(addr, bounce, DM_PAGE_SIZE, write ? UHMM_ACCESS_WRITE : 0) < 0 ? -EFAULT : 0;
}

/* A system page the table maps for this access (not device memory, zero or exclusive)? */
static bool system_entry(uint64_t entry, bool write)
{
	return entry && (!write || (entry & DPT_WRITE)) && !(entry & (DPT_DEVPAGE | DPT_ZERO | DPT_ATOMIC));
}

/*
 * One READ or WRITE's data: the bounce buffer, and for a READ whose pages
 * were all mapped when it began (@direct) the caller's buffer, which runs
 * of system pages then reach directly. Pages [@flushed, done) of a READ
 * are in the bounce buffer, not yet in the caller's.
 */
struct dm_xfer {
	char *bounce;
	uint64_t ptr;		/* the caller's buffer */
	uint64_t flushed;
	bool direct;
};

/*
 * Is every page of [start, start + npages pages) in our table? Then a READ
 * cannot fail on a page that was never there, and may write the caller's
 * buffer as it goes: a READ of a range that is not mapped (bad input, or
 * memory the device must fault in) leaves the caller's buffer untouched
 * unless it succeeds, like copy_to_user() after the kernel's bounce
 * buffer. Only a range unmapped while it is read can fail part-way.
 */
static bool range_mapped(struct uhmm_dmirror *dm, uint64_t start, uint64_t npages)
{
	bool all = true;

	pthread_mutex_lock(&dm->lock);
	for (uint64_t i = 0; all && i < npages; i++)
		all = dpt_get(dm, start + (i << DM_PAGE_SHIFT)) != 0;
	pthread_mutex_unlock(&dm->lock);
	return all;
}

/* A READ's pages [x->flushed, @to) from the bounce buffer to the caller's (no lock held). */
static int xfer_flush(struct dm_xfer *x, uint64_t to)
{
	uint64_t off = x->flushed << DM_PAGE_SHIFT, len = (to - x->flushed) << DM_PAGE_SHIFT;

	if (to <= x->flushed)
		return 0;
	if (uhmm_access_vm(x->ptr + off, x->bounce + off, len, UHMM_ACCESS_WRITE) < 0)
		return -EFAULT;
	x->flushed = to;
	return 0;
}

/*
 * A READ's run of system pages from *@done on, read with one system call
 * (the table lock dropped, as for one page below): straight into the
 * caller's buffer when the READ is direct (one copy where the bounce
 * buffer made two: device READ with page-table hits went from 0.36x to
 * 0.66x memcpy in uhmm bench; what the bounce buffer holds before the run
 * goes to the caller first), else into the bounce buffer. Returns the
 * pages copied: 0 if the run is a single page or the batch failed (the
 * page-by-page path then finds out which page and why, and what the failed
 * batch wrote is rewritten from the bounce buffer later), or -EFAULT if
 * the caller's buffer cannot be written. READ only: process_vm_writev()
 * pins a batch of pages before it writes them, and a migration that zaps a
 * pinned page with MADV_DONTNEED meanwhile (no UFFDIO_MOVE, or it failed)
 * loses what is written into it; a page at a time keeps that window as
 * small as it was (docs/architecture.md, known gaps). CI's stress run with
 * injected UFFDIO_MOVE failures lost a device WRITE with batched writes.
 */
static int64_t read_system_run(struct uhmm_dmirror *dm, uint64_t start, uint64_t npages, struct dm_xfer *x,
			       uint64_t done)
{
	uint64_t j = done + 1, off = done << DM_PAGE_SHIFT, len;
	void *to = x->direct ? (void *)(uintptr_t)(x->ptr + off) : x->bounce + off;
	int64_t ret = 0;

	while (j < npages && system_entry(dpt_get(dm, start + (j << DM_PAGE_SHIFT)), false))
		j++;
	if (j - done < 2)
		return 0;
	len = (j - done) << DM_PAGE_SHIFT;
	pthread_mutex_unlock(&dm->lock);
	if (x->direct)
		ret = xfer_flush(x, done);
	if (!ret && uhmm_access_vm(start + off, to, len, 0) >= 0) {
		if (x->direct)
			x->flushed = j;
		ret = (int64_t)(j - done);
	}
	pthread_mutex_lock(&dm->lock);
	return ret;
}

#define DM_RUN_PAGES 256	/* device pages per process_vm_writev() of a READ */

/*
 * A direct READ's run of our device pages from @done on, straight from
 * device memory into the caller's buffer: one copy, where device memory ->
 * bounce buffer -> caller's buffer made two. The pages are referenced
 * under the lock and copied without it, like MIGRATE_TO_DEV's read-back:
 * writing the caller's buffer may fault into uhmm. A page that left the
 * device meanwhile may have been moved out of device memory (zero copy)
 * under the copy, so only the pages still mapped afterwards count.
 * Returns the pages copied, 0 for fewer than two (the bounce buffer takes
 * them), -EAGAIN if the first page left, or -EFAULT.
 */
static int64_t read_device_run(struct uhmm_dmirror *dm, uint64_t start, uint64_t npages, struct dm_xfer *x,
			       uint64_t done)
{
	struct uhmm_page *pages[DM_RUN_PAGES];
	struct iovec iov[DM_RUN_PAGES];
	uint64_t max = npages - done < DM_RUN_PAGES ? npages - done : DM_RUN_PAGES, n;
	int64_t copied;
	int niov, ret;

	n = dmirror_devmem_get_run(dm, (start >> DM_PAGE_SHIFT) + done, max, pages, iov, &niov);
	if (n < 2) {
		dmirror_devmem_put_run(pages, n);
		return 0;
	}
	pthread_mutex_unlock(&dm->lock);	/* the bounce buffer's pages go out first, without it too */
	ret = xfer_flush(x, done);
	pthread_mutex_lock(&dm->lock);
	copied = ret ? ret : dmirror_devmem_write_run(dm, (start >> DM_PAGE_SHIFT) + done, pages, n, iov, niov,
						     x->ptr + (done << DM_PAGE_SHIFT));
	dmirror_devmem_put_run(pages, n);	/* page_free() takes mem_lock, a leaf */
	if (copied <= 0)
		return copied ? copied : -EAGAIN;
	x->flushed = done + (uint64_t)copied;	/* the rest is written again when it is read again */
	return copied;
}

/* A READ's run of pages from @done on that one system call copies, or 0: see above. */
static int64_t read_run(struct uhmm_dmirror *dm, uint64_t entry, uint64_t start, uint64_t npages,
			struct dm_xfer *x, uint64_t done)
{
	if (system_entry(entry, false))
		return read_system_run(dm, start, npages, x, done);
	if (x->direct && (entry & DPT_DEVPAGE))
		return read_device_run(dm, start, npages, x, done);
	return 0;
}

/*
 * Copy pages from *@done on until a page is not mapped (well enough):
 * -ENOENT with *@done at that page, so the caller faults and resumes.
 */
static int dmirror_do_copy(struct uhmm_dmirror *dm, uint64_t start, uint64_t npages, struct dm_xfer *x,
			   uint64_t *done, bool write)
{
	char *bounce = x->bounce;
	int64_t n;
	int ret = 0;

	pthread_mutex_lock(&dm->lock);
	while (*done < npages) {
		uint64_t addr = start + (*done << DM_PAGE_SHIFT);
		uint64_t entry = dpt_get(dm, addr);

		if (!entry || (write && !(entry & DPT_WRITE))) {
			ret = -ENOENT;
			break;
		}
		if (!write && (n = read_run(dm, entry, start, npages, x, *done))) {
			if (n == -EAGAIN)
				continue;	/* its first page left while it was copied: look again */
			if (n < 0) {
				ret = (int)n;
				break;
			}
			*done += (uint64_t)n;
			continue;
		}
		if (system_entry(entry, write)) {
			/*
			 * A system page: copied through the CPU's page table, so
			 * it is coherent without our lock, and the copy may fault
			 * into uhmm (a page a migration holds, a kernel-mode
			 * access uhmm must serve), whose work may need our lock
			 * (invalidate, migrate_to_ram): never hold it across.
			 */
			pthread_mutex_unlock(&dm->lock);
			ret = dmirror_copy_page(dm, entry, addr, bounce + (*done << DM_PAGE_SHIFT), write);
			pthread_mutex_lock(&dm->lock);
			/*
			 * Unprivileged (user-mode-only userfaultfd) the copy
			 * fails with EFAULT where a migration took the page
			 * meanwhile, instead of waiting for it to come back:
			 * its invalidation has dropped the entry by then, so
			 * fault the page again.
			 */
			if (ret == -EFAULT && dpt_get(dm, addr) != entry)
				ret = -ENOENT;
		} else {
			ret = dmirror_copy_page(dm, entry, addr, bounce + (*done << DM_PAGE_SHIFT), write);
		}
		if (ret)
			break;
		(*done)++;
	}
	pthread_mutex_unlock(&dm->lock);
	return ret;
}

/*
 * The calling thread's bounce buffer, kept between commands (up to 64 MiB;
 * freed when the thread exits): a fresh one costs a page fault and the
 * kernel's zeroing per page, as much as the copy itself (READ went from
 * 0.19x to 0.36x memcpy with this and one system call per run of pages).
 */
#define BOUNCE_KEEP (64UL << 20)
static __thread char *bounce_buf;
static __thread size_t bounce_size;
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_key_init(void)
{
	(void)pthread_key_create(&bounce_key, uhmm_kfree);	/* no key: an exiting thread keeps it */
}

static char *bounce_get(size_t bytes)
{
	if (bytes > BOUNCE_KEEP)
		return uhmm_kmalloc(bytes);
	if (bytes > bounce_size) {
		uhmm_kfree(bounce_buf);
		bounce_buf = uhmm_kmalloc(bytes);
		bounce_size = bounce_buf ? bytes : 0;
		pthread_once(&bounce_once, bounce_key_init);
		pthread_setspecific(bounce_key, bounce_buf);
	}
	return bounce_buf;
}

static void bounce_put(char *bounce)
{
	if (bounce != bounce_buf)
		uhmm_kfree(bounce);	/* a one-off, bigger than what is kept */
}

static int dmirror_rw(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd, bool write)
{
	uint64_t bytes = cmd->npages << DM_PAGE_SHIFT, done = 0, faults = 0;
	struct dm_xfer x = { .ptr = cmd->ptr, .direct = !write && range_mapped(dm, cmd->addr, cmd->npages) };
	int ret;

	x.bounce = bounce_get(bytes);
	if (!x.bounce)
		return -ENOMEM;
	/* The caller's buffer is read (or written) whole, like copy_from_user(). */
	if (write && uhmm_access_vm(cmd->ptr, x.bounce, bytes, 0) < 0) {
		ret = -EFAULT;
		goto out;
	}
	for (;;) {
		ret = dmirror_do_copy(dm, cmd->addr, cmd->npages, &x, &done, write);
		if (ret != -ENOENT)
			break;
		ret = dmirror_fault(dm, cmd->addr + (done << DM_PAGE_SHIFT),
				    cmd->addr + bytes, write);
		if (ret)
			break;
		faults++;
		if (!write && !x.direct)	/* the rest is mapped now: it cannot fail but by a race */
			x.direct = range_mapped(dm, cmd->addr + (done << DM_PAGE_SHIFT), cmd->npages - done);
	}
	if (!ret && !write)
		ret = xfer_flush(&x, cmd->npages);
	if (!ret) {
		cmd->cpages = done;
		cmd->faults = faults;
	}
out:
	bounce_put(x.bounce);
	return ret;
}

/* ---- EXCLUSIVE / CHECK_EXCLUSIVE ---- */

/*
 * Take @addr exclusive and map it atomic, the sequence protocol around
 * it: read_begin() before, our own EXCLUSIVE event skipped, read_retry()
 * under the lock. A revocation (any CPU touch) in between: again.
 */
static int dmirror_exclusive_page(struct uhmm_dmirror *dm, uint64_t addr)
{
	for (int tries = 0; tries < 16; tries++) {
		unsigned long seq = uhmm_interval_read_begin(&dm->notifier);
		struct uhmm_dmirror *outer = dmirror_migrating_enter(dm);
		bool mapped = false;
		void *mem;
		int ret = uhmm_make_device_exclusive(dm->mm, addr, dm->owner, &mem);

		dmirror_migrating_leave(outer);
		if (ret)
			return ret;
		pthread_mutex_lock(&dm->lock);
		if (!uhmm_interval_read_retry(&dm->notifier, seq)) {
			ret = dpt_set(dm, addr, (uintptr_t)mem | DPT_ATOMIC | DPT_READ | DPT_WRITE);
			mapped = ret == 0;
		}
		pthread_mutex_unlock(&dm->lock);
		if (ret)
			return ret;
		if (mapped)
			return 0;
	}
	return -EBUSY;
}

static int dmirror_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *c)
{
	for (uint64_t i = 0; i < c->npages; i++) {
		int ret = dmirror_exclusive_page(dm, c->addr + (i << DM_PAGE_SHIFT));

		if (ret)
			return ret;
	}
	/* What the device now holds, read back through its page table. */
	return dmirror_rw(dm, c, false);
}

static int entry_atomic(void *arg, uint64_t key, uint64_t *val)
{
	(void)arg;
	(void)key;
	return (*val & DPT_ATOMIC) ? -EPERM : 0;
}

/* -EPERM while any page of the range is still mapped atomic. */
static int dmirror_check_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *c)
{
	int ret;

	pthread_mutex_lock(&dm->lock);
	ret = uhmm_radix_walk(&dm->pt, c->addr >> DM_PAGE_SHIFT, (c->addr >> DM_PAGE_SHIFT) + c->npages - 1,
			      entry_atomic, NULL);
	pthread_mutex_unlock(&dm->lock);
	if (!ret) {
		c->cpages = c->npages;
		c->faults = 0;
	}
	return ret;
}

/* ---- SNAPSHOT ---- */

static uint8_t dmirror_snapshot_byte(struct uhmm_dmirror *dm, uint64_t pfn)
{
	unsigned int order;
	uint8_t perm;

	if (pfn & UHMM_PFN_ERROR)
		return UHMM_DMIRROR_PROT_ERROR;
	if (!(pfn & UHMM_PFN_VALID))
		return UHMM_DMIRROR_PROT_NONE;
	if (uhmm_pfn_to_pfn(pfn) >= UHMM_DEVICE_PFN_BASE)
		perm = dmirror_devmem_is_local(dm, uhmm_pfn_to_pfn(pfn))
			       ? UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL
			       : UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (uhmm_pfn_is_zero(pfn))
		perm = UHMM_DMIRROR_PROT_ZERO;
	else
		perm = UHMM_DMIRROR_PROT_NONE;
	perm |= (pfn & UHMM_PFN_WRITE) ? UHMM_DMIRROR_PROT_WRITE : UHMM_DMIRROR_PROT_READ;
	order = uhmm_pfn_to_map_order(pfn);
	if (order + DM_PAGE_SHIFT == 21)
		perm |= UHMM_DMIRROR_PROT_PMD;
	else if (order + DM_PAGE_SHIFT == 30)
		perm |= UHMM_DMIRROR_PROT_PUD;
	return perm;
}

struct snapshot_out {
	uint8_t *bytes;		/* one per page of the command */
	uint64_t first;		/* the command's first address */
};

static int apply_snapshot(struct uhmm_dmirror *dm, const struct uhmm_range *range, void *arg)
{
	struct snapshot_out *so = arg;
	uint8_t *out = so->bytes + ((range->start - so->first) >> DM_PAGE_SHIFT);
	uint64_t n = (range->end - range->start) >> DM_PAGE_SHIFT;

	for (uint64_t i = 0; i < n; i++)
		out[i] = dmirror_snapshot_byte(dm, range->hmm_pfns[i]);
	return 0;
}

static int dmirror_snapshot(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd)
{
	uint64_t pfns[DM_CHUNK_PAGES], end = cmd->addr + (cmd->npages << DM_PAGE_SHIFT);
	struct uhmm_range range = {
		.notifier = &dm->notifier, .hmm_pfns = pfns, .dev_private_owner = dm->owner,
	};
	uint8_t *bytes = uhmm_kmalloc(cmd->npages);
	struct snapshot_out so = { bytes, cmd->addr };
	int ret = bytes ? dmirror_range_chunks(dm, &range, cmd->addr, end, apply_snapshot, &so) : -ENOMEM;

	if (!ret && uhmm_access_vm(cmd->ptr, bytes, cmd->npages, UHMM_ACCESS_WRITE) < 0)
		ret = -EFAULT;
	if (!ret) {
		cmd->cpages = cmd->npages;
		cmd->faults = 0;
	}
	uhmm_kfree(bytes);
	return ret;
}

/* ---- open / close / dispatch ---- */

__attribute__((visibility("default"))) int uhmm_dmirror_open(unsigned int device, struct uhmm_dmirror **out)
{
	struct uhmm_dmirror *dm;
	int ret;

	if (!out)
		return -EINVAL;
	if (device >= DM_NDEVICES)
		return -ENODEV;
	dm = uhmm_kcalloc(1, sizeof(*dm));
	if (!dm)
		return -ENOMEM;
	dm->device = device;
	dm->owner = dmirror_device_owner(device);
	dm->pid = getpid();
	pthread_mutex_init(&dm->lock, NULL);
	ret = uhmm_mm_get(&dm->mm);
	if (ret)
		goto err_free;
	ret = uhmm_interval_notifier_insert(&dm->notifier, dm->mm, 0, DM_VA_LIMIT, &dmirror_notifier_ops);
	if (ret)
		goto err_put;
	ret = dmirror_devmem_attach(dm);
	if (ret)
		goto err_remove;
	*out = dm;
	return 0;

err_remove:
	uhmm_interval_notifier_remove(&dm->notifier);
err_put:
	uhmm_mm_put(dm->mm);
err_free:
	pthread_mutex_destroy(&dm->lock);
	uhmm_kfree(dm);
	return ret;
}

__attribute__((visibility("default"))) int uhmm_dmirror_close(struct uhmm_dmirror *dm)
{
	if (!dm)
		return -EINVAL;
	/* A forked child's copy of the parent's instance: only our memory to free. */
	if (dmirror_owned_here(dm)) {
		if (dmirror_devmem_detach(dm))
			return -EBUSY;	/* device pages still referenced: nothing freed */
		uhmm_interval_notifier_remove(&dm->notifier);
		uhmm_mm_put(dm->mm);
	}
	uhmm_radix_free(&dm->pt);
	pthread_mutex_destroy(&dm->lock);
	dmirror_devmem_forget(dm);	/* a forked child's copy of the bookkeeping */
	uhmm_kfree(dm);
	return 0;
}

static int dmirror_check_cmd(const struct uhmm_dmirror_cmd *c)
{
	if ((c->addr & (DM_PAGE_SIZE - 1)) || c->npages == 0)
		return -EINVAL;
	if (c->npages > (UINT64_MAX - c->addr) >> DM_PAGE_SHIFT)
		return -EINVAL;
	if ((c->addr + (c->npages << DM_PAGE_SHIFT)) > DM_VA_LIMIT)
		return -EINVAL;
	return 0;
}

__attribute__((visibility("default"))) int uhmm_dmirror_cmd(struct uhmm_dmirror *dm, unsigned int cmd, struct uhmm_dmirror_cmd *c)
{
	int ret;

	if (!dm || !c)
		return -EINVAL;
	ret = dmirror_check_cmd(c);
	if (ret)
		return ret;
	if (!dmirror_owned_here(dm))
		return -EBADF;
	/* Changes reported after the fact reach our page table before we use it. */
	uhmm_mm_sync(dm->mm);

	switch (cmd) {
	case UHMM_DMIRROR_READ:
		return dmirror_rw(dm, c, false);
	case UHMM_DMIRROR_WRITE:
		return dmirror_rw(dm, c, true);
	case UHMM_DMIRROR_SNAPSHOT:
		return dmirror_snapshot(dm, c);
	case UHMM_DMIRROR_FLAGS:
		__atomic_store_n(&dm->flags, c->npages, __ATOMIC_RELAXED);
		c->cpages = 0;
		c->faults = 0;
		return 0;
	case UHMM_DMIRROR_EXCLUSIVE:
		return dmirror_exclusive(dm, c);
	case UHMM_DMIRROR_CHECK_EXCLUSIVE:
		return dmirror_check_exclusive(dm, c);
	case UHMM_DMIRROR_MIGRATE_TO_DEV:
	case UHMM_DMIRROR_MIGRATE_TO_SYS:
	case UHMM_DMIRROR_RELEASE:
		return dmirror_migrate_cmd(dm, cmd, c);
	default:
		return -EINVAL;
	}
}
