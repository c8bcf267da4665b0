// SPDX-License-Identifier: MIT
/*
 * A page something has pinned (an io_uring registered buffer here; a device
 * copy through process_vm_writev(), O_DIRECT I/O) may be written by its
 * pinner at any time: a migration must leave it where it is, as the
 * kernel's does, or the write lands in a page the process no longer maps.
 * uhmm sees a pin only through UFFDIO_MOVE refusing the page (EBUSY);
 * without UFFDIO_MOVE it cannot, and the write is lost: the documented gap
 * (docs/architecture.md, known gaps), asserted as such below.
 */
#include <linux/io_uring.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "harness.h"

struct ring {
	int fd;
	struct io_uring_params p;
	char *sq, *cq;
	struct io_uring_sqe *sqes;
};

/* The smallest io_uring: one submission, waited for. 0, or -errno (unavailable). */
static int ring_init(struct ring *r)
{
	memset(r, 0, sizeof(*r));
	r->fd = (int)syscall(__NR_io_uring_setup, 4, &r->p);
	if (r->fd < 0)
		return -errno;
	r->sq = mmap(NULL, r->p.sq_off.array + r->p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	r->cq = mmap(NULL, r->p.cq_off.cqes + r->p.cq_entries * sizeof(struct io_uring_cqe), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, r->p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	ASSERT_TRUE(r->sq != MAP_FAILED && r->cq != MAP_FAILED && r->sqes != MAP_FAILED);
	return 0;
}

/* READ_FIXED of @len bytes of @fd into registered buffer 0 at @buf; returns the result. */
static int ring_read_fixed(struct ring *r, int fd, void *buf, unsigned int len)
{
	unsigned int *tail = (unsigned int *)(r->sq + r->p.sq_off.tail);
	unsigned int *array = (unsigned int *)(r->sq + r->p.sq_off.array);
	unsigned int mask = *(unsigned int *)(r->sq + r->p.sq_off.ring_mask), idx = *tail & mask;
	unsigned int *chead = (unsigned int *)(r->cq + r->p.cq_off.head);
	struct io_uring_cqe *cqes = (struct io_uring_cqe *)(r->cq + r->p.cq_off.cqes);
	unsigned int cmask = *(unsigned int *)(r->cq + r->p.cq_off.ring_mask);
	struct io_uring_sqe *sqe = &r->sqes[idx];
	int res;

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_READ_FIXED;
	sqe->fd = fd;
	sqe->addr = (uintptr_t)buf;
	sqe->len = len;
	sqe->buf_index = 0;
	array[idx] = idx;
	__atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
	ASSERT_EQ(syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0), 1);
	res = cqes[*chead & cmask].res;
	__atomic_store_n(chead, *chead + 1, __ATOMIC_RELEASE);
	return res;
}

TEST(migrate_pinned_page_stays)
{
	struct uhmm_dmirror *d = dmirror(0);
	char *buf = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE), *mirror = map_anon(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	char *b = malloc(PAGE);
	struct iovec iov = { buf, PAGE };
	struct uhmm_features feat;
	struct uhmm_dmirror_cmd c;
	struct ring r;
	int fd = make_tmpfile(PAGE), ret;

	fill_pattern(buf, PAGE, 1);	/* what the page holds when the migration reads it */
	fill_pattern(b, PAGE, 2);	/* what the pinner writes into it afterwards */
	ASSERT_EQ(pwrite(fd, b, PAGE, 0), (ssize_t)PAGE);
	ret = ring_init(&r);
	if (ret)
		SKIP("no io_uring here (%s): nothing to pin a page with", strerror(-ret));
	ASSERT_EQ(syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_BUFFERS, &iov, 1), 0);	/* pins */

	ret = dmcmd(d, UHMM_DMIRROR_MIGRATE_TO_DEV, buf, mirror, 1, &c);
	ASSERT_EQ(ring_read_fixed(&r, fd, buf, PAGE), (int)PAGE);	/* the pinner writes */
	ASSERT_EQ(syscall(__NR_io_uring_register, r.fd, IORING_UNREGISTER_BUFFERS, NULL, 0), 0);
	uhmm_query_features(&feat);
	if (feat.flags & UHMM_FEAT_UFFD_MOVE) {
		ASSERT_EQ(ret, -ENOENT);	/* the page stayed: not on the device */
		check_pattern(buf, PAGE, 2);	/* and the write reached it */
	} else {
		/* the documented gap: MADV_DONTNEED took the pinned page away, the write went with it */
		ASSERT_OK(ret);
		check_pattern(buf, PAGE, 1);
	}
	close(r.fd);
	close(fd);
	free(b);
	ASSERT_OK(uhmm_dmirror_close(d));
}
