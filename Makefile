# pve-nvidia-hook
#   make demo   the real hook against a real sandbox container (root)
#   make test   fmt, clippy and every test (the real-container ones need root)
#   make bench  what the hook costs per container start

export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
BUILDDIR := target/deb/pve-nvidia-hook-$(VERSION)
DEB := target/deb/pve-nvidia-hook_$(VERSION)_amd64.deb

.PHONY: all build release deps build-deps test-deps bench-deps lint test demo bench deb clean

all: build

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

# What each target needs, installed when missing (.ci/deps says what): `make
# deb` only what building needs, never LXC or the test tools.
build-deps:
	.ci/deps build

test-deps:
	.ci/deps test

bench-deps:
	.ci/deps bench

deps: bench-deps

lint: build-deps
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The real-container tests are #[ignore]d for a plain `cargo test`; as root
# (as in CI) they run. Without root they show as "ignored", never as passed.
E2E := $(shell [ "$$(id -u)" = 0 ] && echo --include-ignored)

# The unit tests run below: the package the package tests install is built
# without its own run of them (minutes more in the release profile).
test: export DEB_BUILD_OPTIONS += nocheck
test: lint test-deps $(if $(E2E),deb)
	@[ -n "$(E2E)" ] || echo "make test: not root, so the real-container and package tests are ignored (listed as ignored below)"
	$(CARGO) test --locked -- $(E2E)

demo: test-deps release
	tests/e2e/demo.sh

bench: bench-deps release
	bench/run.sh

# The package, built from the tracked files in a copy of the tree (as
# Proxmox's own packages are), then checked with lintian. The version comes
# from Cargo.toml; debian/changelog must agree.
deb: build-deps
	@changelog=$$(dpkg-parsechangelog -S Version); \
	[ "$$changelog" = "$(VERSION)" ] || { echo "version mismatch: Cargo.toml $(VERSION), debian/changelog $$changelog" >&2; exit 1; }
	rm -rf target/deb
	mkdir -p $(BUILDDIR)
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp -a --parents -t $(BUILDDIR)
	cd $(BUILDDIR) && dpkg-buildpackage -us -uc -b
	lintian -EvIL +pedantic --fail-on error,warning target/deb/pve-nvidia-hook_$(VERSION)_amd64.changes

clean:
	$(CARGO) clean
