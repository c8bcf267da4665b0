// SPDX-License-Identifier: MIT
/*
 * The smallest mirror: a "device" keeps a snapshot of a malloc'ed buffer's
 * page table, built with uhmm_range_fault() under the sequence protocol,
 * and an interval notifier tells it when the CPU's page table changes.
 *
 *   read_begin -> range_fault -> lock -> read_retry? -> use pfns -> unlock
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>

#define NPAGES 256
#define PAGE 4096UL

struct mirror {
	struct uhmm_interval_notifier sub;	/* first: the callback gets &sub */
	pthread_mutex_t lock;			/* the "device page table" lock */
	uint64_t pfns[NPAGES];
	int valid, invalidations;
};

static bool mirror_invalidate(struct uhmm_interval_notifier *sub, const struct uhmm_notifier_range *r,
			      unsigned long cur_seq)
{
	struct mirror *m = (struct mirror *)sub;

	pthread_mutex_lock(&m->lock);
	uhmm_interval_set_seq(sub, cur_seq);
	m->valid = 0;	/* a real device would drop only [r->start, r->end) */
	m->invalidations++;
	pthread_mutex_unlock(&m->lock);
	(void)r;
	return true;
}
static const struct uhmm_interval_notifier_ops mirror_ops = { .invalidate = mirror_invalidate };

/* Snapshot (faulting in) the buffer's pages; returns how many passes it took. */
static int mirror_fault(struct mirror *m, char *buf)
{
	struct uhmm_range range = {
		.notifier = &m->sub, .start = (uintptr_t)buf, .end = (uintptr_t)buf + NPAGES * PAGE,
		.hmm_pfns = m->pfns, .default_flags = UHMM_PFN_REQ_FAULT,
	};
	for (int pass = 1;; pass++) {
		range.notifier_seq = uhmm_interval_read_begin(&m->sub);
		int ret = uhmm_range_fault(&range);

		if (ret == -EBUSY)
			continue;	/* invalidated while faulting: start over */
		if (ret)
			return ret;
		pthread_mutex_lock(&m->lock);
		if (uhmm_interval_read_retry(&m->sub, range.notifier_seq)) {
			pthread_mutex_unlock(&m->lock);
			continue;	/* invalidated before we could commit */
		}
		m->valid = 1;	/* commit: the pfns may be used until the next invalidate */
		pthread_mutex_unlock(&m->lock);
		return pass;
	}
}

/* The device reads byte 0 of every page through its page table. */
static long device_sum(struct mirror *m)
{
	long sum = 0;

	pthread_mutex_lock(&m->lock);
	for (int i = 0; m->valid && i < NPAGES; i++) {
		char c = 0;	/* the shared zero page (a hole read) holds zeros */

		if (!uhmm_pfn_is_zero(m->pfns[i]) &&
		    uhmm_access_vm(uhmm_pfn_to_pfn(m->pfns[i]) * PAGE, &c, 1, 0) != 1)
			return -1;	/* unmapped under us: cannot happen while valid */
		sum += c;
	}
	pthread_mutex_unlock(&m->lock);
	return sum;
}

int main(void)
{
	struct mirror m = { .lock = PTHREAD_MUTEX_INITIALIZER };
	char *buf = (char *)aligned_alloc(PAGE, NPAGES * PAGE);
	struct uhmm_mm *mm;
	int ret;

	if (!buf || (ret = uhmm_mm_get(&mm)) != 0) {
		fprintf(stderr, "mirror: no uhmm: %s\n", buf ? strerror(-ret) : "no memory");
		return 1;
	}
	memset(buf, 1, NPAGES * PAGE);
	uhmm_interval_notifier_insert(&m.sub, mm, (uintptr_t)buf, NPAGES * PAGE, &mirror_ops);

	ret = mirror_fault(&m, buf);
	printf("mirrored %d pages in %d pass(es); device sum %ld (expect %d)\n", NPAGES, ret, device_sum(&m),
	       NPAGES);
	/* The CPU drops half the pages: the device hears of it before they go. */
	madvise(buf, NPAGES / 2 * PAGE, MADV_DONTNEED);
	printf("after madvise(DONTNEED): %d invalidation(s), mirror valid: %d\n", m.invalidations, m.valid);
	ret = mirror_fault(&m, buf);	/* the dropped pages read as the zero page */
	long sum = device_sum(&m);

	printf("re-mirrored in %d pass(es); device sum %ld (expect %d: half the pages are zero now)\n",
	       ret, sum, NPAGES / 2);
	uhmm_interval_notifier_remove(&m.sub);
	uhmm_mm_put(mm);
	free(buf);
	return m.invalidations >= 1 && sum == NPAGES / 2 ? 0 : 1;
}
