// SPDX-License-Identifier: MIT
/*
 * Fault injection: make chosen system calls and device operations fail, or
 * the service thread slow, to show what uhmm does when they do for real.
 *
 * A rule says, for one point, what the call gives (an errno, or for the
 * service delay a sleep in microseconds), on which calls (every Nth) and how
 * many times at most. The points sit where the real failure would come
 * back (src/inject.h lists them); an injected failure does nothing before
 * failing, as the kernel does for these errors. What each one ends in is in
 * uhmm_fault_inject(3) and test/inject.c.
 *
 * Rules are atomics read without a lock: a point racing uhmm_fault_inject()
 * may see the old rule or the new one, never a torn field.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "inject.h"

struct inject_rule {
	_Atomic long value;		/* errno, or microseconds for the delay */
	_Atomic uint64_t every;		/* fire on every Nth call; 0: rule off */
	_Atomic uint64_t times;		/* at most this many fires; 0: no limit */
	_Atomic uint64_t calls, fired;
};

atomic_bool uhmm_inject_armed;
static struct inject_rule rules[UHMM_INJECT_NR];

static const char *const point_names[UHMM_INJECT_NR] = {
	[UHMM_INJECT_UFFD_COPY] = "uffd_copy",
	[UHMM_INJECT_UFFD_MOVE] = "uffd_move",
	[UHMM_INJECT_STAGING_ALLOC] = "staging_alloc",
	[UHMM_INJECT_DEVICE_ALLOC] = "device_alloc",
	[UHMM_INJECT_COPY_TO_DEVICE] = "copy_to_device",
	[UHMM_INJECT_COPY_TO_SYSTEM] = "copy_to_system",
	[UHMM_INJECT_SERVICE_DELAY] = "service_delay",
	[UHMM_INJECT_MAP_DELAY] = "map_delay",
	[UHMM_INJECT_RANGE_FAULT_DELAY] = "range_fault_delay",
	[UHMM_INJECT_UNPROTECT_DELAY] = "unprotect_delay",
	[UHMM_INJECT_DROP_DELAY] = "drop_delay",
	[UHMM_INJECT_COPY_ZAP_DELAY] = "copy_zap_delay",
};

static const struct { const char *name; int err; } errno_names[] = {
	{ "EAGAIN", EAGAIN }, { "EEXIST", EEXIST }, { "ENOMEM", ENOMEM }, { "EIO", EIO },
	{ "EFAULT", EFAULT }, { "EBUSY", EBUSY }, { "ENOENT", ENOENT }, { "EINTR", EINTR },
};

/* Points whose value is a sleep in microseconds, not an errno. */
static bool is_delay(enum uhmm_inject_point p)
{
	return p == UHMM_INJECT_SERVICE_DELAY || p == UHMM_INJECT_MAP_DELAY || p == UHMM_INJECT_RANGE_FAULT_DELAY ||
	       p == UHMM_INJECT_UNPROTECT_DELAY || p == UHMM_INJECT_DROP_DELAY || p == UHMM_INJECT_COPY_ZAP_DELAY;
}

static void delay_us(long us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) != 0)
		;
}

int uhmm_inject_slow(enum uhmm_inject_point p)
{
	struct inject_rule *r = &rules[p];
	uint64_t every = atomic_load(&r->every), times = atomic_load(&r->times);
	long value = atomic_load(&r->value);

	if (!every || (atomic_fetch_add(&r->calls, 1) + 1) % every)
		return 0;
	if (times && atomic_fetch_add(&r->fired, 1) >= times)
		return 0;
	uhmm_stat_add(UHMM_STAT(faults_injected), 1);
	if (uhmm_tracing()) {
		uint64_t now = uhmm_now_ns();

		uhmm_trace_span("inject", "inject", now, now, "\"point\":\"%s\",\"value\":%ld", point_names[p], value);
	}
	if (is_delay(p)) {
		delay_us(value);
		return 0;
	}
	return (int)-value;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
	char buf[24], *end;

	if (!len || len >= sizeof(buf) || s[0] == '-')
		return false;
	memcpy(buf, s, len);
	buf[len] = 0;
	errno = 0;
	*out = strtoull(buf, &end, 0);
	return !errno && *end == 0;
}

static bool parse_value(enum uhmm_inject_point p, const char *s, size_t len, long *out)
{
	uint64_t v;

	for (size_t i = 0; !is_delay(p) && i < UHMM_ARRAY_SIZE(errno_names); i++) {
		if (strlen(errno_names[i].name) == len && !memcmp(errno_names[i].name, s, len)) {
			*out = errno_names[i].err;
			return true;
		}
	}
	if (!parse_u64(s, len, &v) || (is_delay(p) ? v > 10000000 : v == 0 || v > 4095))
		return false;	/* a delay over 10 s is a typo; an errno is 1..4095 */
	*out = (long)v;
	return true;
}

struct parsed_rule {
	bool set;
	long value;
	uint64_t every, times;
};

/* One "point:value[:every[:times]]" of @s, @len long. */
static bool parse_rule(const char *s, size_t len, struct parsed_rule *out)
{
	const char *field[4];
	size_t flen[4], n = 0;
	int p = -1;

	for (const char *f = s, *end = s + len; n < 4; n++) {
		const char *colon = memchr(f, ':', (size_t)(end - f));

		field[n] = f;
		flen[n] = (size_t)((colon ? colon : end) - f);
		if (!colon) {
			n++;
			break;
		}
		f = colon + 1;
		if (n == 3)
			return false;	/* a fifth field */
	}
	for (int i = 0; i < UHMM_INJECT_NR; i++)
		if (strlen(point_names[i]) == flen[0] && !memcmp(point_names[i], field[0], flen[0]))
			p = i;
	if (p < 0 || n < 2 || out[p].set)
		return false;
	out[p] = (struct parsed_rule){ .set = true, .every = 1 };
	if (!parse_value((enum uhmm_inject_point)p, field[1], flen[1], &out[p].value))
		return false;
	if (n > 2 && (!parse_u64(field[2], flen[2], &out[p].every) || out[p].every == 0))
		return false;
	return n < 4 || parse_u64(field[3], flen[3], &out[p].times);
}

UHMM_EXPORT int uhmm_fault_inject(const char *spec)
{
	struct parsed_rule parsed[UHMM_INJECT_NR] = { 0 };
	bool any = false;

	for (const char *s = spec ? spec : ""; *s;) {
		const char *comma = strchr(s, ',');
		size_t len = comma ? (size_t)(comma - s) : strlen(s);

		if (!parse_rule(s, len, parsed))
			return -EINVAL;	/* nothing changed */
		s += len + (comma != NULL);
	}
	atomic_store(&uhmm_inject_armed, false);
	for (int i = 0; i < UHMM_INJECT_NR; i++) {
		struct inject_rule *r = &rules[i];

		atomic_store(&r->every, 0);	/* off while it is rewritten */
		atomic_store(&r->value, parsed[i].value);
		atomic_store(&r->times, parsed[i].times);
		atomic_store(&r->calls, 0);
		atomic_store(&r->fired, 0);
		atomic_store(&r->every, parsed[i].set ? parsed[i].every : 0);
		any = any || parsed[i].set;
	}
	atomic_store(&uhmm_inject_armed, any);
	return 0;
}

__attribute__((constructor)) static void inject_at_load(void)
{
	const char *spec = getenv("UHMM_INJECT");

	/* stderr, as UHMM_STATS: the user asked in the environment, and no logger is set yet */
	if (spec && *spec && uhmm_fault_inject(spec))
		fprintf(stderr, "uhmm: UHMM_INJECT=\"%s\" not understood: no faults injected\n", spec);
}
