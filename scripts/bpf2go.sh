#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Runs bpf2go (arguments as for bpf2go) into a temporary directory and moves
# the results into the current directory only when every target compiled.
# bpf2go removes its old outputs before compiling, so a failed run in place
# (no clang, a compile error) would leave the checkout without the committed
# objects that `go build` needs.
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go tool bpf2go -output-dir "$out" "$@"
mv -f "$out"/* .
