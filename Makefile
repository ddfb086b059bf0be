# blockbed — top-level targets.  `make demo` and `make test` are the two
# commands of the README's Quick start; each one creates or refreshes .venv,
# installs the project into it (editable), builds the guests, then runs.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all venv guests demo test test-all bench crash-long clean linux-guest test-linux fuzz

all: test

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test,pictures]'
	@touch $@

venv: $(STAMP)

guests:
	$(MAKE) -s -C guests

demo: $(STAMP) guests
	$(VENV)/bin/blockbed demo

# The CI job: everything but tests marked slow.  Must stay under 15 minutes
# on 2 cores.
test: $(STAMP) guests
	$(VPY) -m pytest -q -m "not slow" tests

# Everything, including the slow sweeps.
test-all: $(STAMP) guests
	$(VPY) -m pytest -q tests

# The large crash-consistency sweep (about 25 minutes on two cores).
crash-long: $(STAMP) guests
	$(VPY) -m pytest -q -m slow tests/test_crash_long.py

# Random qcow2 metadata damage, many more examples than `make test` runs (docs/qcow2.md).
fuzz: $(STAMP) guests
	BLOCKBED_FUZZ_EXAMPLES=500 $(VPY) -m pytest -q tests/test_qcow2_fuzz.py

# The Linux guest (docs/linux-guest.md): Debian kernel + busybox initramfs, built from
# `apt-get download`ed packages into build/linux (cached).  Needs apt-get update once.
linux-guest: $(STAMP)
	$(VPY) -m blockbed.linuxguest.build

# The Linux guest on all four controllers x {raw, qcow2}, under QEMU and under blockbed.
test-linux: linux-guest
	$(VPY) -m pytest -q -m linux tests/test_linux_guest.py tests/test_linux_crash.py

bench: $(STAMP) guests linux-guest
	@for b in benchmarks/*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

clean:
	$(MAKE) -s -C guests clean
	rm -rf .pytest_cache .hypothesis build *.egg-info
