// SPDX-License-Identifier: MIT
/*
 * Process-wide counters (uhmm_stats()). One relaxed atomic add per event on
 * the paths that count: no lock, and a reader sees each counter whole.
 * Printed to stderr at exit when UHMM_STATS=1: the one place the library
 * prints by itself, because the user asked for it in the environment.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

_Atomic uint64_t uhmm_stat_v[UHMM_STAT_N];

uint64_t uhmm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void uhmm_deadline_ms(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

UHMM_EXPORT long uhmm_stats(struct uhmm_stats *out, size_t size)
{
	uint64_t *v = (uint64_t *)out;
	size_t n;

	if (!out || !size || size % sizeof(uint64_t))
		return -EINVAL;
	n = size / sizeof(uint64_t) < UHMM_STAT_N ? size / sizeof(uint64_t) : UHMM_STAT_N;
	for (size_t i = 0; i < n; i++)
		v[i] = atomic_load_explicit(&uhmm_stat_v[i], memory_order_relaxed);
	return (long)(n * sizeof(uint64_t));
}

static const char *const event_names[] = {
	"unmap", "clear", "protection_vma", "protection_page", "soft_dirty", "release", "migrate", "exclusive",
};

const char *uhmm_event_name(unsigned int event)
{
	return event < UHMM_ARRAY_SIZE(event_names) ? event_names[event] : "?";
}

__attribute__((destructor)) static void stats_at_exit(void)
{
	const char *env = getenv("UHMM_STATS");
	struct uhmm_stats s;

	if (!env || strcmp(env, "1") != 0)
		return;
	uhmm_stats(&s, sizeof(s));
	fprintf(stderr,
		"uhmm stats (pid %d):\n"
		"  faults            %llu (device %llu, %.1f us each)\n"
		"  to device         %llu pages, %llu bytes\n"
		"  to system         %llu pages, %llu bytes\n"
		"  migrations        %llu\n"
		"  range_fault       %llu calls, %llu pages, %llu busy\n"
		"  read retries      %llu\n"
		"  poisons           %llu\n"
		"  zaps              %llu moved, %llu madvised, %llu unshared\n"
		"  events            %llu\n"
		"  exclusive pages   %llu\n"
		"  2 MiB units       %llu migrated whole\n"
		"  pages moved       %llu (zero copy)\n"
		"  pages leaked      %llu\n"
		"  VMA lookups       %llu\n"
		"  invalidations    ",
		(int)getpid(), (unsigned long long)s.faults, (unsigned long long)s.faults_device,
		s.faults ? (double)s.fault_ns / (double)s.faults / 1e3 : 0.0,
		(unsigned long long)s.pages_to_device, (unsigned long long)s.bytes_to_device,
		(unsigned long long)s.pages_to_system, (unsigned long long)s.bytes_to_system,
		(unsigned long long)s.migrations, (unsigned long long)s.range_faults,
		(unsigned long long)s.range_fault_pages, (unsigned long long)s.range_fault_busy,
		(unsigned long long)s.read_retries, (unsigned long long)s.poisons,
		(unsigned long long)s.zaps_moved, (unsigned long long)s.zaps_madvised, (unsigned long long)s.zaps_unshared,
		(unsigned long long)s.events, (unsigned long long)s.exclusive_pages,
		(unsigned long long)s.units_migrated, (unsigned long long)s.pages_moved,
		(unsigned long long)s.pages_leaked, (unsigned long long)s.vma_lookups);
	for (unsigned int i = 0; i < UHMM_ARRAY_SIZE(s.invalidations); i++)
		fprintf(stderr, " %s=%llu", uhmm_event_name(i), (unsigned long long)s.invalidations[i]);
	fputc('\n', stderr);
}
