// SPDX-License-Identifier: MIT
/*
 * The service threads (src/service.c): one per CPU, each pinned to its CPU,
 * so that a CPU fault is served on the CPU that took it; or as many as
 * UHMM_SERVICE_THREADS says, unpinned with UHMM_SERVICE_PIN=0. Each test
 * runs in a fresh child, so the environment and the CPU affinity it sets
 * before its first uhmm call decide the threads uhmm starts.
 */
#include <dirent.h>
#include <sched.h>
#include <sys/syscall.h>

#include "harness.h"

struct svc {
	int tid;
	int cpu;	/* the one CPU it may run on, or -1 */
};

static int only_cpu(int tid)
{
	cpu_set_t s;

	ASSERT_OK(sched_getaffinity(tid, sizeof(s), &s));
	if (CPU_COUNT(&s) != 1)
		return -1;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &s))
			return c;
	return -1;
}

/* uhmm's service threads: the tasks of this process named "uhmm-svc*". */
static int service_threads(struct svc *out, int max)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	ASSERT_TRUE(d);
	while ((e = readdir(d))) {
		char path[300], comm[32] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (!fgets(comm, sizeof(comm), f))
			comm[0] = '\0';
		fclose(f);
		if (strncmp(comm, "uhmm-svc", 8))
			continue;
		ASSERT_LT(n, max);
		out[n].tid = atoi(e->d_name);
		out[n].cpu = only_cpu(out[n].tid);
		n++;
	}
	closedir(d);
	return n;
}

static int allowed_cpus(cpu_set_t *s)
{
	ASSERT_OK(sched_getaffinity(0, sizeof(*s), s));
	return CPU_COUNT(s);
}

static void pin_self(int cpu)
{
	cpu_set_t one;

	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	ASSERT_OK(sched_setaffinity(0, sizeof(one), &one));
}

/* A device round trip of 64 pages: the threads serve faults and events. */
static void round_trip_works(void)
{
	struct uhmm_dmirror *d = dmirror(0);
	int *p = map_anon(64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	void *buf = map_anon(64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	fill_ints(p, 64 * PAGE, 1);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 64, NULL));
	check_ints(p, 64 * PAGE, 1);	/* every page faults back */
	ASSERT_OK(munmap(p, 64 * PAGE));
	ASSERT_OK(uhmm_dmirror_close(d));
}

TEST(service_threads_one_per_cpu_pinned)
{
	struct svc s[16];
	cpu_set_t all, seen;
	struct uhmm_mm *mm;
	int ncpu = allowed_cpus(&all), n;

	ASSERT_OK(uhmm_mm_get(&mm));
	n = service_threads(s, 16);
	if (ncpu < 2 || ncpu > 8) {	/* two, unpinned (one CPU: confined to it like this thread) */
		ASSERT_EQ(n, 2);
		for (int i = 0; ncpu > 1 && i < n; i++)
			ASSERT_EQ(s[i].cpu, -1);
	} else {
		ASSERT_EQ(n, ncpu);
		CPU_ZERO(&seen);
		for (int i = 0; i < n; i++) {
			ASSERT_GE(s[i].cpu, 0);
			ASSERT_TRUE(CPU_ISSET(s[i].cpu, &all));
			ASSERT_FALSE(CPU_ISSET(s[i].cpu, &seen));	/* one per CPU */
			CPU_SET(s[i].cpu, &seen);
		}
	}
	uhmm_mm_put(mm);
	round_trip_works();
}

TEST(service_threads_as_configured)
{
	struct svc s[16];
	struct uhmm_mm *mm;

	ASSERT_OK(setenv("UHMM_SERVICE_THREADS", "3", 1));
	ASSERT_OK(setenv("UHMM_SERVICE_PIN", "0", 1));
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(service_threads(s, 16), 3);
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(s[i].cpu, only_cpu(0));	/* not pinned: this thread's CPUs */
	uhmm_mm_put(mm);
	round_trip_works();
}

/* Fewer than two would leave nobody to read while the worker waits for an event's reader. */
TEST(service_threads_never_fewer_than_two)
{
	struct svc s[16];
	struct uhmm_mm *mm;

	ASSERT_OK(setenv("UHMM_SERVICE_THREADS", "1", 1));
	pin_self(only_cpu(0) >= 0 ? only_cpu(0) : sched_getcpu());	/* one CPU allowed */
	ASSERT_OK(uhmm_mm_get(&mm));
	ASSERT_EQ(service_threads(s, 16), 2);
	uhmm_mm_put(mm);
	round_trip_works();
}

static int fault_tids(const char *trace, int *tids, int max)
{
	int n = 0;

	for (const char *l = trace; (l = strstr(l, "\"name\":\"fault\"")); l++) {
		const char *t = strstr(l, "\"tid\":");
		const char *eol = strchr(l, '\n');

		if (t && (!eol || t < eol) && n < max)
			tids[n++] = atoi(t + 6);
	}
	return n;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, 1 << 22);
	size_t len;

	ASSERT_TRUE(f && buf);
	len = fread(buf, 1, (1 << 22) - 1, f);
	buf[len] = '\0';
	fclose(f);
	return buf;
}

#define LONE 16

/*
 * Lone device pages (32 apart: the reference device brings 16 back per
 * fault) touched from @cpu: how many of the faults the trace shows were
 * served by thread @tid, of *@nf.
 */
static int lone_faults_served_by(struct uhmm_mm *mm, struct uhmm_dmirror *d, int cpu, int tid, int *nf)
{
	char path[] = "/tmp/uhmm-svc-trace-XXXXXX";
	int fd = mkstemp(path), tids[4 * LONE], local = 0;
	int *p = map_anon(32 * LONE * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	void *buf = map_anon(32 * LONE * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *trace;

	ASSERT_GE(fd, 0);
	close(fd);
	fill_ints(p, 32 * LONE * PAGE, 1);
	pin_self(cpu);
	ASSERT_OK(dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, p, buf, 32 * LONE, NULL));
	ASSERT_OK(uhmm_trace_start(path));
	for (int k = 0; k < LONE; k++)
		ASSERT_EQ(p[k * 32 * PAGE / sizeof(int)], (int)(k * 32 * PAGE / sizeof(int)));
	ASSERT_OK(uhmm_mm_sync(mm));	/* a fault's span is written after the thread is woken */
	ASSERT_GT(uhmm_trace_stop(), 0);
	trace = read_file(path);
	unlink(path);
	*nf = fault_tids(trace, tids, 4 * LONE);
	ASSERT_GE(*nf, LONE);
	for (int k = 0; k < *nf; k++)
		local += tids[k] == tid;
	free(trace);
	ASSERT_OK(munmap(p, 32 * LONE * PAGE));
	ASSERT_OK(munmap(buf, 32 * LONE * PAGE));
	return local;
}

/*
 * A fault taken on CPU c is served by the service thread pinned to c (with
 * faults in the faulting thread, by the thread that took it): the trace
 * names the thread that served each fault. The thread on the other
 * CPU is woken too (the userfaultfd wakes every poller) and may read first
 * now and then: 6 of 16 were seen under TSan, and 15 of 16 once in CI while
 * other test processes kept the faulting CPU busy. So the test asks for a
 * quarter of the faults taken on each CPU, in one of three rounds: a single
 * worker thread, as before, serves none of the faults of one of the CPUs
 * in any round.
 */
TEST(cpu_fault_served_on_its_cpu)
{
	struct svc s[16];
	cpu_set_t all;
	struct uhmm_mm *mm;
	struct uhmm_dmirror *d;
	int ncpu = allowed_cpus(&all), n;

	if (ncpu < 2 || ncpu > 8)
		SKIP("%d CPUs: the service threads are not pinned", ncpu);
	ASSERT_OK(uhmm_mm_get(&mm));
	n = service_threads(s, 16);
	d = dmirror(0);
	if (faults_in_thread()) {	/* each is served by the thread that took it, on its CPU */
		for (int i = 0; i < n; i++) {
			int nf, local = lone_faults_served_by(mm, d, s[i].cpu, (int)syscall(SYS_gettid), &nf);

			ASSERT_EQ(local, nf);
		}
		n = 0;
	}
	for (int i = 0; i < n; i++) {
		int local = 0, nf = 1;

		for (int round = 0; round < 3 && 4 * local < nf; round++) {
			local = lone_faults_served_by(mm, d, s[i].cpu, s[i].tid, &nf);
			printf("    CPU %d: %d of %d faults served by uhmm-svc%d\n", s[i].cpu, local, nf, s[i].cpu);
		}
		ASSERT_GE(4 * local, nf);
	}
	ASSERT_OK(uhmm_dmirror_close(d));
	uhmm_mm_put(mm);
}
