#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Whole-system benchmark: loopback churn under tcpstate (record, trace, trace
# -o json, serve), empty programs on the same tracepoints (scripts/hookfloor,
# the floor), 32-byte records from them (hookfloor -emit, the least a tracer of
# the same events does), libbpf-tools tcpstates and a bpftrace one-liner,
# interleaved; then
# memory with 100,000 live sockets and start-up time. As root; installs the
# peers from Debian's packages and mounts tracefs when missing.
#
#   scripts/bench.sh [-rounds 5] [-d 5s] [-modes "tcpstate trace,bpftrace one-liner"] [-hold 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }

missing=()
command -v tcpstates >/dev/null || missing+=(libbpf-tools)
command -v bpftrace >/dev/null || missing+=(bpftrace)
if [ ${#missing[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# tcpstates and bpftrace attach classic tracepoints through tracefs.
if ! mountpoint -q /sys/kernel/tracing; then
	mount -t tracefs nodev /sys/kernel/tracing
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/tcpstate" ./cmd/tcpstate
go build -o "$out/churn" ./scripts/churn
go build -o "$out/hookfloor" ./scripts/hookfloor
go run ./scripts/bench -tcpstate "$out/tcpstate" -churn "$out/churn" -hookfloor "$out/hookfloor" "$@"
