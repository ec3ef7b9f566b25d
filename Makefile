# oxvirt — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
GUEST := build/guest
AGENT := build/agent-target/release/oxvirt-guest-agent
GUEST_INPUTS := guest/build.sh guest/init $(wildcard guest/*.script) $(AGENT)
NEXTEST := $(shell cargo nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all deps build build-debug guest demo test test-fast bench lint clean schemathesis fuzz

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
	AGENT=$(AGENT) guest/build.sh $(GUEST)
	@touch $@

## The guest agent, linked statically (the guest has no C library), in a target dir of its own
## (its flags differ from the workspace's).
$(AGENT): crates/oxvirt-guest-agent/Cargo.toml $(wildcard crates/oxvirt-guest-agent/src/*.rs) Cargo.lock
	CARGO_TARGET_DIR=build/agent-target cargo rustc --release --locked -p oxvirt-guest-agent \
		--bin oxvirt-guest-agent -- -C target-feature=+crt-static -C strip=symbols

## Starts oxvirtd on ./demo-data and boots a demo VM; Ctrl-C stops both.
demo: build guest
	scripts/demo.sh

## schemathesis (PyPI), pinned, in its own virtualenv: drives the API from its OpenAPI document.
SCHEMATHESIS := build/schemathesis/bin/st
schemathesis: $(SCHEMATHESIS)
$(SCHEMATHESIS):
	python3 -m venv build/schemathesis
	build/schemathesis/bin/pip install --quiet "schemathesis==3.39.16" "hypothesis==6.122.3"

## The whole test suite: unit tests and end-to-end tests with real QEMU guests.
test: build-debug guest schemathesis
ifeq ($(NEXTEST),yes)
	cargo nextest run --workspace --no-fail-fast
else
	cargo test --workspace --no-fail-fast
endif

## The fast layer alone: unit tests, the control plane on the fake hypervisor (no QEMU, no guest).
test-fast: deps
ifeq ($(NEXTEST),yes)
	cargo nextest run --workspace --exclude oxvirt-e2e
else
	cargo test --workspace --exclude oxvirt-e2e
endif

## Benchmarks: start overhead, API create rate, list time, daemon memory.
bench: build guest
	target/release/oxvirt-bench

## Fuzzes every parser that takes outside input (API bodies, user-written values, QMP lines,
## the config file),
## FUZZ_SECONDS each (default 60), with cargo-fuzz on the stable toolchain (--sanitizer none).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := api_bodies values qmp_line config openflow
fuzz:
	@cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		cargo fuzz run --sanitizer none $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

## fmt + clippy with warnings denied.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf build demo-data
