// SPDX-License-Identifier: MIT
/*
 * A device TLB kept coherent with interval notifiers: the driver caches
 * virtual page -> pfn translations it got from uhmm_range_fault(), and
 * drops exactly the ones an invalidation covers, so it never uses a stale
 * translation and never flushes more than it must.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>

#define NPAGES 64
#define PAGE 4096UL

struct tlb {
	struct uhmm_interval_notifier sub;	/* first: the callback gets &sub */
	pthread_mutex_t lock;
	uint64_t base;
	uint64_t entry[NPAGES];			/* hmm pfn, 0 = not cached */
	int hits, misses, dropped;
};

static bool tlb_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *r,
			   unsigned long cur_seq)
{
	struct tlb *t = (struct tlb *)sub;

	pthread_mutex_lock(&t->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	for (uint64_t a = r->start < t->base ? t->base : r->start; a < r->end && a < t->base + NPAGES * PAGE;
	     a += PAGE) {
		t->dropped += t->entry[(a - t->base) / PAGE] != 0;
		t->entry[(a - t->base) / PAGE] = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return true;
}
static const struct uhmm_interval_notifier_ops tlb_ops = { .invalidate = tlb_invalidate };

/* Translate @addr for a device write: a hit, or one range_fault on a miss. */
static uint64_t tlb_translate(struct tlb *t, uint64_t addr)
{
	uint64_t idx = (addr - t->base) / PAGE, pfn;

	for (;;) {
		pthread_mutex_lock(&t->lock);
		if ((pfn = t->entry[idx]) != 0) {
			t->hits++;
			pthread_mutex_unlock(&t->lock);
			return pfn;
		}
		pthread_mutex_unlock(&t->lock);

		struct uhmm_range r = {
			.notifier = &t->sub, .start = t->base + idx * PAGE, .end = t->base + (idx + 1) * PAGE,
			.hmm_pfns = &pfn, .default_flags = UHMM_PFN_REQ_FAULT | UHMM_PFN_REQ_WRITE,
		};
		r.notifier_seq = uhmm_interval_read_begin(&t->sub);
		if (uhmm_range_fault(&r))
			continue;
		pthread_mutex_lock(&t->lock);
		if (!uhmm_interval_read_retry(&t->sub, r.notifier_seq)) {
			t->entry[idx] = pfn;	/* valid until the next invalidation of this page */
			t->misses++;
		}
		pthread_mutex_unlock(&t->lock);
	}
}

int main(void)
{
	struct tlb t = { .lock = PTHREAD_MUTEX_INITIALIZER };
	char *buf = (char *)mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uhmm_mm *mm;
	int ret = uhmm_mm_get(&mm);

	if (ret) {
		fprintf(stderr, "tlb_cache: %s\n", strerror(-ret));
		return 1;
	}
	t.base = (uintptr_t)buf;
	uhmm_interval_notifier_insert(&t.sub, mm, t.base, NPAGES * PAGE, &tlb_ops);
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < NPAGES; i++) {
			char v = (char)('a' + i % 26);	/* the device writes through its TLB */

			uhmm_access_vm(uhmm_pfn_to_pfn(tlb_translate(&t, t.base + i * PAGE)) * PAGE, &v, 1,
				       UHMM_ACCESS_WRITE);
		}
	printf("two passes over %d pages: %d misses, %d hits\n", NPAGES, t.misses, t.hits);

	/* The CPU protects a quarter of the buffer: only those translations go. */
	mprotect(buf, NPAGES / 4 * PAGE, PROT_READ);
	mprotect(buf, NPAGES / 4 * PAGE, PROT_READ | PROT_WRITE);
	printf("mprotect of %d pages dropped %d cached translations\n", NPAGES / 4, t.dropped);
	for (int i = 0; i < NPAGES; i++)
		tlb_translate(&t, t.base + i * PAGE);
	printf("third pass: %d misses, %d hits in all; CPU sees the device's writes: %s\n", t.misses, t.hits,
	       buf[PAGE] == 'b' && buf[NPAGES * PAGE - PAGE] == (char)('a' + (NPAGES - 1) % 26) ? "yes" : "NO");
	uhmm_interval_notifier_remove(&t.sub);
	uhmm_mm_put(mm);
	return t.misses == NPAGES + NPAGES / 4 && t.dropped == NPAGES / 4 && buf[PAGE] == 'b' ? 0 : 1;
}
