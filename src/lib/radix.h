/* SPDX-License-Identifier: MIT */
/*
 * A four-level, 512-way radix tree keyed by virtual page number (48-bit
 * virtual addresses), shaped like a page table. Leaves hold 64-bit words,
 * 0 meaning empty. Lookups and updates are O(1); a range walk visits only
 * the nodes that exist and, in each, only the slots in its range (a walk of
 * one key reads four slots). Setting a value to 0 keeps its nodes; a walk
 * or a clear frees the nodes it leaves, or finds, empty. Not thread-safe,
 * lookups included (they keep the last leaf): the owner locks.
 *
 * Used by the library (the device-private table) and by the reference
 * device (its page table); internal, not installed.
 */
#ifndef UHMM_RADIX_H
#define UHMM_RADIX_H

#include <stdbool.h>
#include <stdint.h>

#define UHMM_RADIX_BITS 9
#define UHMM_RADIX_LEVELS 4
#define UHMM_RADIX_MAX_KEY ((1ULL << (UHMM_RADIX_BITS * UHMM_RADIX_LEVELS)) - 1)

struct uhmm_radix {
	void **root;
	uint64_t count;		/* non-zero leaves */
	/*
	 * The last leaf node a lookup reached, and which one it is (key >>
	 * UHMM_RADIX_BITS): the next key in it costs one compare instead of a
	 * four-level descent. A migration looks its entries up in address
	 * order, several times each. Dropped by every walk and clear (they
	 * free nodes); a set to 0 frees nothing.
	 */
	uint64_t *leaf;
	uint64_t leaf_tag;
};

/* Slot for @key; with @create, missing nodes are allocated (NULL on ENOMEM). */
uint64_t *uhmm_radix_slot(struct uhmm_radix *t, uint64_t key, bool create);
uint64_t uhmm_radix_get(const struct uhmm_radix *t, uint64_t key);
/* Set (0 clears): 0 or -ENOMEM / -EINVAL. Keeps @count exact. */
int uhmm_radix_set(struct uhmm_radix *t, uint64_t key, uint64_t val);

/*
 * Call @fn for every non-zero leaf with key in [first, last], in key order.
 * @fn may change the value through the pointer (0 clears it). A non-zero
 * return from @fn stops the walk and is returned.
 */
int uhmm_radix_walk(struct uhmm_radix *t, uint64_t first, uint64_t last,
		    int (*fn)(void *arg, uint64_t key, uint64_t *val), void *arg);
/* Clear [first, last], freeing nodes that become unreachable-empty. */
void uhmm_radix_clear(struct uhmm_radix *t, uint64_t first, uint64_t last);
void uhmm_radix_free(struct uhmm_radix *t);

#endif
