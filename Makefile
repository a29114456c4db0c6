# pve-nvidia-hook
#   make demo   the real hook against a real sandbox container (root)
#   make test   fmt, clippy and every test (the real-container ones need root)
#   make bench  what the hook costs per container start

export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build release deps lint test demo bench clean

all: build

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

deps:
	.ci/deps

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The real-container tests are #[ignore]d for a plain `cargo test`; as root
# (as in CI) they run. Without root they show as "ignored", never as passed.
E2E := $(shell [ "$$(id -u)" = 0 ] && echo --include-ignored)

test: lint
	@[ -n "$(E2E)" ] || echo "make test: not root, so the real-container tests are ignored (listed as ignored below)"
	$(CARGO) test --locked -- $(E2E)

demo: deps release
	tests/e2e/demo.sh

bench: deps release
	bench/run.sh

clean:
	$(CARGO) clean
