# Ember: `make run` boots the guest kit to a shell; `make test` runs every test.
# Both install what they need first (Debian packages, the guest kit).

CARGO ?= cargo
EMBER := target/release/ember

.PHONY: all deps guest build run test bench soak fuzz clean-guest

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

# KVM tests are #[ignore]d so that a plain `cargo test` without KVM lists
# them as ignored; here they run wherever /dev/kvm is usable.
test: guest
	@if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then \
		echo "make test: /dev/kvm is usable: running every test"; \
		$(CARGO) test --workspace -- --include-ignored; \
	elif [ "$$EMBER_REQUIRE_KVM" = 1 ]; then \
		echo "make test: /dev/kvm is not usable and EMBER_REQUIRE_KVM=1" >&2; exit 1; \
	else \
		echo "make test: /dev/kvm is not usable: KVM tests are listed as ignored" >&2; \
		$(CARGO) test --workspace; \
	fi

bench: guest build
	resources/install-deps.sh --bench
	bench/run.sh

# COUNT create -> boot -> exit cycles in one process, each VM with a disk
# (and a TAP as root): exits 1 if fds, threads or RSS do not come back.
COUNT ?= 1000
soak:
	$(CARGO) bench --bench soak -- $(COUNT)

# Every fuzz target under AddressSanitizer for FUZZ_SECONDS each
# (cargo-fuzz on nightly; resources/fuzz.sh installs cargo-fuzz).
FUZZ_SECONDS ?= 600
fuzz:
	resources/fuzz.sh $(FUZZ_SECONDS)

clean-guest:
	rm -rf target/guest
