// SPDX-License-Identifier: MIT
/*
 * uhmm trace: run a program with UHMM_TRACE set, so that the libuhmm it
 * loads writes a Chrome trace-event JSON file (Perfetto, chrome://tracing,
 * `uhmm residency`).
 */
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uhmm.h"

static int trace_usage(FILE *f, int status)
{
	fprintf(f, "usage: uhmm trace [-o FILE] [--stats] -- PROGRAM [ARGS...]\n"
		   "Runs PROGRAM (linked with libuhmm) with tracing on and writes the trace to\n"
		   "FILE (default uhmm-trace.json); --stats also prints uhmm's counters at exit.\n"
		   "Exit status: PROGRAM's, 128+N if a signal N killed it, 127 if it could not\n"
		   "be run, 2 on a usage error.\n");
	return status;
}

/* Lines of the trace that are events (the array brackets are not). */
static long count_events(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	long n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += line[0] == '{';
	fclose(f);
	return n;
}

int cmd_trace(int argc, char **argv)
{
	const char *out = "uhmm-trace.json";
	bool stats = false;
	int i, status;
	pid_t pid;

	for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
			out = argv[++i];
		else if (strcmp(argv[i], "--stats") == 0)
			stats = true;
		else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			return trace_usage(stdout, 0);
		else
			return trace_usage(stderr, 2);
	}
	if (i + 1 >= argc)
		return trace_usage(stderr, 2);
	pid = fork();
	if (pid < 0) {
		perror("uhmm trace: fork");
		return 1;
	}
	if (pid == 0) {
		setenv("UHMM_TRACE", out, 1);
		if (stats)
			setenv("UHMM_STATS", "1", 1);
		execvp(argv[i + 1], argv + i + 1);
		fprintf(stderr, "uhmm trace: cannot run %s: %s\n", argv[i + 1], strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			perror("uhmm trace: waitpid");
			return 1;
		}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
		return 127;
	long n = count_events(out);

	if (n < 0)
		fprintf(stderr, "uhmm trace: no trace in %s: is %s linked with libuhmm?\n", out, argv[i + 1]);
	else
		fprintf(stderr, "uhmm trace: %ld events in %s (load it in https://ui.perfetto.dev, or run "
				"uhmm residency %s)\n", n, out, out);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}
