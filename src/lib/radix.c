// SPDX-License-Identifier: MIT
#include <errno.h>
#include <stdlib.h>

#include "uhmm.h"
#include "radix.h"

#define FANOUT (1u << UHMM_RADIX_BITS)

static unsigned int idx_at(uint64_t key, int level)
{
	return (unsigned int)(key >> (UHMM_RADIX_BITS * (UHMM_RADIX_LEVELS - 1 - level))) & (FANOUT - 1);
}

uint64_t *uhmm_radix_slot(struct uhmm_radix *t, uint64_t key, bool create)
{
	void ***pp = &t->root;

	if (key > UHMM_RADIX_MAX_KEY)
		return NULL;
	if (t->leaf && key >> UHMM_RADIX_BITS == t->leaf_tag)
		return t->leaf + (key & (FANOUT - 1));
	for (int level = 0; level < UHMM_RADIX_LEVELS; level++) {
		if (!*pp) {
			if (!create)
				return NULL;
			*pp = uhmm_kcalloc(FANOUT, sizeof(void *));
			if (!*pp)
				return NULL;
		}
		if (level == UHMM_RADIX_LEVELS - 1) {
			t->leaf = (uint64_t *)*pp;
			t->leaf_tag = key >> UHMM_RADIX_BITS;
			return t->leaf + idx_at(key, level);
		}
		pp = (void ***)&(*pp)[idx_at(key, level)];
	}
	return NULL;
}

uint64_t uhmm_radix_get(const struct uhmm_radix *t, uint64_t key)
{
	uint64_t *s = uhmm_radix_slot((struct uhmm_radix *)t, key, false);

	return s ? *s : 0;
}

int uhmm_radix_set(struct uhmm_radix *t, uint64_t key, uint64_t val)
{
	uint64_t *s;

	if (key > UHMM_RADIX_MAX_KEY)
		return -EINVAL;
	s = uhmm_radix_slot(t, key, val != 0);
	if (!s)
		return val ? -ENOMEM : 0;
	t->count += (val != 0) - (*s != 0);
	*s = val;
	return 0;
}

struct walk {
	struct uhmm_radix *t;
	uint64_t first, last;
	int (*fn)(void *arg, uint64_t key, uint64_t *val);
	void *arg;
	bool clear;
};

static bool slot_used(void **node, unsigned int i, bool leaf)
{
	return leaf ? ((uint64_t *)node)[i] != 0 : node[i] != NULL;
}

/* Is the node all zero? Its slots next to [lo, hi] first: the likely non-zero ones. */
static bool node_empty(void **node, bool leaf, unsigned int lo, unsigned int hi)
{
	if ((hi + 1 < FANOUT && slot_used(node, hi + 1, leaf)) || (lo > 0 && slot_used(node, lo - 1, leaf)))
		return false;
	for (unsigned int i = 0; i < FANOUT; i++)
		if (slot_used(node, i, leaf))
			return false;
	return true;
}

/*
 * Returns the walk's stop code; *empty tells whether the node is now all
 * zero. Only the slots in [first, last] are visited (a walk of one key
 * reads one slot per level, not the whole 4 KiB node: a full scan per
 * level made the walks a third of a lone CPU fault-back's time). Whether
 * the node is empty is asked only when this walk zeroed a slot or freed a
 * child in it, found nothing in its part of it, or clears; so nodes that
 * uhmm_radix_set(0) and direct slot writes leave empty are freed by the
 * next walk over them, as before.
 */
static int walk_node(struct walk *w, void **node, int level, uint64_t base, bool *empty)
{
	int shift = UHMM_RADIX_BITS * (UHMM_RADIX_LEVELS - 1 - level);
	bool leaf = level == UHMM_RADIX_LEVELS - 1, changed = false, saw = false;
	uint64_t span_last = base + (((uint64_t)FANOUT << shift) - 1);	/* the node's last key */
	unsigned int lo = w->first > base ? (unsigned int)((w->first - base) >> shift) : 0;
	unsigned int hi = w->last < span_last ? (unsigned int)((w->last - base) >> shift) : FANOUT - 1;
	unsigned int i;
	int ret = 0;

	for (i = lo; i <= hi && !ret; i++) {
		uint64_t key = base + ((uint64_t)i << shift);

		if (leaf) {
			uint64_t *v = (uint64_t *)node + i;

			if (!*v)
				continue;
			if (w->clear)
				*v = 0;
			else
				ret = w->fn(w->arg, key, v);
			w->t->count += (*v != 0) - 1;
			changed |= *v == 0;
			saw |= *v != 0;
		} else if (node[i]) {
			bool child_empty;

			ret = walk_node(w, node[i], level + 1, key, &child_empty);
			if (child_empty) {
				uhmm_kfree(node[i]);
				node[i] = NULL;
				changed = true;
			} else {
				saw = true;
			}
		}
	}
	/* a walk stopped early did not see all of its range */
	*empty = (changed || w->clear || (!saw && i > hi)) && node_empty(node, leaf, lo, hi);
	return ret;
}

static int radix_walk(struct walk *w)
{
	bool empty;
	int ret;

	w->t->leaf = NULL;	/* the walk may free it */
	if (!w->t->root || w->first > w->last)
		return 0;
	ret = walk_node(w, w->t->root, 0, 0, &empty);
	if (empty) {
		uhmm_kfree(w->t->root);
		w->t->root = NULL;
	}
	return ret;
}

int uhmm_radix_walk(struct uhmm_radix *t, uint64_t first, uint64_t last,
		    int (*fn)(void *arg, uint64_t key, uint64_t *val), void *arg)
{
	struct walk w = { t, first, last > UHMM_RADIX_MAX_KEY ? UHMM_RADIX_MAX_KEY : last, fn, arg, false };

	return radix_walk(&w);
}

void uhmm_radix_clear(struct uhmm_radix *t, uint64_t first, uint64_t last)
{
	struct walk w = { t, first, last > UHMM_RADIX_MAX_KEY ? UHMM_RADIX_MAX_KEY : last, NULL, NULL, true };

	radix_walk(&w);
}

void uhmm_radix_free(struct uhmm_radix *t)
{
	uhmm_radix_clear(t, 0, UHMM_RADIX_MAX_KEY);
}
