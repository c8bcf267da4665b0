// SPDX-License-Identifier: MIT
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"

struct test_entry {
	const char *name;
	const char *file;
	void (*fn)(void);
};

static struct test_entry tests[512];
static int ntests;
static const char *cur_mode = "fast";

void test_register(const char *name, void (*fn)(void), const char *file)
{
	if (ntests < (int)(sizeof(tests) / sizeof(tests[0])))
		tests[ntests++] = (struct test_entry){ name, file, fn };
}

const char *test_mode(void)
{
	return cur_mode;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "    %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	_exit(1);
}

void test_skip(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "    skip: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	_exit(TEST_SKIP_CODE);
}

/* Become "nobody", keeping /proc/self readable (setuid clears dumpable). */
static void drop_privileges(void)
{
	if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) {
		fprintf(stderr, "    cannot drop privileges: %s\n", strerror(errno));
		_exit(1);
	}
	prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
}

static int run_one(const struct test_entry *t, const char *mode, int timeout)
{
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		setpgid(0, 0);	/* its own group: stragglers are killed with it */
		cur_mode = mode;
		if (strcmp(mode, "fallback") == 0)
			setenv("UHMM_FORCE_FALLBACK", "1", 1);
		if (strcmp(mode, "user") == 0)
			drop_privileges();
		if (strcmp(mode, "thread") == 0)	/* faults served in the faulting thread */
			setenv("UHMM_FAULTS", "thread", 1);
		alarm((unsigned int)timeout);
		t->fn();
		fflush(NULL);
		_exit(0);
	}
	if (pid < 0)
		return 1;
	setpgid(pid, pid);
	if (waitpid(pid, &status, 0) < 0)
		return 1;
	kill(-pid, SIGKILL);	/* a grandchild a test left behind */
	if (WIFSIGNALED(status)) {
		fprintf(stderr, "    killed by signal %d%s\n", WTERMSIG(status),
			WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
		return 1;
	}
	return WEXITSTATUS(status);
}

static void usage(const char *argv0)
{
	printf("usage: %s [--mode fast|fallback|user|thread|all] [--filter TEXT] [--strict] [--timeout S] [--list]\n"
	       "Runs uhmm's tests; exit status 0 when none failed.\n", argv0);
}

/* UHMM_TEST_SKIP_OK=name,name: tests a strict run lets skip (what the machine could not be given). */
static bool skip_allowed(const char *name)
{
	const char *ok = getenv("UHMM_TEST_SKIP_OK");
	size_t n = strlen(name);

	for (const char *p = ok; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
		if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == 0))
			return true;
	return false;
}

/*
 * A mode a test program cannot run in at all: it defines this (a strong
 * definition overrides the weak one). uhmm-opencl's tests do, for
 * "thread": its context refuses faults served in the faulting thread, and
 * one of its tests asserts that in every mode.
 */
__attribute__((weak)) const char *harness_skip_mode;

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mode", required_argument, NULL, 'm' }, { "filter", required_argument, NULL, 'f' },
		{ "strict", no_argument, NULL, 's' },	  { "timeout", required_argument, NULL, 't' },
		{ "list", no_argument, NULL, 'l' },	  { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *modes[4] = { "fast", "fallback", "user", "thread" }, *only = "all", *filter = NULL;
	int passed = 0, failed = 0, skipped = 0, timeout = 60, strict = 0, c;

	while ((c = getopt_long(argc, argv, "m:f:st:lh", opts, NULL)) != -1) {
		switch (c) {
		case 'm': only = optarg; break;
		case 'f': filter = optarg; break;
		case 's': strict = 1; break;
		case 't': timeout = atoi(optarg); break;
		case 'l':
			for (int i = 0; i < ntests; i++)
				printf("%s\t%s\n", tests[i].name, tests[i].file);
			return 0;
		case 'h': usage(argv[0]); return 0;
		default: usage(argv[0]); return 2;
		}
	}
	const char *st = getenv("UHMM_TEST_STRICT");

	if (st && *st && strcmp(st, "0") != 0)
		strict = 1;
	for (int m = 0; m < 4; m++) {
		if (strcmp(only, "all") != 0 && strcmp(only, modes[m]) != 0)
			continue;
		if (harness_skip_mode && strcmp(modes[m], harness_skip_mode) == 0)
			continue;
		if (strcmp(modes[m], "user") == 0 && geteuid() != 0) {
			printf("note: mode user needs root to drop privileges; this run is unprivileged already\n");
			continue;
		}
		for (int i = 0; i < ntests; i++) {
			struct timespec t0, t1;
			int r;

			if (filter && !strstr(tests[i].name, filter))
				continue;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			r = run_one(&tests[i], modes[m], timeout);
			clock_gettime(CLOCK_MONOTONIC, &t1);
			double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
			if (r == TEST_SKIP_CODE && (!strict || skip_allowed(tests[i].name))) {
				printf("SKIP %-8s %s\n", modes[m], tests[i].name);
				skipped++;
			} else if (r == 0) {
				printf("PASS %-8s %s (%.0f ms)\n", modes[m], tests[i].name, ms);
				passed++;
			} else {
				printf("FAIL %-8s %s\n", modes[m], tests[i].name);
				failed++;
			}
			fflush(stdout);
		}
	}
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
