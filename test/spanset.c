// SPDX-License-Identifier: MIT
/* The sorted span set (src/spanset.c): moving what it holds of a range, as mremap() moves marks. */
#include "harness.h"
#include "../src/internal.h"

static void expect_spans(const struct uhmm_spanset *s, const uint64_t (*want)[2], size_t n)
{
	ASSERT_EQ(s->n, n);
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(s->v[i].start, want[i][0]);
		ASSERT_EQ(s->v[i].end, want[i][1]);
	}
}

/*
 * [0x1000, 0x3000) and [0x5000, 0x6000) in a set that also holds
 * [0x9000, 0xa000): moving [0x2000, 0x5800) to 0x20000 takes the part of
 * each span inside the range there, keeps what is outside, and leaves
 * the span beyond the range alone. A range holding nothing moves nothing.
 */
TEST(spanset_move_takes_what_is_inside_the_range)
{
	struct uhmm_spanset s = { 0 };
	static const uint64_t after[][2] = {
		{ 0x1000, 0x2000 }, { 0x5800, 0x6000 }, { 0x9000, 0xa000 },
		{ 0x20000, 0x21000 }, { 0x23000, 0x23800 },
	};

	ASSERT_OK(uhmm_spanset_add(&s, 0x1000, 0x3000));
	ASSERT_OK(uhmm_spanset_add(&s, 0x5000, 0x6000));
	ASSERT_OK(uhmm_spanset_add(&s, 0x9000, 0xa000));
	ASSERT_OK(uhmm_spanset_move(&s, 0x2000, 0x20000, 0x3800));
	expect_spans(&s, after, 5);
	ASSERT_OK(uhmm_spanset_move(&s, 0x30000, 0x40000, 0x1000));	/* nothing there */
	expect_spans(&s, after, 5);
	uhmm_spanset_free(&s);
}
