/* SPDX-License-Identifier: MIT */
#ifndef UHMM_BENCH_H
#define UHMM_BENCH_H

int cmd_bench(int argc, char **argv);

#endif
