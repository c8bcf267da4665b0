// SPDX-License-Identifier: MIT
/*
 * The service threads (the shape of QEMU's postcopy and CRIU's lazy-pages
 * handlers, split in two):
 *
 *  - the reader polls the userfaultfd and the stop eventfd, reads messages
 *    in batches into a queue, and does nothing else: it never allocates,
 *    frees, or takes a driver lock;
 *  - the worker takes batches off the queue and dispatches them: events
 *    to the interval notifiers (driver callbacks), faults to their handlers.
 *
 * Why two: a thread that raises an event on a registered range (madvise,
 * munmap, a free() that trims a heap, a thread stack released at exit)
 * blocks until the event is *read*. The worker runs driver code and frees
 * memory, so it may raise events; the reader, which never does, always
 * unblocks it. Both run on stacks uhmm maps itself and never registers.
 *
 * Synchronisation with the rest of uhmm (mm->lock): @reading is set just
 * before read(); the kernel wakes the thread that caused an event during
 * that read(); @ev_queued counts messages queued, @ev_done those handled.
 * uhmm_service_sync() waits until every message read so far is handled,
 * so a thread that saw munmap() return and then syncs knows its event was
 * handled.
 */
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "inject.h"
#include "../uapi/uhmm_uapi.h"

#define QUEUE_MSGS 4096			/* grows by doubling when full */
#define STACK_SIZE (1UL << 20)
#define GUARD_SIZE UHMM_PAGE_SIZE

static __thread bool in_service;

bool uhmm_in_service_thread(void)
{
	return in_service;
}

/* ---- memory the service threads use: uhmm's own (kmem.c), never the program's ---- */

/* A stack with a guard page at its low end; uhmm_kfree() gives the block fresh memory. */
static void *stack_alloc(void)
{
	char *p = uhmm_kmalloc(STACK_SIZE);

	if (p && syscall(SYS_mprotect, p, GUARD_SIZE, PROT_NONE)) {
		uhmm_kfree(p);
		return NULL;
	}
	return p;
}

/* Double the queue. Called by the reader with mm->lock held. */
static int queue_grow(struct uhmm_mm *mm)
{
	size_t cap = mm->q_cap * 2;
	struct uffd_msg *q = uhmm_kmalloc(cap * sizeof(*q));

	if (!q)
		return -ENOMEM;
	for (size_t i = 0; i < mm->q_len; i++)
		q[i] = mm->q[(mm->q_head + i) % mm->q_cap];
	uhmm_kfree(mm->q);
	mm->q = q;
	mm->q_cap = cap;
	mm->q_head = 0;
	return 0;
}

/* ---- the reader ---- */

/*
 * Wait for messages. On the stop signal keep reading until the userfaultfd
 * is empty: a thread may still be waiting for its event to be read.
 */
static bool reader_poll(struct uhmm_mm *mm)
{
	struct pollfd p[2] = { { .fd = mm->uffd, .events = POLLIN },
			       { .fd = mm->stop_efd, .events = POLLIN } };

	while (poll(p, 2, -1) < 0)
		if (errno != EINTR)
			return false;
	if (p[0].revents & (POLLERR | POLLNVAL))
		return false;
	return (p[0].revents & POLLIN) || !p[1].revents;
}

static void reader_enqueue(struct uhmm_mm *mm, const struct uffd_msg *msgs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (mm->q_len == mm->q_cap && queue_grow(mm)) {
			uhmm_log(UHMM_LOG_ERR, "uhmm: event queue full and cannot grow: event lost");
			continue;
		}
		mm->q[(mm->q_head + mm->q_len) % mm->q_cap] = msgs[i];
		mm->q_len++;
		mm->ev_queued++;
	}
}

static void *reader_main(void *arg)
{
	struct uhmm_mm *mm = arg;
	struct uffd_msg msgs[64];

	in_service = true;
	while (reader_poll(mm)) {
		ssize_t n;

		pthread_mutex_lock(&mm->lock);
		mm->reading = true;
		pthread_mutex_unlock(&mm->lock);

		n = read(mm->uffd, msgs, sizeof(msgs));

		pthread_mutex_lock(&mm->lock);
		if (n > 0)
			reader_enqueue(mm, msgs, (size_t)n / sizeof(msgs[0]));
		mm->reading = false;
		pthread_cond_broadcast(&mm->cond);
		pthread_mutex_unlock(&mm->lock);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			break;
	}
	pthread_mutex_lock(&mm->lock);
	mm->stopping = true;
	pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
	return NULL;
}

/* ---- the worker ---- */

/* The program's pages of [start, end) are gone: devices drop them, device pages are freed. */
static void drop_pages(struct uhmm_mm *mm, uint64_t start, uint64_t end, enum uhmm_notifier_event event)
{
	uhmm_invalidate(mm, start, end, event, NULL);
	uhmm_dp_drop_range(mm, start, end);
	if (uhmm_tracing())
		uhmm_trace_residency(start, (end - start) >> UHMM_PAGE_SHIFT, "freed", NULL);
}

/*
 * madvise(DONTNEED/FREE/REMOVE): devices drop their mappings, then the
 * device pages of the range are released (their data went with the zap).
 * A zap uhmm made itself (committing a migration) is not the program's.
 */
static void handle_remove(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t start = m->arg.remove.start, end = m->arg.remove.end;

	bool self = uhmm_mm_is_self_zap(mm, start, end);

	if (uhmm_tracing())	/* the event arrives after the fact: when, and whether it was ours */
		uhmm_trace_span("remove_event", "invalidate", uhmm_now_ns(), uhmm_now_ns(),
				"\"start\":\"%#llx\",\"end\":\"%#llx\",\"self_zap\":%d", (unsigned long long)start,
				(unsigned long long)end, self);
	if (self)
		return;
	drop_pages(mm, start, end, UHMM_NOTIFY_CLEAR);
}

static void handle_unmap(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t start = m->arg.remove.start, end = m->arg.remove.end;

	uhmm_mm_forget(mm, start, end);
	drop_pages(mm, start, end, UHMM_NOTIFY_UNMAP);
}

/* mremap() moved a registered range: the registration moved with it. */
static void handle_remap(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t from = m->arg.remap.from, to = m->arg.remap.to, len = m->arg.remap.len;

	bool trapping = uhmm_mm_is_missing(mm, from);

	uhmm_mm_forget(mm, from, from + len);
	pthread_mutex_lock(&mm->lock);
	uhmm_spanset_add(&mm->registered, to, to + len);
	if (trapping)
		uhmm_spanset_add(&mm->missing, to, to + len);
	pthread_mutex_unlock(&mm->lock);
	uhmm_invalidate(mm, from, from + len, UHMM_NOTIFY_UNMAP, NULL);
	uhmm_dp_move_range(mm, from, to, len);	/* device pages move with the mapping */
}

/* A page fault: a write to a page a migration protects, or a missing page of a trapping span. */
static void handle_fault(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	uint64_t t0 = uhmm_now_ns(), t1;
	bool wp = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;

	if (wp)
		uhmm_fault_wp(mm, m->arg.pagefault.address);
	else
		uhmm_fault_missing(mm, m->arg.pagefault.address, (unsigned int)m->arg.pagefault.flags,
				   (pid_t)m->arg.pagefault.feat.ptid);
	t1 = uhmm_now_ns();
	uhmm_stat_add(UHMM_STAT(faults), 1);
	uhmm_stat_add(UHMM_STAT(fault_ns), t1 - t0);
	if (uhmm_tracing())
		uhmm_trace_span("fault", "fault", t0, t1, "\"addr\":\"%#llx\",\"kind\":\"%s\",\"thread\":%d",
				(unsigned long long)m->arg.pagefault.address, wp ? "write-protect" : "missing",
				(int)m->arg.pagefault.feat.ptid);
}

static void worker_dispatch(struct uhmm_mm *mm, const struct uffd_msg *m)
{
	(void)uhmm_inject(UHMM_INJECT_SERVICE_DELAY);	/* a slow service thread, when asked */
	uhmm_stat_add(UHMM_STAT(events), 1);
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		handle_fault(mm, m);
		break;
	case UFFD_EVENT_REMOVE:
		handle_remove(mm, m);
		break;
	case UFFD_EVENT_UNMAP:
		handle_unmap(mm, m);
		break;
	case UFFD_EVENT_REMAP:
		handle_remap(mm, m);
		break;
	default:
		uhmm_log(UHMM_LOG_WARN, "uhmm: unexpected userfaultfd event %u", m->event);
		break;
	}
}

void uhmm_service_defer(struct uhmm_mm *mm, uint64_t addr)
{
	if (mm->n_deferred == mm->cap_deferred) {	/* worker only: no lock needed */
		size_t cap = mm->cap_deferred ? 2 * mm->cap_deferred : 16;
		uint64_t *d = uhmm_krealloc(mm->deferred, cap * sizeof(*d));

		if (!d)
			return;	/* the holder's own wake-up remains */
		mm->deferred = d;
		mm->cap_deferred = cap;
	}
	mm->deferred[mm->n_deferred++] = addr;
}

/* Wake the deferred faults (called with mm->lock held, drops it meanwhile). */
static void worker_rewake(struct uhmm_mm *mm)
{
	size_t n = mm->n_deferred;

	mm->n_deferred = 0;
	pthread_mutex_unlock(&mm->lock);
	for (size_t i = 0; i < n; i++)	/* a fault still blocked comes back as a new event */
		uhmm_wake(mm, mm->deferred[i], mm->deferred[i] + UHMM_PAGE_SIZE);
	pthread_mutex_lock(&mm->lock);
}

/* Wait for work; with deferred faults, no longer than a millisecond. */
static void worker_wait(struct uhmm_mm *mm)
{
	struct timespec ts;

	if (!mm->n_deferred) {
		pthread_cond_wait(&mm->cond, &mm->lock);
		return;
	}
	uhmm_deadline_ms(&ts, 1);
	if (pthread_cond_timedwait(&mm->cond, &mm->lock, &ts) == ETIMEDOUT)
		worker_rewake(mm);
}

static void *worker_main(void *arg)
{
	struct uhmm_mm *mm = arg;

	in_service = true;
	pthread_mutex_lock(&mm->lock);
	for (;;) {
		struct uffd_msg m;

		while ((!mm->q_len || mm->paused) && !mm->stopping)
			worker_wait(mm);
		if (!mm->q_len)
			break;
		mm->worker_busy = true;
		m = mm->q[mm->q_head];
		mm->q_head = (mm->q_head + 1) % mm->q_cap;
		mm->q_len--;
		pthread_mutex_unlock(&mm->lock);

		worker_dispatch(mm, &m);

		pthread_mutex_lock(&mm->lock);
		mm->worker_busy = false;
		mm->ev_done++;
		pthread_cond_broadcast(&mm->cond);
	}
	pthread_mutex_unlock(&mm->lock);
	return NULL;
}

/*
 * The count of messages queued once the read in progress (if any) is
 * queued: an event whose raiser has returned has an index below it.
 */
uint64_t uhmm_service_read_mark(struct uhmm_mm *mm)
{
	uint64_t mark;

	pthread_mutex_lock(&mm->lock);
	while (mm->reading && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	mark = mm->ev_queued;
	pthread_mutex_unlock(&mm->lock);
	return mark;
}

void uhmm_service_sync(struct uhmm_mm *mm)
{
	uint64_t target;

	if (in_service)
		return;
	pthread_mutex_lock(&mm->lock);
	while (mm->reading && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	target = mm->ev_queued;
	while (mm->ev_done < target && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	pthread_mutex_unlock(&mm->lock);
}

/*
 * Hold the worker between two messages (fork(): no uhmm thread may be
 * inside malloc or a driver callback when the address space is copied; the
 * reader goes on queueing, so no thread raising an event is left blocked).
 */
void uhmm_service_pause(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->lock);
	mm->paused = true;
	while (mm->worker_busy && !mm->stopping)
		pthread_cond_wait(&mm->cond, &mm->lock);
	pthread_mutex_unlock(&mm->lock);
}

void uhmm_service_resume(struct uhmm_mm *mm)
{
	pthread_mutex_lock(&mm->lock);
	mm->paused = false;
	pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
}

/* ---- start and stop ---- */

static int start_thread(struct uhmm_mm *mm, int slot, pthread_t *t, void *(*fn)(void *))
{
	pthread_attr_t attr;
	char *stack = stack_alloc();
	int ret;

	if (!stack)
		return -ENOMEM;
	mm->stacks[slot] = stack;
	pthread_attr_init(&attr);
	pthread_attr_setstack(&attr, stack + GUARD_SIZE, STACK_SIZE - GUARD_SIZE);
	ret = -pthread_create(t, &attr, fn, mm);
	pthread_attr_destroy(&attr);
	return ret;
}

int uhmm_service_start(struct uhmm_mm *mm)
{
	sigset_t all, old;
	int ret;

	mm->q_cap = QUEUE_MSGS;
	mm->q = uhmm_kmalloc(mm->q_cap * sizeof(*mm->q));
	if (!mm->q)
		return -ENOMEM;

	/* The threads must never take the application's signals. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = start_thread(mm, 0, &mm->reader, reader_main);
	if (!ret) {
		mm->reader_started = true;
		ret = start_thread(mm, 1, &mm->worker, worker_main);
		mm->worker_started = !ret;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret)
		uhmm_service_stop(mm);
	return ret;
}

void uhmm_service_stop(struct uhmm_mm *mm)
{
	uint64_t one = 1;

	if (mm->reader_started) {
		if (write(mm->stop_efd, &one, sizeof(one)) != sizeof(one))
			uhmm_log(UHMM_LOG_ERR, "uhmm: cannot signal the service reader");
		pthread_join(mm->reader, NULL);
	}
	pthread_mutex_lock(&mm->lock);
	mm->stopping = true;
	pthread_cond_broadcast(&mm->cond);
	pthread_mutex_unlock(&mm->lock);
	if (mm->worker_started)
		pthread_join(mm->worker, NULL);
	mm->reader_started = mm->worker_started = false;
	uhmm_kfree(mm->stacks[0]);
	uhmm_kfree(mm->stacks[1]);
	uhmm_kfree(mm->q);
	mm->stacks[0] = mm->stacks[1] = NULL;
	mm->q = NULL;
}
