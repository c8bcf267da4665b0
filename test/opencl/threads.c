// SPDX-License-Identifier: MIT
/*
 * Launches from two threads on one device while a third thread reads one of
 * the arrays the kernels are writing: its reads fault pages back in the
 * middle of launches (they wait for a running kernel; a launch waits for
 * them). No update is lost, no value goes backwards.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "cl_util.h"

#define ROUNDS 40

struct worker {
	struct cl_fixture *f;
	int *p;
	unsigned int n;
	int ret;
	atomic_int *round;	/* launches done, for the reader */
};

static void *launcher(void *arg)
{
	struct worker *w = arg;

	for (int r = 0; r < ROUNDS && !w->ret; r++) {
		w->ret = cl_incr(w->f, w->p, w->n, 1);
		if (w->round)
			atomic_store(w->round, r + 1);
	}
	return NULL;
}

struct reader {
	const volatile int *p;
	unsigned int lo, n;	/* the whole pages of the array: the edges are plain memory the
				   launch writes with the CPU (a race TSan would rightly report) */
	atomic_int *round;
	atomic_bool stop;
	int bad;
};

/* Every value read lies between what the launches done so far imply: never older. */
static void *read_along(void *arg)
{
	struct reader *rd = arg;
	unsigned int seed = 1;

	while (!atomic_load(&rd->stop)) {
		unsigned int i = rd->lo + (seed = seed * 1103515245u + 12345u) % rd->n;
		int done = atomic_load(rd->round), v = rd->p[i];

		if (v < (int)i + done || v > (int)i + ROUNDS)
			rd->bad++;
	}
	return NULL;
}

TEST(cl_threads_launch_while_cpu_reads)
{
	struct cl_fixture f;
	atomic_int round = 0;
	struct worker w1 = { &f, NULL, 600000, 0, &round }, w2 = { &f, NULL, 70000, 0, NULL };
	struct reader rd = { .round = &round };
	pthread_t t1, t2, tr;

	cl_open(&f, NULL);
	w1.p = malloc(w1.n * sizeof(int));
	w2.p = malloc(w2.n * sizeof(int));
	ASSERT_TRUE(w1.p && w2.p);
	fill_ints(w1.p, w1.n * sizeof(int), 1);
	fill_ints(w2.p, w2.n * sizeof(int), 1);
	rd.p = w1.p;
	rd.lo = (unsigned int)((((uintptr_t)w1.p + PAGE - 1) & ~(PAGE - 1)) - (uintptr_t)w1.p) / sizeof(int);
	rd.n = (unsigned int)((((uintptr_t)(w1.p + w1.n) & ~(PAGE - 1)) - (uintptr_t)w1.p) / sizeof(int)) - rd.lo;
	ASSERT_OK(pthread_create(&t1, NULL, launcher, &w1));
	ASSERT_OK(pthread_create(&t2, NULL, launcher, &w2));
	ASSERT_OK(pthread_create(&tr, NULL, read_along, &rd));
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	atomic_store(&rd.stop, true);
	pthread_join(tr, NULL);
	ASSERT_OK(w1.ret);
	ASSERT_OK(w2.ret);
	ASSERT_EQ(rd.bad, 0);
	for (unsigned int i = 0; i < w1.n; i++)
		ASSERT_EQ(w1.p[i], (int)i + ROUNDS);
	for (unsigned int i = 0; i < w2.n; i++)
		ASSERT_EQ(w2.p[i], (int)i + ROUNDS);
	ASSERT_GT(cl_stats(&f).faults, 0);
	free(w1.p);
	free(w2.p);
	cl_close(&f);
}
