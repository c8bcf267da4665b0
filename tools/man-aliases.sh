#!/bin/sh
# SPDX-License-Identifier: MIT
# The names a man page documents besides its own (its NAME section, before
# the "\-"): one per line, so that `man uhmm_migrate_vma_pages` finds
# uhmm_migrate_vma_setup(3). Used by make install/uninstall.
page=$(basename "$1" | sed 's/\.[0-9]$//')
sed -n '/^\.SH NAME/,/\\-/p' "$1" | sed -e '1d' -e 's/\\-.*//' | tr ',' '\n' |
	sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' | grep -v '^$' | grep -vx "$page"
