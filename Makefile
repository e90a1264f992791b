# SPDX-License-Identifier: Apache-2.0
GO ?= go

.PHONY: build generate headers test bench lint ci vmtest

build:
	$(GO) build -o tcpstate ./cmd/tcpstate

# Needs clang and llvm (apt-get install -y clang llvm); the result is committed.
generate:
	$(GO) generate ./tracer

# Needs bpftool and libbpf-dev; rewrites bpf/headers from this kernel's BTF.
headers:
	scripts/update-headers.sh

test:
	$(GO) test -count=1 ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

ci:
	bash .ci/run

# The kernel tests on Debian's 5.10, 6.1 and 6.12 kernels in qemu (as root).
vmtest:
	$(GO) run ./scripts/vmtest -j 2
