# virtnet — see README.md. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VIRTNET := $(VENV)/bin/virtnet
SEED := examples/net-eth-unmanaged-tap.xml
# Debian packages the tests drive for real: QEMU (and its bridge helper), qemu-img, passt, libvirt's
# virt-xml-validate, iproute2, setcap, nft (clean-traffic filters, networks), dnsmasq (networks).
APT_PACKAGES := qemu-system-x86 qemu-utils passt libvirt-clients libxml2-utils iproute2 libcap2-bin nftables dnsmasq-base python3-pip
APT_PROBES := /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img /usr/bin/passt /usr/bin/virt-xml-validate /usr/bin/xmllint /usr/sbin/ip /usr/sbin/setcap /usr/sbin/nft /usr/sbin/dnsmasq /usr/bin/pip3
# The tests also run a current passt (Debian 13's, built from its source package) beside Debian 12's;
# tools/build-passt.sh builds it once into $(VIRTNET_TEST_CACHE) (root only; outside the repository).
BUILD_PASST := tools/build-passt.sh
VIRTNET_TEST_CACHE ?= /var/cache/virtnet-test
export VIRTNET_TEST_CACHE

.DEFAULT_GOAL := help
.PHONY: help demo venv test-deps test regen lint conformance bench clean fuzz guest

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

# What building virtnet needs (pyproject.toml's build-system): setup.py makes the man page and the
# shell completions from the parser with shtab and argparse-manpage. Installed into the venv once, so
# installs run without build isolation (nothing downloaded again on each install).
BUILD_DEPS := 'setuptools>=61' wheel 'shtab>=1.7' 'argparse-manpage>=4'
# Stamps: virtnet is installed again only when what the install depends on changed.
INSTALLED := $(VENV)/.virtnet-installed
TEST_INSTALLED := $(VENV)/.virtnet-test-installed
INSTALL_INPUTS := setup.py setup.cfg pyproject.toml virtnet/cli.py
GENERATED := build/generated

# Debian ships `python3 -m venv` (its ensurepip) in python3.X-venv, which a fresh machine lacks.
$(PY):
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  package=$$($(PYTHON) -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])'); \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$package; \
	  else echo "make: $(PYTHON) cannot create a venv: install $$package first (sudo apt-get install $$package)" >&2; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# An editable install has no bytecode of its own; compile it once (as installing a wheel does), so
# that a start-up does not compile virtnet, even where PYTHONDONTWRITEBYTECODE is set.
COMPILE := $(PY) -m compileall -q virtnet

# An editable install leaves setup.py's data files out; its build made them, so they are copied into
# the venv where a wheel install puts them (man virtnet and completion then work in the venv).
# PYTHONWARNINGS=ignore: setuptools' notice box about editable installs, on every install.
define install_editable
	$(PY) -m pip install -q $(BUILD_DEPS)
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-build-isolation -e '$(1)'
	$(COMPILE)
	install -D -m 0644 $(GENERATED)/virtnet.1 $(VENV)/share/man/man1/virtnet.1
	install -D -m 0644 $(GENERATED)/virtnet $(VENV)/share/bash-completion/completions/virtnet
	install -D -m 0644 $(GENERATED)/_virtnet $(VENV)/share/zsh/site-functions/_virtnet
	touch $@
endef

$(INSTALLED): $(PY) $(INSTALL_INPUTS)
	$(call install_editable,.)

# With the test extras, the install `venv` makes is done as well (one install, both stamps).
$(TEST_INSTALLED): $(PY) $(INSTALL_INPUTS)
	$(call install_editable,.[test])
	touch $(INSTALLED)

venv: $(INSTALLED) ## create .venv and install virtnet editable (with bytecode, man page, completions); again only when setup or the CLI changed

demo: venv ## run virtnet xml2argv on the seed case (pre-created tap, managed='no')
	$(VIRTNET) xml2argv $(SEED)

test-deps: $(TEST_INSTALLED) ## install test needs (pip, and apt packages when root and missing)
	@missing=0; for p in $(APT_PROBES); do [ -x $$p ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	  else echo "note: not root, so not installing $(APT_PACKAGES); tests that need them skip with a reason"; fi; \
	fi
	@bash $(BUILD_PASST) > /dev/null || echo "note: the current passt was not built (reason above); the tests that run it fail and say why"

test: test-deps ## install test needs and run the test suite
	$(PY) -m pytest -n 2 -q

regen: venv ## rewrite golden expectations (then read every changed line before committing)
	VIR_TEST_REGENERATE_OUTPUT=1 $(PY) -m pytest -q tests/test_golden.py
	git status --short testdata

conformance: venv ## compare with libvirt's net test corpus (../shared/conformance/libvirt); fails on regressions
	$(PY) tools/conformance.py --baseline tests/conformance_baseline.tsv
	$(PY) tools/network_conformance.py --baseline tests/network_conformance_baseline.tsv

lint: venv ## pyflakes over the package, tests, benchmarks and tools
	$(PY) -m pip install -q pyflakes
	$(PY) -m pyflakes virtnet tests benchmarks tools

bench: test-deps ## run the benchmarks (host parts need root) and write benchmarks/results.md; BENCH_ARGS=--quick
	$(PY) benchmarks/run.py $(BENCH_ARGS)

fuzz: venv ## fuzz 100 000 mutated documents (CLI and namespace samples too); FUZZ_ARGS=--seed N replays
	$(PY) tools/fuzz.py --count 100000 --jobs $$(nproc) --cli 200 --netns 50 $(FUZZ_ARGS)

guest: ## build the tiny test guest from Debian packages (downloaded, not installed; cached), link it as guest/current and print its kernel/initrd paths
	$(PYTHON) tools/tiny-guest.py --link

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
