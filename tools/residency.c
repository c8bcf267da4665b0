// SPDX-License-Identifier: MIT
/*
 * uhmm residency: read a trace (uhmm trace, UHMM_TRACE) and draw, as an SVG
 * heat map, where each page that ever lived on a device was over time:
 * time runs left to right, pages (only those that were on a device, gaps
 * between them squeezed out) top to bottom, colour = system memory, device
 * N (numbered by first appearance of a pagemap owner), freed or poisoned.
 * A row that stands for several pages shows what most of them were.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uhmm.h"

#define PAGE_SHIFT 12
#define MAX_DEVICES 8
enum { ST_SYSTEM, ST_FREED, ST_POISONED, ST_DEVICE0, NSTATE = ST_DEVICE0 + MAX_DEVICES };

static const char *const colour[NSTATE] = {
	"#d0d7de", "#ffffff", "#000000", "#f28e2b", "#4e79a7", "#59a14f", "#e15759",
	"#b07aa1", "#76b7b2", "#edc948", "#9c755f",
};

struct rev {
	double ts;		/* microseconds */
	uint64_t start, n;	/* pages [start, start + n << PAGE_SHIFT) */
	int state;
};

struct span {
	uint64_t start, end;	/* bytes */
	uint64_t first;		/* index of its first page among all drawn pages */
};

struct model {
	struct rev *ev;
	size_t nev;
	char owners[MAX_DEVICES][32];
	int ndev;
	struct span *sp;
	size_t nsp;
	uint64_t npages;
};

static int owner_index(struct model *m, const char *s, size_t len)
{
	if (len >= sizeof(m->owners[0]))
		len = sizeof(m->owners[0]) - 1;
	for (int i = 0; i < m->ndev; i++)
		if (strlen(m->owners[i]) == len && memcmp(m->owners[i], s, len) == 0)
			return i;
	if (m->ndev == MAX_DEVICES)
		return MAX_DEVICES - 1;	/* the rest share the last colour */
	memcpy(m->owners[m->ndev], s, len);
	m->owners[m->ndev][len] = 0;
	return m->ndev++;
}

/* One "residency" event line -> *e; false if the line is not one. */
static bool parse_line(struct model *m, const char *line, struct rev *e)
{
	const char *ts = strstr(line, "\"ts\":"), *st = strstr(line, "\"start\":\"");
	const char *n = strstr(line, "\"pages\":"), *w = strstr(line, "\"where\":\"");
	const char *o = strstr(line, "\"owner\":\"");

	if (!strstr(line, "\"cat\":\"residency\"") || !ts || !st || !n || !w)
		return false;
	e->ts = strtod(ts + 5, NULL);
	e->start = strtoull(st + 9, NULL, 16);
	e->n = strtoull(n + 8, NULL, 10);
	w += 9;
	if (strncmp(w, "device", 6) == 0 && o) {
		o += 9;
		e->state = ST_DEVICE0 + owner_index(m, o, strcspn(o, "\""));
	} else if (strncmp(w, "poisoned", 8) == 0) {
		e->state = ST_POISONED;
	} else if (strncmp(w, "freed", 5) == 0) {
		e->state = ST_FREED;
	} else {
		e->state = ST_SYSTEM;
	}
	return e->n > 0;
}

static int cmp_ev(const void *a, const void *b)
{
	const struct rev *x = a, *y = b;

	return x->ts < y->ts ? -1 : x->ts > y->ts;
}

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static int load(struct model *m, FILE *f)
{
	char line[2048];
	size_t cap = 0;

	while (fgets(line, sizeof(line), f)) {
		struct rev e;

		if (!parse_line(m, line, &e))
			continue;
		if (m->nev == cap) {
			cap = cap ? 2 * cap : 1024;
			m->ev = realloc(m->ev, cap * sizeof(*m->ev));
			if (!m->ev)
				return -ENOMEM;
		}
		m->ev[m->nev++] = e;
	}
	qsort(m->ev, m->nev, sizeof(*m->ev), cmp_ev);
	return 0;
}

/* The pages drawn: those a device or a poisoning ever touched, gaps squeezed out. */
static int build_spans(struct model *m)
{
	size_t k = 0;

	m->sp = calloc(m->nev ? m->nev : 1, sizeof(*m->sp));
	if (!m->sp)
		return -ENOMEM;
	for (size_t i = 0; i < m->nev; i++)
		if (m->ev[i].state >= ST_POISONED)
			m->sp[k++] = (struct span){ m->ev[i].start, m->ev[i].start + (m->ev[i].n << PAGE_SHIFT), 0 };
	qsort(m->sp, k, sizeof(*m->sp), cmp_span);
	m->nsp = 0;
	for (size_t i = 0; i < k; i++) {
		struct span *last = m->nsp ? &m->sp[m->nsp - 1] : NULL;

		if (last && m->sp[i].start <= last->end) {
			if (m->sp[i].end > last->end)
				last->end = m->sp[i].end;
		} else {
			m->sp[m->nsp++] = m->sp[i];
		}
	}
	for (size_t i = 0; i < m->nsp; i++) {
		m->sp[i].first = m->npages;
		m->npages += (m->sp[i].end - m->sp[i].start) >> PAGE_SHIFT;
	}
	return 0;
}

struct grid {
	uint8_t *state;		/* per drawn page */
	uint32_t *count;	/* [row][NSTATE] */
	int rows;
};

static int row_of(const struct model *m, const struct grid *g, uint64_t page)
{
	return (int)(page * (uint64_t)g->rows / m->npages);
}

static void apply(const struct model *m, struct grid *g, const struct rev *e)
{
	uint64_t s = e->start, end = e->start + (e->n << PAGE_SHIFT);
	size_t lo = 0, hi = m->nsp;

	while (lo < hi) {	/* first span ending after s */
		size_t mid = (lo + hi) / 2;

		if (m->sp[mid].end <= s)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < m->nsp && m->sp[i].start < end; i++) {
		uint64_t a = s > m->sp[i].start ? s : m->sp[i].start, b = end < m->sp[i].end ? end : m->sp[i].end;

		for (uint64_t addr = a; addr < b; addr += 1u << PAGE_SHIFT) {
			uint64_t p = m->sp[i].first + ((addr - m->sp[i].start) >> PAGE_SHIFT);
			uint32_t *c = &g->count[row_of(m, g, p) * NSTATE];

			c[g->state[p]]--;
			c[e->state]++;
			g->state[p] = (uint8_t)e->state;
		}
	}
}

static int dominant(const struct grid *g, int row)
{
	const uint32_t *c = &g->count[row * NSTATE];
	int best = 0;

	for (int s = 1; s < NSTATE; s++)
		if (c[s] > c[best])
			best = s;
	return best;
}

#define LEFT 130
#define TOP 44

static void draw(const struct model *m, struct grid *g, FILE *out, int cols)
{
	double t0 = m->ev[0].ts, t1 = m->ev[m->nev - 1].ts, dt;
	int rh = g->rows >= 400 ? 1 : 400 / g->rows, cw = 2, width = LEFT + cols * cw + 50;
	int height = TOP + g->rows * rh + 40 + 20 * ((m->ndev + 5) / 3 + 1);
	int *prev = malloc(sizeof(int) * (size_t)g->rows), *run = malloc(sizeof(int) * (size_t)g->rows);
	size_t k = 0;

	t1 = t1 > t0 ? t1 : t0 + 1;
	dt = (t1 - t0) / cols;
	fprintf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n"
		     "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
		     "<text x=\"%d\" y=\"18\" font-size=\"14\">uhmm residency: %llu pages over %.2f ms</text>\n",
		width, height, LEFT, (unsigned long long)m->npages, (t1 - t0) / 1e3);
	for (int r = 0; r < g->rows; r++)
		prev[r] = -1, run[r] = 0;
	/* columns: the state at the end of each time slice; rects merged along a row */
	for (int c = 0; c <= cols; c++) {
		while (c < cols && k < m->nev && m->ev[k].ts <= t0 + (c + 1) * dt)
			apply(m, g, &m->ev[k++]);
		for (int r = 0; r < g->rows; r++) {
			int s = c < cols ? dominant(g, r) : -2;

			if (s == prev[r])
				continue;
			if (prev[r] >= 0)
				fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n",
					LEFT + run[r] * cw, TOP + r * rh, (c - run[r]) * cw, rh, colour[prev[r]]);
			prev[r] = s;
			run[r] = c;
		}
	}
	fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#57606a\"/>\n", LEFT, TOP,
		cols * cw, g->rows * rh);
	for (int i = 0; i <= 4; i++)	/* time axis */
		fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2f ms</text>\n", LEFT + i * cols * cw / 4,
			TOP + g->rows * rh + 14, (t1 - t0) * i / 4 / 1e3);
	for (size_t i = 0, last = 0; i < m->nsp; i++) {	/* address axis: span starts */
		int y = TOP + row_of(m, g, m->sp[i].first) * rh;

		if (i && y < (int)last + 12)
			continue;
		last = (size_t)y;
		fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%#llx</text>\n", LEFT - 4, y + 9,
			(unsigned long long)m->sp[i].start);
	}
	int ly = TOP + g->rows * rh + 36, n = 0;
	const char *names[NSTATE] = { "system memory", "freed (munmap, DONTNEED)", "poisoned" };
	char dev[MAX_DEVICES][64];

	for (int d = 0; d < m->ndev; d++) {
		snprintf(dev[d], sizeof(dev[d]), "device %d (owner %s)", d, m->owners[d]);
		names[ST_DEVICE0 + d] = dev[d];
	}
	for (int s = 0; s < ST_DEVICE0 + m->ndev; s++, n++) {
		int x = LEFT + (n % 3) * 230, y = ly + (n / 3) * 20;

		fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"14\" fill=\"%s\" stroke=\"#57606a\"/>"
			     "<text x=\"%d\" y=\"%d\">%s</text>\n", x, y, colour[s], x + 20, y + 11, names[s]);
	}
	fprintf(out, "</svg>\n");
	free(prev);
	free(run);
}

static int residency_usage(FILE *f, int status)
{
	fprintf(f, "usage: uhmm residency TRACE [-o FILE.svg] [--width COLUMNS] [--rows ROWS]\n"
		   "Draws where each page that was ever on a device lived over time, from a\n"
		   "trace written by `uhmm trace` or UHMM_TRACE (default output residency.svg).\n"
		   "Exit status: 0, 1 if the trace cannot be read or has no device pages, 2 on a\n"
		   "usage error.\n");
	return status;
}

int cmd_residency(int argc, char **argv)
{
	const char *in = NULL, *outp = "residency.svg";
	int cols = 400, rows = 128, ret = 1;
	struct model m = { 0 };
	struct grid g = { 0 };
	FILE *f, *out;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
			outp = argv[++i];
		else if (strcmp(argv[i], "--width") == 0 && i + 1 < argc)
			cols = atoi(argv[++i]);
		else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc)
			rows = atoi(argv[++i]);
		else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			return residency_usage(stdout, 0);
		else if (argv[i][0] != '-' && !in)
			in = argv[i];
		else
			return residency_usage(stderr, 2);
	}
	if (!in || cols < 1 || cols > 4000 || rows < 1 || rows > 4000)
		return residency_usage(stderr, 2);
	f = fopen(in, "r");
	if (!f) {
		fprintf(stderr, "uhmm residency: %s: %s\n", in, strerror(errno));
		return 1;
	}
	if (load(&m, f) || build_spans(&m)) {
		fprintf(stderr, "uhmm residency: out of memory\n");
		goto out;
	}
	if (m.npages == 0) {
		fprintf(stderr, "uhmm residency: %s: no page was on a device in this trace\n", in);
		goto out;
	}
	g.rows = (uint64_t)rows < m.npages ? rows : (int)m.npages;
	g.state = calloc(m.npages, 1);
	g.count = calloc((size_t)g.rows * NSTATE, sizeof(*g.count));
	if (!g.state || !g.count)
		goto out;
	for (uint64_t p = 0; p < m.npages; p++)
		g.count[row_of(&m, &g, p) * NSTATE + ST_SYSTEM]++;
	out = fopen(outp, "w");
	if (!out) {
		fprintf(stderr, "uhmm residency: %s: %s\n", outp, strerror(errno));
		goto out;
	}
	draw(&m, &g, out, cols);
	ret = fclose(out) ? 1 : 0;
	if (!ret)
		fprintf(stderr, "uhmm residency: %llu pages, %d devices, %zu events -> %s\n",
			(unsigned long long)m.npages, m.ndev, m.nev, outp);
out:
	fclose(f);
	free(m.ev);
	free(m.sp);
	free(g.state);
	free(g.count);
	return ret;
}
