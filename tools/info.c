// SPDX-License-Identifier: MIT
/* uhmm info: the feature probe, for people. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "uhmm.h"
#include "../src/include/uhmm.h"

static const char *const source_names[] = {
	[UHMM_UFFD_NONE] = "none",
	[UHMM_UFFD_SYSCALL] = "userfaultfd(2)",
	[UHMM_UFFD_DEVICE] = "/dev/userfaultfd",
	[UHMM_UFFD_USER_MODE_ONLY] = "userfaultfd(UFFD_USER_MODE_ONLY)",
};

static const struct {
	uint32_t flag;
	const char *key;
	const char *what;
} feats[] = {
	{ UHMM_FEAT_UFFD, "userfaultfd", "userfaultfd" },
	{ UHMM_FEAT_UFFD_KERNEL_FAULTS, "kernel_faults", "kernel-mode accesses wait (syscalls on device pages)" },
	{ UHMM_FEAT_UFFD_EVENTS, "uffd_events", "REMOVE/UNMAP/REMAP events (invalidations)" },
	{ UHMM_FEAT_UFFD_WP, "uffd_wp", "write-protect mode (events without trapping faults)" },
	{ UHMM_FEAT_UFFD_MOVE, "uffdio_move", "UFFDIO_MOVE (zero-copy migration, 6.8+)" },
	{ UHMM_FEAT_UFFD_POISON, "uffdio_poison", "UFFDIO_POISON (SIGBUS for lost pages, 6.6+)" },
	{ UHMM_FEAT_PAGEMAP_SCAN, "pagemap_scan", "PAGEMAP_SCAN (fast snapshots, 6.7+)" },
	{ UHMM_FEAT_PROCMAP_QUERY, "procmap_query", "PROCMAP_QUERY (fast VMA lookup, 6.11+)" },
	{ UHMM_FEAT_MADV_POPULATE, "madv_populate", "MADV_POPULATE_READ/WRITE (faulting, 5.14+)" },
	{ UHMM_FEAT_PFN_VISIBLE, "pfn_visible", "physical frame numbers visible (CAP_SYS_ADMIN)" },
	{ UHMM_FEAT_KPAGEFLAGS, "kpageflags", "/proc/kpageflags readable" },
	{ UHMM_FEAT_PROCESS_VM, "process_vm", "process_vm_readv/writev (safe device access)" },
	{ UHMM_FEAT_THP, "thp", "transparent huge pages" },
	{ UHMM_FEAT_UFFD_SIGBUS, "uffd_sigbus", "UFFD_FEATURE_SIGBUS (faults served in the faulting thread)" },
	{ UHMM_FEAT_FAULTS_IN_THREAD, "faults_in_thread", "UHMM_FAULTS=thread: this process serves faults in thread" },
	{ UHMM_FEAT_FALLBACK_FORCED, "fallback_forced", "UHMM_FORCE_FALLBACK: fast paths off" },
};

static void print_json(const struct uhmm_features *f)
{
	printf("{\n  \"kernel\": \"%s\",\n  \"page_size\": %u,\n", f->kernel_release, f->page_size);
	printf("  \"uffd_source\": \"%s\",\n  \"uffd_error\": %d,\n", source_names[f->uffd_source], f->uffd_error);
	printf("  \"uffd_features\": %llu,\n  \"uffd_ioctls\": %llu,\n",
	       (unsigned long long)f->uffd_features, (unsigned long long)f->uffd_ioctls);
	printf("  \"max_map_count\": %llu,\n  \"unprivileged_userfaultfd\": %d,\n",
	       (unsigned long long)f->max_map_count, f->unprivileged_userfaultfd);
	printf("  \"thp_pmd_size\": %u,\n  \"euid\": %u,\n", f->thp_pmd_size, (unsigned)geteuid());
	for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
		printf("  \"%s\": %s%s\n", feats[i].key, (f->flags & feats[i].flag) ? "true" : "false",
		       i + 1 < sizeof(feats) / sizeof(feats[0]) ? "," : "");
	printf("}\n");
}

static void print_advice(const struct uhmm_features *f)
{
	if (!(f->flags & UHMM_FEAT_UFFD)) {
		printf("\nuhmm cannot run: no userfaultfd (%s). Build the kernel with\n"
		       "CONFIG_USERFAULTFD=y.\n", strerror(-f->uffd_error));
		return;
	}
	if (f->uffd_source == UHMM_UFFD_USER_MODE_ONLY) {
		printf("\nUnprivileged mode: only user-mode faults are handled. A system call that\n"
		       "touches a device-resident page (write(fd, buf) from it, process_vm_readv)\n"
		       "fails with EFAULT instead of migrating the page back; touch the buffer from\n"
		       "user space first or migrate it with MIGRATE_TO_SYS. To allow full mode:\n"
		       "  sysctl vm.unprivileged_userfaultfd=1   (all users), or\n"
		       "  give the user read-write access to /dev/userfaultfd (Linux 6.1+).\n");
	}
	if (f->flags & UHMM_FEAT_FAULTS_IN_THREAD)
		printf("\nFaults in the faulting thread (UHMM_FAULTS=thread): a CPU fault on a device page\n"
		       "is a SIGBUS uhmm serves on the thread that took it; a system call that touches\n"
		       "a device-resident page fails with EFAULT (uhmm(7), Fault modes).\n");
	else if (f->flags & UHMM_FEAT_UFFD_SIGBUS)
		printf("\nFaster CPU faults are available: UHMM_FAULTS=thread, or\n"
		       "uhmm_set_fault_mode(UHMM_FAULTS_IN_THREAD), serves each in the faulting thread\n"
		       "(system calls on device-resident pages then get EFAULT: uhmm(7), Fault modes).\n");
	if (!(f->flags & UHMM_FEAT_PAGEMAP_SCAN) && !(f->flags & UHMM_FEAT_FALLBACK_FORCED))
		printf("\nNo PAGEMAP_SCAN: snapshots read /proc/self/pagemap with pread (slower);\n"
		       "the zero page and THP are seen only with CAP_SYS_ADMIN.\n");
}

int cmd_info(int argc, char **argv)
{
	struct uhmm_features f;
	int json = argc > 1 && strcmp(argv[1], "--json") == 0;

	if (argc > 1 && !json) {
		fprintf(stderr, "usage: uhmm info [--json]\n");
		return 2;
	}
	uhmm_query_features(&f);
	if (json) {
		print_json(&f);
		return 0;
	}
	printf("uhmm %d.%d on Linux %s, page size %u, euid %u\n", UHMM_VERSION_MAJOR,
	       UHMM_VERSION_MINOR, f.kernel_release, f.page_size, (unsigned)geteuid());
	printf("userfaultfd source: %s\n", source_names[f.uffd_source]);
	for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
		printf("  [%s] %s\n", (f.flags & feats[i].flag) ? "x" : " ", feats[i].what);
	printf("vm.max_map_count: %llu (each registered span may split a VMA)\n",
	       (unsigned long long)f.max_map_count);
	printf("vm.unprivileged_userfaultfd: %d\n", f.unprivileged_userfaultfd);
	print_advice(&f);
	return (f.flags & UHMM_FEAT_UFFD) ? 0 : 1;
}
