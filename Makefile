# oxvirt — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
GUEST := build/guest
GUEST_INPUTS := guest/build.sh guest/init $(wildcard guest/*.script)
NEXTEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all deps build build-debug guest demo test bench lint clean

all: build

## Installs the Debian packages oxvirt needs (only the missing ones).
deps:
	@scripts/install-deps.sh

## Builds oxvirtd and oxvirt in release mode.
build: deps
	cargo build --release --workspace --bins

build-debug: deps
	cargo build --workspace --bins

## Builds the reference guest (kernel, initramfs, bootable disk) into build/guest.
guest: deps $(GUEST)/.built

$(GUEST)/.built: $(GUEST_INPUTS)
	guest/build.sh $(GUEST)
	@touch $@

## Starts oxvirtd on ./demo-data and boots a demo VM; Ctrl-C stops both.
demo: build guest
	scripts/demo.sh

## The whole test suite: unit tests and end-to-end tests with real QEMU guests.
test: build-debug guest
ifeq ($(NEXTEST),yes)
	cargo nextest run --workspace --no-fail-fast
else
	cargo test --workspace --no-fail-fast
endif

## Benchmarks: start overhead, API create rate, list time, daemon memory.
bench: build guest
	target/release/oxvirt-bench

## fmt + clippy with warnings denied.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf build demo-data
