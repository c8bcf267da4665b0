// SPDX-License-Identifier: MIT
/*
 * The radix tree under the device-private table and the reference device's
 * page table (src/lib/radix.c), against a model: a sorted array of the keys
 * set. Keys are drawn near the node boundaries of every level, where an
 * off-by-one in a walk's slot range would show.
 */
#include "harness.h"
#include "../src/lib/radix.h"

#define NKEYS 600

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* A key at, or one off, a node boundary of a random level, or anywhere. */
static uint64_t some_key(void)
{
	int level = (int)(next_rand() % (UHMM_RADIX_LEVELS + 1));
	uint64_t k;

	if (level == UHMM_RADIX_LEVELS)
		return next_rand() & UHMM_RADIX_MAX_KEY;
	k = (next_rand() & UHMM_RADIX_MAX_KEY) & ~((1ULL << (UHMM_RADIX_BITS * level)) - 1);
	switch (next_rand() % 3) {
	case 0: return k;
	case 1: return k ? k - 1 : 0;
	default: return k + 1 > UHMM_RADIX_MAX_KEY ? k : k + 1;
	}
}

struct model {
	uint64_t key[NKEYS], val[NKEYS];
	size_t n;
};

static long model_find(const struct model *m, uint64_t key)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->key[i] == key)
			return (long)i;
	return -1;
}

/* Fill @t and @m with up to NKEYS distinct keys, values key * 2 + 1. */
static void fill(struct uhmm_radix *t, struct model *m)
{
	m->n = 0;
	while (m->n < NKEYS) {
		uint64_t k = some_key();

		if (model_find(m, k) >= 0)
			continue;
		ASSERT_OK(uhmm_radix_set(t, k, k * 2 + 1));
		m->key[m->n] = k;
		m->val[m->n++] = k * 2 + 1;
	}
	ASSERT_EQ(t->count, (uint64_t)NKEYS);
}

struct visit {
	uint64_t keys[NKEYS + 1];
	size_t n;
	size_t stop_at;		/* return 7 at the visit with this index (SIZE_MAX: never) */
	bool zero_odd;		/* clear the values of odd keys */
	bool zero_all;		/* clear every value */
};

static int record(void *arg, uint64_t key, uint64_t *val)
{
	struct visit *v = arg;

	ASSERT_LT(v->n, (size_t)NKEYS + 1);
	ASSERT_EQ(*val, key * 2 + 1);	/* the value stored under this key */
	v->keys[v->n] = key;
	if (v->zero_all || (v->zero_odd && (key & 1)))
		*val = 0;
	return v->n++ == v->stop_at ? 7 : 0;
}

/* The keys of @m in [first, last], in order. */
static size_t expected(const struct model *m, uint64_t first, uint64_t last, uint64_t *out)
{
	size_t n = 0;

	for (size_t i = 0; i < m->n; i++)
		if (m->val[i] && m->key[i] >= first && m->key[i] <= last)
			out[n++] = m->key[i];
	for (size_t i = 1; i < n; i++)	/* insertion sort: n is small */
		for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
			uint64_t x = out[j];

			out[j] = out[j - 1];
			out[j - 1] = x;
		}
	return n;
}

static void random_range(uint64_t *first, uint64_t *last)
{
	uint64_t a = some_key(), b = next_rand() % 4 ? a + (next_rand() % 2048) : some_key();

	if (b > UHMM_RADIX_MAX_KEY)
		b = UHMM_RADIX_MAX_KEY;
	*first = a < b ? a : b;
	*last = a < b ? b : a;
}

TEST(radix_walk_visits_its_range_in_key_order)
{
	static struct model m;
	static uint64_t want[NKEYS];
	struct uhmm_radix t = { 0 };
	struct visit *v = calloc(1, sizeof(*v));

	fill(&t, &m);
	for (int round = 0; round < 3000; round++) {
		uint64_t first, last;
		size_t n;

		random_range(&first, &last);
		if (round % 10 == 0)	/* one key exactly */
			last = first = m.key[next_rand() % m.n];
		n = expected(&m, first, last, want);
		v->n = 0;
		v->stop_at = SIZE_MAX;
		ASSERT_OK(uhmm_radix_walk(&t, first, last, record, v));
		ASSERT_EQ(v->n, n);
		for (size_t i = 0; i < n; i++)
			ASSERT_EQ(v->keys[i], want[i]);
	}
	ASSERT_EQ(t.count, (uint64_t)NKEYS);	/* a walk that changes nothing changes nothing */
	for (size_t i = 0; i < m.n; i++)
		ASSERT_EQ(uhmm_radix_get(&t, m.key[i]), m.val[i]);
	uhmm_radix_free(&t);
	ASSERT_TRUE(t.root == NULL);
	ASSERT_EQ(t.count, 0);
	free(v);
}

TEST(radix_walk_stops_where_the_callback_says)
{
	static struct model m;
	static uint64_t want[NKEYS];
	struct uhmm_radix t = { 0 };
	struct visit *v = calloc(1, sizeof(*v));

	fill(&t, &m);
	for (int round = 0; round < 150; round++) {
		size_t n = expected(&m, 0, UHMM_RADIX_MAX_KEY, want);

		v->n = 0;
		v->stop_at = next_rand() % n;
		ASSERT_EQ(uhmm_radix_walk(&t, 0, UHMM_RADIX_MAX_KEY, record, v), 7);
		ASSERT_EQ(v->n, v->stop_at + 1);	/* nothing visited after the stop */
		for (size_t i = 0; i < v->n; i++)
			ASSERT_EQ(v->keys[i], want[i]);
	}
	uhmm_radix_free(&t);
	free(v);
}

/* Values a walk clears are gone, counted, and the nodes they emptied freed. */
TEST(radix_walk_that_clears_frees_what_it_empties)
{
	static struct model m;
	struct uhmm_radix t = { 0 };
	struct visit *v = calloc(1, sizeof(*v));
	uint64_t left = NKEYS;

	fill(&t, &m);
	v->zero_odd = true;
	for (int round = 0; round < 200 && left; round++) {
		uint64_t first, last;

		random_range(&first, &last);
		v->n = 0;
		v->stop_at = SIZE_MAX;
		ASSERT_OK(uhmm_radix_walk(&t, first, last, record, v));
		for (size_t i = 0; i < m.n; i++)
			if (m.val[i] && (m.key[i] & 1) && m.key[i] >= first && m.key[i] <= last) {
				m.val[i] = 0;
				left--;
			}
		ASSERT_EQ(t.count, left);
	}
	for (size_t i = 0; i < m.n; i++)
		ASSERT_EQ(uhmm_radix_get(&t, m.key[i]), m.val[i]);
	/* the rest cleared by one walk: the nodes it emptied are freed, root included */
	v->zero_all = true;
	v->n = 0;
	ASSERT_OK(uhmm_radix_walk(&t, 0, UHMM_RADIX_MAX_KEY, record, v));
	ASSERT_EQ(v->n, (size_t)left);
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(t.root == NULL);
	free(v);
}

/* Clearing a range frees the nodes left empty, also ones uhmm_radix_set(0) emptied. */
TEST(radix_clear_frees_empty_nodes)
{
	struct uhmm_radix t = { 0 };
	uint64_t base = 5ULL << (2 * UHMM_RADIX_BITS);

	for (uint64_t k = 0; k < 1024; k++)
		ASSERT_OK(uhmm_radix_set(&t, base + k, k + 1));
	for (uint64_t k = 0; k < 512; k++)
		ASSERT_OK(uhmm_radix_set(&t, base + k, 0));	/* leaves an empty leaf behind */
	ASSERT_EQ(t.count, 512);
	uhmm_radix_clear(&t, base, base + 511);	/* nothing to clear there, but the empty leaf goes */
	ASSERT_EQ(uhmm_radix_get(&t, base + 512), 1 + 512);
	uhmm_radix_clear(&t, base + 512, base + 1023);
	ASSERT_EQ(t.count, 0);
	ASSERT_TRUE(t.root == NULL);
}

static int never(void *arg, uint64_t key, uint64_t *val)
{
	(void)arg, (void)key, (void)val;
	return 99;	/* there is nothing to visit */
}

/* A walk that finds nothing where uhmm_radix_set(0) emptied the nodes frees them too. */
TEST(radix_walk_frees_empty_nodes_it_passes)
{
	struct uhmm_radix t = { 0 };
	uint64_t base = 7ULL << (3 * UHMM_RADIX_BITS);

	for (uint64_t k = 0; k < 3 * 512; k += 3)
		ASSERT_OK(uhmm_radix_set(&t, base + k, k + 1));
	for (uint64_t k = 0; k < 3 * 512; k += 3)
		ASSERT_OK(uhmm_radix_set(&t, base + k, 0));	/* three empty leaves, kept */
	ASSERT_TRUE(t.root != NULL);
	ASSERT_OK(uhmm_radix_walk(&t, base + 5, base + 5, never, NULL));	/* one key of the first leaf */
	ASSERT_TRUE(t.root != NULL);	/* the other two are still there */
	ASSERT_OK(uhmm_radix_walk(&t, base, base + 3 * 512, never, NULL));
	ASSERT_TRUE(t.root == NULL);
	ASSERT_EQ(t.count, 0);
}

static int zero_it(void *arg, uint64_t key, uint64_t *val)
{
	(void)arg, (void)key;
	*val = 0;
	return 0;
}

/*
 * Lookups keep the last leaf they reached: a walk or a clear that frees it
 * must not leave a later lookup reading freed memory (ASan says so) or a
 * value of the old leaf; the next key of a kept leaf reads its own slot.
 */
TEST(radix_lookup_after_its_leaf_was_freed)
{
	struct uhmm_radix t = { 0 };
	uint64_t base = 5ULL << (2 * UHMM_RADIX_BITS);

	ASSERT_OK(uhmm_radix_set(&t, base + 1, 11));
	ASSERT_OK(uhmm_radix_set(&t, base + 2, 22));
	ASSERT_EQ(uhmm_radix_get(&t, base + 1), 11);	/* the leaf is kept ... */
	ASSERT_EQ(uhmm_radix_get(&t, base + 2), 22);	/* ... and its next slot read through it */
	ASSERT_EQ(uhmm_radix_get(&t, base + 3), 0);
	ASSERT_EQ(uhmm_radix_get(&t, base + 512 + 2), 0);	/* another leaf's key: not this leaf's slot */
	uhmm_radix_clear(&t, base, base + 511);	/* frees the leaf */
	ASSERT_TRUE(t.root == NULL);
	ASSERT_EQ(uhmm_radix_get(&t, base + 1), 0);
	ASSERT_TRUE(uhmm_radix_slot(&t, base + 2, false) == NULL);
	ASSERT_OK(uhmm_radix_set(&t, base + 2, 33));	/* a new leaf */
	ASSERT_EQ(uhmm_radix_get(&t, base + 2), 33);
	ASSERT_EQ(uhmm_radix_get(&t, base + 1), 0);
	ASSERT_OK(uhmm_radix_walk(&t, base, base + 511, zero_it, NULL));	/* a walk frees it too */
	ASSERT_TRUE(t.root == NULL);
	ASSERT_EQ(uhmm_radix_get(&t, base + 2), 0);
	ASSERT_OK(uhmm_radix_set(&t, base + 2, 44));
	ASSERT_EQ(uhmm_radix_get(&t, base + 2), 44);
	uhmm_radix_free(&t);
	ASSERT_EQ(uhmm_radix_get(&t, base + 2), 0);
	ASSERT_EQ(t.count, 0);
}
