# Ember: `make run` boots the guest kit to a shell; `make test` runs every test.
# Both install what they need first (Debian packages, the guest kit).

CARGO ?= cargo
EMBER := target/release/ember

.PHONY: all deps guest build run test bench clean-guest

all: build

deps:
	resources/install-deps.sh

guest: deps
	resources/build-kernel.sh
	resources/build-initramfs.sh

build:
	$(CARGO) build --release

run: guest build
	$(EMBER) run --cpus 2

test: guest
	$(CARGO) test --workspace

bench: guest build
	resources/install-deps.sh --bench
	bench/run.sh

clean-guest:
	rm -rf target/guest
