#!/usr/bin/env bash
# make conformance: every scenario of the kernel's HMM self-test (and the
# rules of CONFORMANCE.md section 3), what the kernel does, and what uhmm
# does here, one line each, from one run of the test suite in its three
# modes. Usage: tools/conformance.sh BUILD_DIR
set -uo pipefail
build=${1:-build}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$build/uhmm-tests" --mode all > "$out" 2>&1

# scenario | test name in uhmm (- if none yet) | what the kernel's suite expects
table=$(cat <<'T'
open_close|open_close|open and close a device instance
anon_read|anon_read|READ of private anon memory (2 untouched pages read as the zero page, rest filled, read-only): all pages, one fault, data matches
anon_read_prot|anon_read_prot|PROT_NONE: READ is -EFAULT, neither buffer changes
anon_write|anon_write|WRITE fills private anon memory: all pages, one fault
anon_write_prot|anon_write_prot|read-only: WRITE is -EPERM, memory untouched; after mprotect RW it succeeds
anon_write_child|anon_write_child|after fork, with and without migration and THP: the child sees the parent's data, writes through its own instance; the parent's copy is unchanged
anon_write_child_shared|anon_write_child_shared|MAP_SHARED: the child's device write is seen by the parent
anon_write_huge|anon_write_huge|2 MiB aligned THP region: WRITE ok
anon_write_hugetlbfs|anon_write_hugetlbfs|hugetlb region: WRITE ok
file_read|file_read|MAP_SHARED file: the device reads the file's data
file_write|file_write|MAP_SHARED file: the device's write reaches the file
migrate|migrate|MIGRATE_TO_DEV of 4 MiB: all pages, data matches
migrate_file_private|migrate_file_private|private file mapping written by the CPU migrates
migrate_fault|migrate_fault|migrate, CPU reads half back, migrate again: all pages, data intact
migrate_release|migrate_release|migrate, RELEASE, CPU reads: data intact
migrate_shared|migrate_shared|MAP_SHARED anon: MIGRATE_TO_DEV is -ENOENT
migrate_multiple|migrate_multiple|ten rounds of migrate and CPU read-back
exclusive|exclusive|EXCLUSIVE, CPU increments every int (revoking), CHECK_EXCLUSIVE is 0
exclusive_mprotect|exclusive_mprotect|EXCLUSIVE, mprotect read-only, WRITE is -EPERM
exclusive_cow|exclusive_cow|EXCLUSIVE, fork: copy-on-write keeps both sides right
compound|compound|hugetlb: snapshot WRITE|PMD everywhere, READ|PMD after mprotect
migrate_anon_huge_empty|migrate_anon_huge_empty|an empty THP region migrates as one unit and back
migrate_anon_huge_zero|migrate_anon_huge_zero|a huge-zero-page region migrates as one unit and back
migrate_anon_huge_free|migrate_anon_huge_free|MADV_FREE after a THP migrated
migrate_anon_huge_fault|migrate_anon_huge_fault|a filled THP migrates and faults back as one unit; MADV_COLLAPSE makes it a THP again, and it migrates whole again
migrate_anon_huge_err|migrate_anon_huge_err|device cannot allocate a huge page (FAIL_ALLOC): falls back to base pages both ways
migrate_anon_huge_zero_err|migrate_anon_huge_zero_err|huge zero page, FAIL_ALLOC: base pages, zeros
huge: device snapshot|migrate_anon_huge_snapshot|a THP migrated whole mirrors as one PMD-order device mapping; after one page goes, as 4 KiB pages
huge: partial munmap|migrate_anon_huge_partial_unmap|munmap of half a device-resident THP keeps the other half's data
huge: mremap|migrate_anon_huge_remap|mremap of a device-resident THP to a 2 MiB boundary: still one unit, data intact
huge: mremap unaligned|migrate_anon_huge_remap_unaligned|mremap to an unaligned address: every byte intact
benchmark_thp_migration|bench|throughput both ways, 512 KiB .. 256 MiB, with and without THP
rule 3: munmap|invalidate_munmap|munmap drops the device mappings first
rule 3: madvise|invalidate_madvise_dontneed|madvise(DONTNEED/FREE) drops the device mappings first
rule 3: mremap|invalidate_mremap|mremap drops the device mappings first
rule 3: fork|invalidate_fork|fork (copy-on-write) takes the device's write access away
rule 3: mprotect|invalidate_mprotect|mprotect that removes a permission drops the mappings
rule 5: syscall access|migrate_syscall_access|a system call on a device-resident buffer migrates it back
rule 6: foreign device|migrate_foreign_device_faults_back|device B faulting device A's page brings it back
rule 9: poison|migrate_back_failure_poisons|a page the device cannot return is SIGBUS, never zeros
snapshot mix|snapshot_mixed|SNAPSHOT of no VMA, PROT_NONE, zero, read-only, read-write, untouched, this device's, another's, another's exclusive, this device's read-only pages gives CONFORMANCE.md's bytes
T
)

result() {	# test name, mode -> PASS / FAIL / SKIP / -
	local r
	r=$(awk -v t="$1" -v m="$2" '($1 == "PASS" || $1 == "FAIL" || $1 == "SKIP") && $2 == m && $3 == t { print $1 }' "$out" | tail -n 1)
	echo "${r:--}"
}

printf '%-26s %-8s %-8s %-8s  %s\n' scenario fast fallback user "kernel expectation"
printf '%-26s %-8s %-8s %-8s  %s\n' -------- ---- -------- ---- ------------------
pass=0 missing=0 other=0
while IFS='|' read -r scenario test expect; do
	if [ "$test" = bench ]; then	# a measurement, not a test: docs/performance.md
		printf '%-26s %-26s  %s\n' "$scenario" "uhmm bench --thp" "$expect"
		continue
	fi
	if [ "$test" = - ]; then
		printf '%-26s %-26s  %s\n' "$scenario" "not yet (issue #4)" "$expect"
		missing=$((missing + 1))
		continue
	fi
	f=$(result "$test" fast) b=$(result "$test" fallback) u=$(result "$test" user)
	printf '%-26s %-8s %-8s %-8s  %s\n' "$scenario" "$f" "$b" "$u" "$expect"
	if [ "$f$b$u" = PASSPASSPASS ]; then pass=$((pass + 1)); else other=$((other + 1)); fi
done <<< "$table"
echo
echo "conformance: $pass scenarios pass in every mode, $other otherwise (skip: the machine lacks it), $missing not yet implemented"
grep -q '^FAIL' "$out" && { echo "conformance: the suite had failures:"; grep '^FAIL' "$out"; exit 1; }
exit 0
