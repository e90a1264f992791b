// SPDX-License-Identifier: Apache-2.0

package tracer

// The generated files are committed so that `go build` needs no clang; CI
// regenerates them and fails on any difference. scripts/bpf2go.sh runs
// `go tool bpf2go` with these arguments into a temporary directory, so that a
// failed compile leaves the committed files in place.
//go:generate ../scripts/bpf2go.sh -tags linux -target amd64,arm64 -type event -type addr_key -type stat_index -type owner_src -type event_type -type event_flag -type port_side -type close_reason -type iter_rec -type ka_event -type ka_src tcpstate ../bpf/tcpstate.bpf.c -- -I../bpf/headers -I../bpf -Wall -Werror
