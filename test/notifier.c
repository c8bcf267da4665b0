// SPDX-License-Identifier: MIT
/* Interval notifiers: arguments, events, and the sequence protocol. */
#include <pthread.h>
#include <sys/syscall.h>

#include "harness.h"

struct rec {
	struct uhmm_interval_notifier n;
	pthread_mutex_t lock;
	int calls;
	struct uhmm_notifier_range last;
	struct uhmm_notifier_range by_event[8];	/* the last range of each event */
	int seen[8];
	unsigned int sleep_us;		/* make invalidate() slow */
	int in_cb, cb_done;		/* atomic */
};

/* Read the record under its lock (the callback runs on other threads). */
static int rec_seen(struct rec *x, int ev)
{
	int n;

	pthread_mutex_lock(&x->lock);
	n = ev < 0 ? x->calls : x->seen[ev];
	pthread_mutex_unlock(&x->lock);
	return n;
}

static struct uhmm_notifier_range rec_range(struct rec *x, int ev)
{
	struct uhmm_notifier_range r;

	pthread_mutex_lock(&x->lock);
	r = x->by_event[ev];
	pthread_mutex_unlock(&x->lock);
	return r;
}

static int flag_get(int *f) { return __atomic_load_n(f, __ATOMIC_ACQUIRE); }
static void flag_set(int *f) { __atomic_store_n(f, 1, __ATOMIC_RELEASE); }

static bool rec_invalidate(struct uhmm_interval_notifier *s, const struct uhmm_notifier_range *r,
			   unsigned long seq)
{
	struct rec *x = (struct rec *)s;

	pthread_mutex_lock(&x->lock);
	uhmm_interval_set_seq(s, seq);
	pthread_mutex_unlock(&x->lock);
	flag_set(&x->in_cb);
	if (x->sleep_us)
		usleep(x->sleep_us);
	pthread_mutex_lock(&x->lock);
	x->calls++;
	x->last = *r;
	x->by_event[r->event] = *r;
	x->seen[r->event]++;
	pthread_mutex_unlock(&x->lock);
	flag_set(&x->cb_done);
	return true;
}
static const struct uhmm_interval_notifier_ops rec_ops = { .invalidate = rec_invalidate };

static struct uhmm_mm *get_mm(void)
{
	struct uhmm_mm *mm = NULL;
	int ret = uhmm_mm_get(&mm);

	if (ret == -EPERM || ret == -ENOSYS)
		SKIP("no userfaultfd");
	ASSERT_OK(ret);
	return mm;
}

/* Make the range known to uhmm (registered), as a device would by faulting it. */
static void mirror_range(struct rec *x, void *p, size_t len)
{
	uint64_t *pfns = calloc(len / PAGE, sizeof(*pfns));
	struct uhmm_range r = {
		.notifier = &x->n, .start = (uintptr_t)p, .end = (uintptr_t)p + len,
		.hmm_pfns = pfns, .default_flags = UHMM_PFN_REQ_FAULT,
	};
	int ret;

	do {
		r.notifier_seq = uhmm_interval_read_begin(&x->n);
		ret = uhmm_range_fault(&r);
	} while (ret == -EBUSY);
	ASSERT_OK(ret);
	free(pfns);
}

TEST(notifier_insert_remove_args)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct uhmm_interval_notifier_ops empty = { 0 };

	ASSERT_EQ(uhmm_interval_notifier_insert(NULL, mm, 0, PAGE, &rec_ops), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&x.n, NULL, 0, PAGE, &rec_ops), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&x.n, mm, 0, PAGE, NULL), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&x.n, mm, 0, PAGE, &empty), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&x.n, mm, 0, 0, &rec_ops), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_insert(&x.n, mm, UINT64_MAX - 10, PAGE, &rec_ops), -EINVAL);
	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, 0, PAGE, &rec_ops));
	ASSERT_EQ(uhmm_interval_notifier_insert(&x.n, mm, 0, PAGE, &rec_ops), -EEXIST);
	ASSERT_OK(uhmm_interval_notifier_remove(&x.n));
	ASSERT_EQ(uhmm_interval_notifier_remove(&x.n), -EINVAL);
	ASSERT_EQ(uhmm_interval_notifier_remove(NULL), -EINVAL);
	uhmm_mm_put(mm);
}

/* Each kind of change reaches an overlapping notifier with its event; others hear nothing. */
static void event_case(bool raw)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER }, other = { .lock = PTHREAD_MUTEX_INITIALIZER };
	char *p = map_anon(16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *far = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, (uintptr_t)p, 16 * PAGE, &rec_ops));
	ASSERT_OK(uhmm_interval_notifier_insert(&other.n, mm, (uintptr_t)far, PAGE, &rec_ops));
	mirror_range(&x, p, 16 * PAGE);

	/* The service thread may report raw calls a moment later: wait for it. */
#define WAIT_SEEN(ev) for (int _i = 0; _i < 2000 && !rec_seen(&x, ev); _i++) usleep(1000)
	if (raw)
		ASSERT_OK(syscall(SYS_madvise, p, 2 * PAGE, MADV_DONTNEED));
	else
		ASSERT_OK(madvise(p, 2 * PAGE, MADV_DONTNEED));
	WAIT_SEEN(UHMM_NOTIFY_CLEAR);
	ASSERT_GE(rec_seen(&x, UHMM_NOTIFY_CLEAR), 1);
	ASSERT_EQ(rec_range(&x, UHMM_NOTIFY_CLEAR).start, (uintptr_t)p);
	ASSERT_EQ(rec_range(&x, UHMM_NOTIFY_CLEAR).end, (uintptr_t)p + 2 * PAGE);

	if (raw)
		ASSERT_OK(syscall(SYS_munmap, p + 8 * PAGE, 8 * PAGE));
	else
		ASSERT_OK(munmap(p + 8 * PAGE, 8 * PAGE));
	WAIT_SEEN(UHMM_NOTIFY_UNMAP);
	ASSERT_GE(rec_seen(&x, UHMM_NOTIFY_UNMAP), 1);
	ASSERT_EQ(rec_range(&x, UHMM_NOTIFY_UNMAP).start, (uintptr_t)p + 8 * PAGE);
	ASSERT_EQ(rec_range(&x, UHMM_NOTIFY_UNMAP).end, (uintptr_t)p + 16 * PAGE);

	if (!raw) {
		int before;

		ASSERT_OK(uhmm_mm_sync(mm));	/* let the events' own invalidations land */
		before = rec_seen(&x, UHMM_NOTIFY_PROTECTION_VMA);
		ASSERT_OK(mprotect(p, 4 * PAGE, PROT_READ));
		/* before mprotect returned */
		ASSERT_EQ(rec_seen(&x, UHMM_NOTIFY_PROTECTION_VMA), before + 1);
		ASSERT_OK(mprotect(p, 4 * PAGE, PROT_READ | PROT_WRITE));
		/* adding permission: nothing */
		ASSERT_EQ(rec_seen(&x, UHMM_NOTIFY_PROTECTION_VMA), before + 1);
	}
	ASSERT_EQ(rec_seen(&other, -1), 0);
	ASSERT_OK(uhmm_interval_notifier_remove(&x.n));
	ASSERT_OK(uhmm_interval_notifier_remove(&other.n));
	uhmm_mm_put(mm);
}
TEST(notifier_events) { event_case(false); }
TEST(notifier_events_raw) { event_case(true); }

/* The interposed calls invalidate before they return (kernel order). */
TEST(notifier_before_return)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER };
	char *p = map_anon(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, (uintptr_t)p, 4 * PAGE, &rec_ops));
	ASSERT_OK(madvise(p, PAGE, MADV_DONTNEED));
	ASSERT_GE(rec_seen(&x, UHMM_NOTIFY_CLEAR), 1);
	ASSERT_OK(munmap(p, PAGE));
	ASSERT_GE(rec_seen(&x, UHMM_NOTIFY_UNMAP), 1);
	ASSERT_OK(uhmm_interval_notifier_remove(&x.n));
	uhmm_mm_put(mm);
}

/* An invalidation between read_begin and range_fault: -EBUSY, then a retry works. */
TEST(notifier_seq_ebusy_retry)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER };
	char *p = map_anon(8 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t pfns[8];
	struct uhmm_range r = {
		.notifier = &x.n, .start = (uintptr_t)p, .end = (uintptr_t)p + 8 * PAGE,
		.hmm_pfns = pfns, .default_flags = UHMM_PFN_REQ_FAULT,
	};

	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, (uintptr_t)p, 8 * PAGE, &rec_ops));
	r.notifier_seq = uhmm_interval_read_begin(&x.n);
	ASSERT_OK(madvise(p, PAGE, MADV_DONTNEED));	/* invalidates */
	ASSERT_EQ(uhmm_range_fault(&r), -EBUSY);
	ASSERT_TRUE(uhmm_interval_read_retry(&x.n, r.notifier_seq));
	r.notifier_seq = uhmm_interval_read_begin(&x.n);
	ASSERT_OK(uhmm_range_fault(&r));
	pthread_mutex_lock(&x.lock);
	ASSERT_FALSE(uhmm_interval_read_retry(&x.n, r.notifier_seq));
	pthread_mutex_unlock(&x.lock);
	for (int i = 0; i < 8; i++)
		ASSERT_TRUE(pfns[i] & UHMM_PFN_VALID);
	ASSERT_OK(uhmm_interval_notifier_remove(&x.n));
	uhmm_mm_put(mm);
}

/* read_begin waits for an invalidation in progress to end. */
struct slow_arg {
	char *p;
};
static void *slow_madvise(void *arg)
{
	struct slow_arg *a = arg;

	madvise(a->p, PAGE, MADV_DONTNEED);
	return NULL;
}

TEST(notifier_read_begin_waits)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER, .sleep_us = 200000 };
	struct slow_arg a = { map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE) };
	pthread_t t;

	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, (uintptr_t)a.p, PAGE, &rec_ops));
	ASSERT_OK(pthread_create(&t, NULL, slow_madvise, &a));
	while (!flag_get(&x.in_cb))
		usleep(100);
	(void)uhmm_interval_read_begin(&x.n);
	ASSERT_TRUE(flag_get(&x.cb_done));	/* it could not return while invalidate() ran */
	pthread_join(t, NULL);
	ASSERT_OK(uhmm_interval_notifier_remove(&x.n));
	uhmm_mm_put(mm);
}

/* Removal waits for an invalidation that may still call the notifier. */
static void *remove_thread(void *arg)
{
	struct rec *x = arg;

	uhmm_interval_notifier_remove(&x->n);
	return NULL;
}

TEST(notifier_remove_waits_for_invalidation)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER, .sleep_us = 200000 };
	struct slow_arg a = { map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE) };
	pthread_t t1, t2;

	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, (uintptr_t)a.p, PAGE, &rec_ops));
	ASSERT_OK(pthread_create(&t1, NULL, slow_madvise, &a));
	while (!flag_get(&x.in_cb))
		usleep(100);
	ASSERT_OK(pthread_create(&t2, NULL, remove_thread, &x));
	pthread_join(t2, NULL);
	ASSERT_TRUE(flag_get(&x.cb_done));
	pthread_join(t1, NULL);
	uhmm_mm_put(mm);
}

/* Continuous invalidation: a driver's bounded retry loop ends with -EBUSY. */
static void *invalidate_forever(void *arg)
{
	struct slow_arg *a = arg;

	for (int i = 0; i < 4000; i++)
		madvise(a->p, PAGE, MADV_DONTNEED);
	return NULL;
}

TEST(notifier_busy_range_fault)
{
	struct uhmm_mm *mm = get_mm();
	struct rec x = { .lock = PTHREAD_MUTEX_INITIALIZER, .sleep_us = 500 };
	struct slow_arg a = { map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE) };
	uint64_t pfn;
	struct uhmm_range r = {
		.notifier = &x.n, .start = (uintptr_t)a.p, .end = (uintptr_t)a.p + PAGE,
		.hmm_pfns = &pfn, .default_flags = UHMM_PFN_REQ_FAULT,
	};
	pthread_t t;
	int busy = 0, ok = 0;

	ASSERT_OK(uhmm_interval_notifier_insert(&x.n, mm, (uintptr_t)a.p, PAGE, &rec_ops));
	mirror_range(&x, a.p, PAGE);
	ASSERT_OK(pthread_create(&t, NULL, invalidate_forever, &a));
	for (int i = 0; i < 200; i++) {
		r.notifier_seq = uhmm_interval_read_begin(&x.n);
		usleep(1000);	/* an invalidation lands in this window */
		int ret = uhmm_range_fault(&r);

		ASSERT_TRUE(ret == 0 || ret == -EBUSY);
		busy += ret == -EBUSY;
		ok += ret == 0;
	}
	pthread_join(t, NULL);
	ASSERT_GT(busy, 0);
	ASSERT_EQ(busy + ok, 200);
	ASSERT_OK(uhmm_interval_notifier_remove(&x.n));
	uhmm_mm_put(mm);
}
