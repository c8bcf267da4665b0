// SPDX-License-Identifier: MIT
/*
 * A sorted array of disjoint, non-adjacent [start, end) spans. Used for the
 * set of ranges registered with the userfaultfd; it stays small because
 * registration is done in coarse 2 MiB aligned pieces.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Index of the first span whose end is > @addr. */
static size_t spanset_find(const struct uhmm_spanset *s, uint64_t addr)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (s->v[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

bool uhmm_spanset_covers(const struct uhmm_spanset *s, uint64_t start, uint64_t end)
{
	size_t i = spanset_find(s, start);

	return i < s->n && s->v[i].start <= start && s->v[i].end >= end;
}

bool uhmm_spanset_intersects(const struct uhmm_spanset *s, uint64_t start, uint64_t end)
{
	size_t i = spanset_find(s, start);

	return i < s->n && s->v[i].start < end;
}

static int spanset_reserve(struct uhmm_spanset *s, size_t extra)
{
	struct uhmm_span *v;
	size_t cap;

	if (s->n + extra <= s->cap)
		return 0;
	cap = s->cap ? s->cap * 2 : 16;
	while (cap < s->n + extra)
		cap *= 2;
	v = uhmm_krealloc(s->v, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	s->v = v;
	s->cap = cap;
	return 0;
}

int uhmm_spanset_add(struct uhmm_spanset *s, uint64_t start, uint64_t end)
{
	size_t i, j;

	if (spanset_reserve(s, 1))
		return -ENOMEM;
	/* Merge with every span that overlaps or touches [start, end). */
	i = spanset_find(s, start ? start - 1 : 0);
	for (j = i; j < s->n && s->v[j].start <= end; j++) {
		start = s->v[j].start < start ? s->v[j].start : start;
		end = s->v[j].end > end ? s->v[j].end : end;
	}
	if (j == i) {
		memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(*s->v));
		s->n++;
	} else if (j > i + 1) {
		memmove(&s->v[i + 1], &s->v[j], (s->n - j) * sizeof(*s->v));
		s->n -= j - i - 1;
	}
	s->v[i].start = start;
	s->v[i].end = end;
	return 0;
}

int uhmm_spanset_remove(struct uhmm_spanset *s, uint64_t start, uint64_t end)
{
	size_t i, j;

	if (s->n == 0)
		return 0;
	i = spanset_find(s, start);
	if (i < s->n && s->v[i].start < start && s->v[i].end > end) {
		/* Punching a hole splits one span in two. */
		if (spanset_reserve(s, 1))
			return -ENOMEM;
		memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(*s->v));
		s->n++;
		s->v[i].end = start;
		s->v[i + 1].start = end;
		return 0;
	}
	if (i < s->n && s->v[i].start < start) {
		s->v[i].end = start;	/* trim the span that straddles @start */
		i++;
	}
	for (j = i; j < s->n && s->v[j].end <= end; j++)
		;			/* spans wholly inside: dropped */
	if (j < s->n && s->v[j].start < end)
		s->v[j].start = end;	/* trim the span that straddles @end */
	memmove(&s->v[i], &s->v[j], (s->n - j) * sizeof(*s->v));
	s->n -= j - i;
	return 0;
}

/*
 * Move what @s holds of [from, from + len) to @to (an mremap() moving a
 * range's marks with its page table; the two ranges do not overlap, as
 * mremap()'s do not). Added at @to before removed at @from: on -ENOMEM
 * the set may hold a mark at both places, never at neither.
 */
int uhmm_spanset_move(struct uhmm_spanset *s, uint64_t from, uint64_t to, uint64_t len)
{
	struct uhmm_spanset moved = { 0 };
	int ret = 0;

	for (size_t i = 0; i < s->n && !ret; i++) {
		uint64_t a = s->v[i].start > from ? s->v[i].start : from;
		uint64_t b = s->v[i].end < from + len ? s->v[i].end : from + len;

		if (a < b)
			ret = uhmm_spanset_add(&moved, a - from + to, b - from + to);
	}
	for (size_t i = 0; i < moved.n && !ret; i++)
		ret = uhmm_spanset_add(s, moved.v[i].start, moved.v[i].end);
	if (!ret && moved.n)
		ret = uhmm_spanset_remove(s, from, from + len);
	uhmm_spanset_free(&moved);
	return ret;
}

void uhmm_spanset_free(struct uhmm_spanset *s)
{
	uhmm_kfree(s->v);
	memset(s, 0, sizeof(*s));
}

/* The first part of [start, end) not in @s: true and [*gs, *ge), or false. */
bool uhmm_spanset_next_gap(const struct uhmm_spanset *s, uint64_t start, uint64_t end,
			   uint64_t *gs, uint64_t *ge)
{
	size_t i = spanset_find(s, start);

	while (start < end && i < s->n && s->v[i].start <= start) {
		start = s->v[i].end;
		i++;
	}
	if (start >= end)
		return false;
	*gs = start;
	*ge = i < s->n && s->v[i].start < end ? s->v[i].start : end;
	return true;
}
