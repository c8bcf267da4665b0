// SPDX-License-Identifier: MIT
/*
 * Interval notifiers, with the kernel's sequence protocol
 * (mm/mmu_notifier.c):
 *
 *  - mm->invalidate_seq is odd while an invalidation that hit at least one
 *    notifier is running, even otherwise;
 *  - a notifier's invalidate() calls uhmm_interval_set_seq(sub, cur_seq)
 *    under the driver lock, so the notifier's sequence becomes the odd value;
 *  - uhmm_interval_read_begin() waits until the mm's sequence has moved past
 *    the notifier's (the invalidation that touched it has ended) and returns
 *    the notifier's sequence;
 *  - uhmm_interval_read_retry(), under the driver lock, is true if an
 *    invalidate() ran in between.
 *
 * mm->lock is a leaf lock: callbacks run without it.
 */
#include <sched.h>
#include <stdlib.h>

#include "internal.h"

static unsigned long seq_load(const unsigned long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void seq_store(unsigned long *p, unsigned long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static bool notifier_overlaps(const struct uhmm_interval_notifier *n, uint64_t start, uint64_t end)
{
	return n->start < end && n->last >= start;
}

UHMM_EXPORT int uhmm_interval_notifier_insert(struct uhmm_interval_notifier *sub,
					      struct uhmm_mm *mm, uint64_t start,
					      uint64_t length,
					      const struct uhmm_interval_notifier_ops *ops)
{
	if (!sub || !mm || !ops || !ops->invalidate || length == 0 || start + length - 1 < start)
		return -EINVAL;
	if (!uhmm_mm_is_current(mm))
		return -EINVAL;

	pthread_mutex_lock(&mm->lock);
	for (struct uhmm_interval_notifier *n = mm->notifiers; n; n = n->next) {
		if (n == sub) {
			pthread_mutex_unlock(&mm->lock);
			return -EEXIST;
		}
	}
	sub->mm = mm;
	sub->ops = ops;
	sub->start = start;
	sub->last = start + length - 1;
	/*
	 * Inserted while an invalidation runs: we cannot know whether it covers
	 * this range, so assume it does and make read_begin() wait for it.
	 */
	if (mm->invalidate_seq & 1)
		seq_store(&sub->invalidate_seq, mm->invalidate_seq);
	else
		seq_store(&sub->invalidate_seq, mm->invalidate_seq - 1);
	sub->next = mm->notifiers;
	mm->notifiers = sub;
	mm->n_notifiers++;
	atomic_fetch_add(&mm->refs, 1);
	pthread_mutex_unlock(&mm->lock);
	return 0;
}

UHMM_EXPORT int uhmm_interval_notifier_remove(struct uhmm_interval_notifier *sub)
{
	struct uhmm_interval_notifier **pp;
	struct uhmm_mm *mm;

	if (!sub || !sub->mm)
		return -EINVAL;
	mm = sub->mm;
	pthread_mutex_lock(&mm->lock);
	for (pp = &mm->notifiers; *pp && *pp != sub; pp = &(*pp)->next)
		;
	if (!*pp) {
		pthread_mutex_unlock(&mm->lock);
		return -EINVAL;
	}
	*pp = sub->next;
	mm->n_notifiers--;
	/* An invalidation in flight may still hold @sub in its list: wait it out. */
	if (mm->invalidate_seq & 1) {
		unsigned long seq = mm->invalidate_seq;

		while (mm->invalidate_seq == seq)
			pthread_cond_wait(&mm->cond, &mm->lock);
	}
	pthread_mutex_unlock(&mm->lock);
	sub->mm = NULL;
	sub->next = NULL;
	uhmm_mm_put(mm);
	return 0;
}

UHMM_EXPORT unsigned long uhmm_interval_read_begin(struct uhmm_interval_notifier *sub)
{
	struct uhmm_mm *mm = sub->mm;
	unsigned long seq;

	pthread_mutex_lock(&mm->lock);
	seq = seq_load(&sub->invalidate_seq);
	while (seq == mm->invalidate_seq)
		pthread_cond_wait(&mm->cond, &mm->lock);
	pthread_mutex_unlock(&mm->lock);
	return seq;
}

UHMM_EXPORT bool uhmm_interval_read_retry(struct uhmm_interval_notifier *sub, unsigned long seq)
{
	bool retry = seq_load(&sub->invalidate_seq) != seq;

	if (retry)
		uhmm_stat_add(UHMM_STAT(read_retries), 1);
	return retry;
}

UHMM_EXPORT bool uhmm_interval_check_retry(struct uhmm_interval_notifier *sub, unsigned long seq)
{
	return seq_load(&sub->invalidate_seq) != seq;
}

UHMM_EXPORT void uhmm_interval_set_seq(struct uhmm_interval_notifier *sub, unsigned long cur_seq)
{
	seq_store(&sub->invalidate_seq, cur_seq);
}

/*
 * Room for the notifiers that overlap @r, sized under the lock. Allocation
 * happens with the lock dropped; if the list grew meanwhile, size again.
 * A failed allocation is retried: skipping a notifier would let a device
 * keep a stale mapping, which is worse than waiting for memory.
 */
static struct uhmm_interval_notifier **inval_reserve(struct uhmm_mm *mm, struct uhmm_interval_notifier **stack,
						     size_t stack_n, size_t *cap)
{
	struct uhmm_interval_notifier **hit;
	size_t need = mm->n_notifiers;

	while (need > stack_n) {
		pthread_mutex_unlock(&mm->lock);
		while (!(hit = uhmm_kmalloc(need * sizeof(*hit))))
			sched_yield();
		pthread_mutex_lock(&mm->lock);
		if (mm->n_notifiers <= need) {
			*cap = need;
			return hit;
		}
		uhmm_kfree(hit);
		need = mm->n_notifiers;
	}
	*cap = stack_n;
	return stack;
}

/*
 * Collect the notifiers overlapping @r under the lock; the callbacks run
 * after it is dropped. Removal waits for the invalidation to end, so the
 * collected pointers stay valid until uhmm_invalidate_end().
 */
void uhmm_invalidate_start(struct uhmm_mm *mm, const struct uhmm_notifier_range *r)
{
	struct uhmm_interval_notifier *stack[16], **hit;
	size_t n = 0, cap;
	unsigned long seq;

	pthread_mutex_lock(&mm->lock);
	hit = inval_reserve(mm, stack, UHMM_ARRAY_SIZE(stack), &cap);
	mm->active_invalidations++;
	for (struct uhmm_interval_notifier *s = mm->notifiers; s && n < cap; s = s->next)
		if (notifier_overlaps(s, r->start, r->end))
			hit[n++] = s;
	if (n)
		mm->invalidate_seq |= 1;
	seq = mm->invalidate_seq;
	pthread_mutex_unlock(&mm->lock);

	if (r->event < UHMM_ARRAY_SIZE(((struct uhmm_stats *)0)->invalidations))
		uhmm_stat_add(UHMM_STAT(invalidations) + r->event, 1);
	if (uhmm_tracing())
		uhmm_trace_span("invalidate", "invalidate", uhmm_now_ns(), uhmm_now_ns(),
				"\"event\":\"%s\",\"start\":\"%#llx\",\"end\":\"%#llx\",\"notifiers\":%zu",
				uhmm_event_name(r->event), (unsigned long long)r->start,
				(unsigned long long)r->end, n);
	for (size_t i = 0; i < n; i++)
		hit[i]->ops->invalidate(hit[i], r, seq);
	if (hit != stack)
		uhmm_kfree(hit);
}

void uhmm_invalidate_end(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->lock);
	if (--mm->active_invalidations == 0 && (mm->invalidate_seq & 1)) {
		mm->invalidate_seq++;
		pthread_cond_broadcast(&mm->cond);
	}
	pthread_mutex_unlock(&mm->lock);
}

void uhmm_invalidate(struct uhmm_mm *mm, uint64_t start, uint64_t end,
		     enum uhmm_notifier_event event, void *owner)
{
	struct uhmm_notifier_range r = {
		.start = start, .end = end, .event = event,
		.flags = UHMM_NOTIFIER_RANGE_BLOCKABLE, .owner = owner,
	};

	uhmm_invalidate_start(mm, &r);
	uhmm_invalidate_end(mm);
}

bool uhmm_notifiers_overlap(struct uhmm_mm *mm, uint64_t start, uint64_t end)
{
	bool hit = false;

	pthread_mutex_lock(&mm->lock);
	for (struct uhmm_interval_notifier *s = mm->notifiers; s && !hit; s = s->next)
		hit = notifier_overlaps(s, start, end);
	pthread_mutex_unlock(&mm->lock);
	return hit;
}
