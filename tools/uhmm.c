// SPDX-License-Identifier: MIT
/* The uhmm command: what the kernel supports, and a demonstration. */
#include <stdio.h>
#include <string.h>

#include "uhmm.h"
#include "../bench/bench.h"
#include "../src/include/uhmm.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: uhmm COMMAND [OPTIONS]\n"
		"\n"
		"Commands:\n"
		"  info [--json]   what this kernel offers uhmm, and how to enable what is missing\n"
		"  demo            mirror a malloc'ed buffer into the reference device and show\n"
		"                  faults, invalidations and errors\n"
		"  bench [--json] [--size-mib N | --thp]\n"
		"                  uhmm's data paths next to memcpy and a bare userfaultfd\n"
		"                  round trip, in the same run\n"
		"  trace [-o FILE] [--stats] -- PROGRAM [ARGS...]\n"
		"                  run PROGRAM with uhmm's trace on (Chrome trace-event JSON)\n"
		"  residency TRACE [-o FILE.svg] [--width N] [--rows N]\n"
		"                  draw where each page lived over time (system, device N)\n"
		"  help            this text\n"
		"  version         the library version\n"
		"\n"
		"Exit status: 0 on success, 1 on failure, 2 on a usage error\n"
		"(uhmm trace: the program's status).\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "info") == 0)
		return cmd_info(argc - 1, argv + 1);
	if (strcmp(argv[1], "demo") == 0)
		return cmd_demo(argc - 1, argv + 1);
	if (strcmp(argv[1], "bench") == 0)
		return cmd_bench(argc - 1, argv + 1);
	if (strcmp(argv[1], "trace") == 0)
		return cmd_trace(argc - 1, argv + 1);
	if (strcmp(argv[1], "residency") == 0)
		return cmd_residency(argc - 1, argv + 1);
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
		printf("uhmm %d.%d\n", UHMM_VERSION_MAJOR, UHMM_VERSION_MINOR);
		return 0;
	}
	fprintf(stderr, "uhmm: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
