// SPDX-License-Identifier: MIT
/*
 * Tracing: faults, migrations, invalidations, range_fault() calls and page
 * residency, written in the Chrome trace-event JSON array format (one event
 * per line), which Perfetto and chrome://tracing load, and which
 * `uhmm residency` turns into a picture.
 *
 * Off (the default) a trace point is one relaxed atomic load. On, each event
 * is formatted on the stack and written with one write(2) to a file opened
 * O_APPEND: no malloc and no stdio buffer, so trace points are safe on the
 * service thread and in code that free() reaches, and a fork child's events
 * interleave whole with its parent's. @trace_lock (a rwlock: every writer
 * takes it shared) keeps the descriptor alive while an event is written;
 * uhmm_trace_stop() takes it exclusive to close it. It is a leaf lock.
 *
 * With UHMM_TRACE_RING=MiB the events go to a ring in memory instead, and
 * only the last MiB of them reach the file, at uhmm_trace_stop() (or exit).
 * A write(2) per event changes the timing a race needs; a memcpy much
 * less, so a run that loses a write only under load can still be read off
 * its trace. Writers reserve their bytes with one atomic add and copy
 * under the shared lock; the dump takes it exclusive.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

atomic_bool uhmm_trace_on;

static pthread_rwlock_t trace_lock = PTHREAD_RWLOCK_INITIALIZER;
static int trace_fd = -1;
static pid_t trace_pid;			/* the process that opened the file closes the array */
static atomic_long trace_events;
static char *ring;			/* NULL: events go straight to trace_fd */
static size_t ring_size;		/* a power of two */
static atomic_size_t ring_head;		/* bytes ever reserved */

static pid_t my_tid(void)
{
	static __thread pid_t tid;

	if (!tid)
		tid = (pid_t)syscall(SYS_gettid);
	return tid;
}

/* Write one line under the shared lock; dropped if tracing stopped meanwhile. */
static void trace_write(const char *line, size_t len)
{
	pthread_rwlock_rdlock(&trace_lock);
	if (trace_fd >= 0 && ring) {
		size_t at = atomic_fetch_add_explicit(&ring_head, len, memory_order_relaxed) & (ring_size - 1);
		size_t first = len < ring_size - at ? len : ring_size - at;	/* up to the ring's end, then from its start */

		memcpy(ring + at, line, first);
		memcpy(ring, line + first, len - first);
		atomic_fetch_add_explicit(&trace_events, 1, memory_order_relaxed);
	} else if (trace_fd >= 0 && write(trace_fd, line, len) == (ssize_t)len) {
		atomic_fetch_add_explicit(&trace_events, 1, memory_order_relaxed);
	}
	pthread_rwlock_unlock(&trace_lock);
}

/* UHMM_TRACE_RING=MiB (1..4096): keep the events in memory; 0 when unset. */
static size_t ring_size_wanted(void)
{
	const char *env = getenv("UHMM_TRACE_RING");
	unsigned long mib = env ? strtoul(env, NULL, 10) : 0;
	size_t size = 1;

	if (!mib || mib > 256)	/* uhmm_kmalloc()'s largest block */
		return 0;
	while (size < (size_t)mib << 20)
		size <<= 1;
	return size;
}

/*
 * Write out the ring's whole lines, oldest first (under the exclusive lock).
 * Once it has wrapped the oldest line is cut: start after its end.
 */
static int ring_dump(bool write_out)
{
	size_t head = atomic_load(&ring_head);
	size_t from = head > ring_size ? head - ring_size : 0;
	int ret = 0;

	if (head > ring_size)
		while (from < head && ring[from++ & (ring_size - 1)] != '\n')
			;
	while (write_out && from < head && !ret) {
		size_t off = from & (ring_size - 1);
		size_t n = head - from < ring_size - off ? head - from : ring_size - off;

		if (write(trace_fd, ring + off, n) != (ssize_t)n)
			ret = -EIO;
		from += n;
	}
	uhmm_kfree(ring);
	ring = NULL;
	return ret;
}

/* Format the common head of an event; returns its length. */
static int event_head(char *buf, size_t cap, const char *name, const char *cat, const char *ph, uint64_t t0)
{
	return snprintf(buf, cap, "{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"%s\",\"ts\":%llu.%03u,\"pid\":%d,\"tid\":%d",
			name, cat, ph, (unsigned long long)(t0 / 1000), (unsigned int)(t0 % 1000), (int)getpid(),
			(int)my_tid());
}

void uhmm_trace_span(const char *name, const char *cat, uint64_t t0, uint64_t t1, const char *args, ...)
{
	char line[512];
	uint64_t dur = t1 > t0 ? t1 - t0 : 0;
	int n = event_head(line, sizeof(line), name, cat, "X", t0);

	n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"dur\":%llu.%03u,\"args\":{",
		      (unsigned long long)(dur / 1000), (unsigned int)(dur % 1000));
	if (args && (size_t)n < sizeof(line)) {
		va_list ap;

		va_start(ap, args);
		n += vsnprintf(line + n, sizeof(line) - (size_t)n, args, ap);
		va_end(ap);
	}
	if ((size_t)n + 5 > sizeof(line))
		return;	/* cannot happen with uhmm's own arguments; never write half an event */
	n += snprintf(line + n, sizeof(line) - (size_t)n, "}},\n");
	trace_write(line, (size_t)n);
}

void uhmm_trace_residency(uint64_t start, uint64_t n, const char *where, const void *owner)
{
	char line[384];
	int len = event_head(line, sizeof(line), "residency", "residency", "i", uhmm_now_ns());

	len += snprintf(line + len, sizeof(line) - (size_t)len,
			",\"s\":\"p\",\"args\":{\"start\":\"%#llx\",\"pages\":%llu,\"where\":\"%s\",\"owner\":\"%p\"}},\n",
			(unsigned long long)start, (unsigned long long)n, where, owner);
	if ((size_t)len < sizeof(line))
		trace_write(line, (size_t)len);
}

/* JSON-safe copy of a caller's label: printable ASCII without quotes or backslashes. */
static void label_copy(char *dst, size_t cap, const char *src)
{
	size_t n = 0;

	for (; src && *src && n + 1 < cap; src++)
		dst[n++] = (*src >= 0x20 && *src < 0x7f && *src != '"' && *src != '\\') ? *src : '?';
	dst[n] = 0;
}

UHMM_EXPORT int uhmm_trace_mark(const char *label, const void *addr, size_t len)
{
	char line[384], safe[64];
	int n;

	if (!label || !*label)
		return -EINVAL;
	if (!uhmm_tracing())
		return 0;
	label_copy(safe, sizeof(safe), label);
	n = event_head(line, sizeof(line), safe, "mark", "i", uhmm_now_ns());
	n += snprintf(line + n, sizeof(line) - (size_t)n,
		      ",\"s\":\"t\",\"args\":{\"start\":\"%#llx\",\"npages\":%llu}},\n",
		      (unsigned long long)(uintptr_t)addr,
		      (unsigned long long)((len + UHMM_PAGE_SIZE - 1) >> UHMM_PAGE_SHIFT));
	if ((size_t)n < sizeof(line))
		trace_write(line, (size_t)n);
	return 0;
}

UHMM_EXPORT int uhmm_trace_start(const char *path)
{
	char line[256];
	int fd, n, ret = 0;

	if (!path || !*path)
		return -EINVAL;
	pthread_rwlock_wrlock(&trace_lock);
	if (trace_fd >= 0) {
		ret = -EBUSY;
		goto out;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	n = snprintf(line, sizeof(line),
		     "[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"uhmm %d\"}},\n",
		     (int)getpid(), (int)my_tid(), (int)getpid());
	if (write(fd, line, (size_t)n) != n) {
		ret = -EIO;
		close(fd);
		goto out;
	}
	ring_size = ring_size_wanted();
	if (ring_size) {
		/* uhmm's own memory: the service thread writes it, a migration must never take it */
		ring = uhmm_kmalloc(ring_size);
		if (!ring) {
			ret = -ENOMEM;
			close(fd);
			goto out;
		}
	}
	trace_fd = fd;
	trace_pid = getpid();
	atomic_store(&ring_head, 0);
	atomic_store(&trace_events, 0);
	atomic_store(&uhmm_trace_on, true);
out:
	pthread_rwlock_unlock(&trace_lock);
	return ret;
}

UHMM_EXPORT long uhmm_trace_stop(void)
{
	char line[256];
	long events;
	int n;

	pthread_rwlock_wrlock(&trace_lock);
	if (trace_fd < 0) {
		pthread_rwlock_unlock(&trace_lock);
		return -ENOENT;
	}
	atomic_store(&uhmm_trace_on, false);
	events = atomic_load(&trace_events);
	/* a fork child's ring holds its parent's events too: only the parent writes it */
	if (ring && ring_dump(getpid() == trace_pid))
		events = -EIO;
	if (getpid() == trace_pid) {	/* a fork child leaves the array to its parent */
		n = event_head(line, sizeof(line), "trace_end", "uhmm", "i", uhmm_now_ns());
		n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"s\":\"g\",\"args\":{\"events\":%ld}}\n]\n",
			      events);
		if (write(trace_fd, line, (size_t)n) != n)
			events = -EIO;
	}
	close(trace_fd);
	trace_fd = -1;
	pthread_rwlock_unlock(&trace_lock);
	return events;
}

__attribute__((constructor)) static void trace_at_load(void)
{
	const char *path = getenv("UHMM_TRACE");

	if (path && *path) {
		(void)uhmm_trace_start(path);
		/* one trace per UHMM_TRACE: programs this one execs must not truncate it */
		unsetenv("UHMM_TRACE");
	}
}

__attribute__((destructor)) static void trace_at_exit(void)
{
	(void)uhmm_trace_stop();
}
