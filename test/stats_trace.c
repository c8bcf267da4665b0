// SPDX-License-Identifier: MIT
/*
 * uhmm_stats() counts what happened; the trace file records it as Chrome
 * trace-event JSON; migrations to the device zap without an event round
 * trip where UFFDIO_MOVE can take the pages, and fall back where it cannot.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "harness.h"

#define NPAGES 256
#define SIZE (NPAGES * PAGE)

static struct uhmm_stats stats_now(void)
{
	struct uhmm_stats s;

	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), (long)sizeof(s));
	return s;
}

static bool move_expected(void)
{
	struct uhmm_features f;

	ASSERT_OK(uhmm_query_features(&f));
	return (f.flags & UHMM_FEAT_UFFD_MOVE) != 0;
}

/*
 * Migrate a filled buffer to device 0 and let the CPU read it back. The
 * device moves pages in and out (zero copy) unless @copy: then it copies
 * and uhmm zaps what went to it.
 */
static void round_trip_as(int *p, bool copy)
{
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(SIZE);

	if (copy)
		ASSERT_OK(dmcmd(d, UHMM_DMIRROR_FLAGS, NULL, NULL, UHMM_DMIRROR_FLAG_COPY, &c));

	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	check_ints(p, SIZE, 1);	/* every page faults back */
	free(mirror);
	uhmm_dmirror_close(d);
}

static void round_trip(int *p)
{
	round_trip_as(p, true);	/* the tests of the zap: a copying device */
}

TEST(stats_count_a_round_trip)
{
	int *p = map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_stats a, b;

	fill_ints(p, SIZE, 1);
	a = stats_now();
	round_trip(p);
	b = stats_now();
	ASSERT_GE(b.migrations - a.migrations, 2);	/* to the device, and back at least once */
	ASSERT_EQ(b.pages_to_device - a.pages_to_device, NPAGES);
	ASSERT_EQ(b.bytes_to_device - a.bytes_to_device, SIZE);
	ASSERT_EQ(b.pages_to_system - a.pages_to_system, NPAGES);
	ASSERT_EQ(b.bytes_to_system - a.bytes_to_system, SIZE);
	ASSERT_GE(b.faults_device - a.faults_device, 1);
	ASSERT_GE(b.faults - a.faults, b.faults_device - a.faults_device);
	ASSERT_GT(b.fault_ns, a.fault_ns);
	ASSERT_GE(b.invalidations[UHMM_NOTIFY_MIGRATE] - a.invalidations[UHMM_NOTIFY_MIGRATE], 1);
	ASSERT_GE(b.range_faults - a.range_faults, 1);	/* the device read back what it migrated */
	ASSERT_EQ(b.poisons, a.poisons);
	ASSERT_EQ((b.zaps_moved - a.zaps_moved) + (b.zaps_madvised - a.zaps_madvised), NPAGES);
	if (move_expected())
		ASSERT_EQ(b.zaps_moved - a.zaps_moved, NPAGES);	/* no event round trip */
	else
		ASSERT_EQ(b.zaps_madvised - a.zaps_madvised, NPAGES);
	ASSERT_EQ(b.pages_moved, a.pages_moved);	/* the device copied */
}

/*
 * The device's memory is host memory (uhmm_pagemap_set_host_memory()):
 * pages move to it and back with UFFDIO_MOVE, nothing is copied or zapped.
 * Without UFFDIO_MOVE (fallback mode) the device copies.
 */
TEST(stats_count_a_zero_copy_round_trip)
{
	int *p = map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_stats a, b;

	fill_ints(p, SIZE, 1);
	a = stats_now();
	round_trip_as(p, false);
	b = stats_now();
	ASSERT_EQ(b.pages_to_device - a.pages_to_device, NPAGES);
	ASSERT_EQ(b.pages_to_system - a.pages_to_system, NPAGES);
	if (move_expected()) {
		ASSERT_EQ(b.pages_moved - a.pages_moved, 2 * NPAGES);
		ASSERT_EQ(b.zaps_moved - a.zaps_moved, 0);
		ASSERT_EQ(b.zaps_madvised - a.zaps_madvised, 0);
	} else {
		ASSERT_EQ(b.pages_moved, a.pages_moved);
		ASSERT_EQ(b.zaps_madvised - a.zaps_madvised, NPAGES);
	}
}

/*
 * A CPU fault on a device page migrates back a window that starts on that
 * page: the device page proves the VMA, and the fault makes no VMA lookup
 * (one PROCMAP_QUERY was a fifth of the service thread's system calls).
 * A migration to the device, which may collect system memory, makes one.
 */
TEST(fault_back_makes_no_vma_lookup)
{
	int *p = map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	int *mirror = malloc(SIZE);
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	struct uhmm_stats a, b, e;
	struct uhmm_mm *mm;

	fill_ints(p, SIZE, 1);
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_OK(uhmm_mm_sync(mm));
	a = stats_now();
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	b = stats_now();
	ASSERT_GE(b.vma_lookups - a.vma_lookups, 1);
	check_ints(p, SIZE, 1);	/* every page faults back */
	ASSERT_OK(uhmm_mm_sync(mm));
	e = stats_now();
	ASSERT_GE(e.faults_device - b.faults_device, 1);
	ASSERT_EQ(e.pages_to_system - b.pages_to_system, NPAGES);
	ASSERT_EQ(e.vma_lookups, b.vma_lookups);
	free(mirror);
	uhmm_dmirror_close(d);
	uhmm_mm_put(mm);
}

TEST(stats_bad_arguments)
{
	struct uhmm_stats s;
	uint64_t first;

	ASSERT_EQ(uhmm_stats(NULL, sizeof(s)), -EINVAL);
	ASSERT_EQ(uhmm_stats(&s, 0), -EINVAL);
	ASSERT_EQ(uhmm_stats(&s, 12), -EINVAL);
	/* an older, shorter struct gets its prefix; a longer one what exists */
	ASSERT_EQ(uhmm_stats((struct uhmm_stats *)&first, sizeof(first)), (long)sizeof(first));
	ASSERT_EQ(uhmm_stats(&s, sizeof(s)), (long)sizeof(s));
	{
		uint64_t big[sizeof(s) / 8 + 4];

		ASSERT_EQ(uhmm_stats((struct uhmm_stats *)big, sizeof(big)), (long)sizeof(s));
	}
}

/*
 * A fork child holds copy-on-write copies of @p while the parent makes a
 * device round trip (copying, or zero copy); both copies keep their data.
 * Returns the parent's counters before and after the round trip.
 */
static void round_trip_with_a_fork_child(int *p, bool copy, struct uhmm_stats *a, struct uhmm_stats *b)
{
	int go[2], status;
	pid_t pid;

	fill_ints(p, SIZE, 1);
	ASSERT_OK(pipe(go));
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {	/* holds the copy-on-write pages until told, then checks them */
		char x;
		bool ok = true;

		close(go[1]);
		if (read(go[0], &x, 1) != 1)
			_exit(2);
		for (size_t i = 0; i < SIZE / sizeof(int); i++)
			ok = ok && p[i] == (int)i;
		_exit(ok ? 0 : 1);
	}
	close(go[0]);
	*a = stats_now();
	round_trip_as(p, copy);
	*b = stats_now();
	ASSERT_EQ(write(go[1], "x", 1), 1);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/*
 * The device's read of the pages (a GUP pin) unshares the parent's, so the
 * zap may take either path.
 */
TEST(zap_with_a_fork_child_holding_copies)
{
	struct uhmm_stats a, b;

	round_trip_with_a_fork_child(map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE), true, &a, &b);
	ASSERT_EQ((b.zaps_moved - a.zaps_moved) + (b.zaps_madvised - a.zaps_madvised), NPAGES);
}

/*
 * The zero-copy device: UFFDIO_MOVE refuses the shared pages (EBUSY, as for
 * a pinned page); they are copied (the copy's read pin unshares them) and
 * zapped instead, and every page still migrates.
 */
TEST(zero_copy_with_a_fork_child_holding_copies)
{
	struct uhmm_stats a, b;

	round_trip_with_a_fork_child(map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE), false, &a, &b);
	ASSERT_EQ(b.pages_to_device - a.pages_to_device, NPAGES);
	ASSERT_EQ(b.pages_to_system - a.pages_to_system, NPAGES);
	/* to the device every page was copied and zapped (shared: uhmm forked no child it knew of) */
	ASSERT_EQ((b.zaps_moved - a.zaps_moved) + (b.zaps_madvised - a.zaps_madvised), NPAGES);
	if (move_expected())
		ASSERT_EQ(b.pages_moved - a.pages_moved, NPAGES);	/* ... and came back moved */
}

/* UFFDIO_MOVE refuses an mlocked source (the scratch area is not): MADV_DONTNEED. */
TEST(zap_falls_back_for_mlocked_memory)
{
	int *p = map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_stats a, b;

	fill_ints(p, SIZE, 1);
	/* the system call itself: ASan's mlock() does nothing */
	if (syscall(SYS_mlock, p, SIZE))
		SKIP("mlock of %lu KiB: %s", SIZE / 1024, strerror(errno));
	a = stats_now();
	round_trip(p);
	b = stats_now();
	ASSERT_EQ(b.zaps_madvised - a.zaps_madvised, NPAGES);
	ASSERT_EQ(b.zaps_moved, a.zaps_moved);
}

/* A read-only private mapping: UFFDIO_MOVE takes only writable VMAs. */
TEST(zap_falls_back_for_read_only_memory)
{
	int *p = map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	struct uhmm_dmirror *d = dmirror(0);
	struct uhmm_dmirror_cmd c;
	int *mirror = malloc(SIZE);
	struct uhmm_stats a, b;

	fill_ints(p, SIZE, 1);
	ASSERT_OK(mprotect(p, SIZE, PROT_READ));
	a = stats_now();
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, mirror, NPAGES, &c));
	ASSERT_EQ(c.cpages, NPAGES);
	b = stats_now();
	ASSERT_EQ(b.zaps_madvised - a.zaps_madvised, NPAGES);
	check_ints(mirror, SIZE, 1);
	check_ints(p, SIZE, 1);
	uhmm_dmirror_close(d);
}

/* ---- trace ---- */

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	struct stat st;
	char *buf;

	ASSERT_TRUE(f && fstat(fileno(f), &st) == 0);
	buf = malloc((size_t)st.st_size + 1);
	ASSERT_TRUE(buf);
	*len = fread(buf, 1, (size_t)st.st_size, f);
	buf[*len] = 0;
	fclose(f);
	return buf;
}

/* The finished trace's text; the file is removed. */
static char *take_trace(char *path)
{
	size_t len;
	char *buf = read_file(path, &len);

	unlink(path);
	return buf;
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *s = strstr(hay, needle); s; s = strstr(s + 1, needle))
		n++;
	return n;
}

/* Every line between "[" and "]" is one object, each but the last with a comma. */
static size_t check_json_lines(char *buf)
{
	size_t lines = 0;
	char *save, *line = strtok_r(buf, "\n", &save), *next;

	ASSERT_TRUE(line && strcmp(line, "[") == 0);
	for (line = strtok_r(NULL, "\n", &save); line; line = next) {
		size_t n = strlen(line);

		next = strtok_r(NULL, "\n", &save);
		if (!next) {
			ASSERT_TRUE(strcmp(line, "]") == 0);
			break;
		}
		ASSERT_TRUE(line[0] == '{');
		ASSERT_TRUE(strcmp(line + n - 2, "},") == 0 || (strcmp(line + n - 1, "}") == 0 && strcmp(next, "]") == 0));
		ASSERT_EQ(count(line, "{"), count(line, "}"));
		ASSERT_EQ(count(line, "\"") % 2, 0);
		lines++;
	}
	return lines;
}

TEST(trace_records_faults_migrations_and_invalidations)
{
	char path[] = "/tmp/uhmm-trace-XXXXXX";
	int fd = mkstemp(path), *p = map_anon(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	size_t lines;
	long events;
	char *buf;

	struct uhmm_mm *mm;

	ASSERT_GE(fd, 0);
	close(fd);
	fill_ints(p, SIZE, 1);
	ASSERT_OK(uhmm_mm_get(&mm));	/* outlives the device: the range stays registered */
	ASSERT_OK(uhmm_trace_start(path));
	ASSERT_EQ(uhmm_trace_start(path), -EBUSY);
	round_trip(p);
	ASSERT_OK(munmap(p, SIZE));
	ASSERT_OK(uhmm_mm_sync(mm));	/* the service thread handled the UNMAP event */
	uhmm_mm_put(mm);
	events = uhmm_trace_stop();
	ASSERT_GT(events, 0);
	ASSERT_EQ(uhmm_trace_stop(), -ENOENT);

	buf = take_trace(path);
	ASSERT_GE(count(buf, "\"name\":\"fault\""), 1);
	ASSERT_GE(count(buf, "\"name\":\"migrate\""), 2);
	ASSERT_GE(count(buf, "\"event\":\"migrate\""), 1);
	ASSERT_GE(count(buf, "\"where\":\"device\""), 1);
	ASSERT_GE(count(buf, "\"where\":\"system\""), 1);
	ASSERT_GE(count(buf, "\"where\":\"freed\""), 1);
	lines = check_json_lines(buf);
	ASSERT_EQ(lines, (size_t)events + 2);	/* + the process name and the end marker */
	free(buf);
}

TEST(trace_bad_arguments)
{
	ASSERT_EQ(uhmm_trace_start(NULL), -EINVAL);
	ASSERT_EQ(uhmm_trace_start(""), -EINVAL);
	ASSERT_EQ(uhmm_trace_start("/nonexistent-dir/trace.json"), -ENOENT);
	ASSERT_EQ(uhmm_trace_stop(), -ENOENT);
	ASSERT_EQ(uhmm_trace_mark(NULL, NULL, 0), -EINVAL);
	ASSERT_EQ(uhmm_trace_mark("", NULL, 0), -EINVAL);
	ASSERT_OK(uhmm_trace_mark("no trace running", NULL, 0));
}

/* The program's own events: named, with their range, and never breaking the JSON. */
TEST(trace_mark_puts_the_programs_events_in)
{
	char path[] = "/tmp/uhmm-trace-XXXXXX";
	int fd = mkstemp(path);
	char *buf;

	ASSERT_GE(fd, 0);
	close(fd);
	ASSERT_OK(uhmm_trace_start(path));
	ASSERT_OK(uhmm_trace_mark("step one", (void *)0x10000, 3 * PAGE));
	ASSERT_OK(uhmm_trace_mark("quote\" back\\slash\nnewline", NULL, 1));
	ASSERT_EQ(uhmm_trace_stop(), 2);
	buf = take_trace(path);
	ASSERT_EQ(count(buf, "\"name\":\"step one\",\"cat\":\"mark\""), 1);
	ASSERT_EQ(count(buf, "\"start\":\"0x10000\",\"npages\":3"), 1);
	ASSERT_EQ(count(buf, "\"name\":\"quote? back?slash?newline\""), 1);
	ASSERT_EQ(count(buf, "\"npages\":1}"), 1);
	ASSERT_EQ(check_json_lines(buf), (size_t)4);
	free(buf);
}

/*
 * UHMM_TRACE_RING=MiB: the events stay in memory and only the last MiB of
 * them reach the file at stop, whole lines, still one JSON array.
 */
TEST(trace_ring_keeps_the_last_events)
{
	char path[] = "/tmp/uhmm-trace-XXXXXX", label[32];
	int fd = mkstemp(path);
	size_t len, kept;
	char *buf;

	ASSERT_GE(fd, 0);
	close(fd);
	ASSERT_OK(setenv("UHMM_TRACE_RING", "1", 1));
	ASSERT_OK(uhmm_trace_start(path));
	ASSERT_OK(unsetenv("UHMM_TRACE_RING"));
	for (int i = 0; i < 20000; i++) {	/* ~150 bytes each: the ring wraps twice */
		snprintf(label, sizeof(label), "ring %05d", i);
		ASSERT_OK(uhmm_trace_mark(label, NULL, 1));
	}
	ASSERT_EQ(uhmm_trace_stop(), 20000);
	buf = read_file(path, &len);
	unlink(path);
	ASSERT_LE(len, (size_t)(1 << 20) + 1024);
	ASSERT_EQ(count(buf, "\"name\":\"ring 00000\""), 0);
	ASSERT_EQ(count(buf, "\"name\":\"ring 19999\""), 1);
	kept = count(buf, "\"name\":\"ring ");
	ASSERT_GT(kept, (size_t)5000);
	ASSERT_LT(kept, (size_t)20000);
	ASSERT_EQ(check_json_lines(buf), kept + 2);
	free(buf);
}
