# Postel: build, run, test, benchmark, install.
#   make run    build (release) and serve on 127.0.0.1:2525 with ./spool and ./mailboxes
#   make test   install missing test tools (as root), unit tests, then the integration tests in tests/
#   make bench  Postel, the reference Postfix (make bench-reference) and smtp-sink side by side
#   make deb    build (release) the Debian package target/debian/postel_<version>_<arch>.deb
#   make soak   30 minutes of mixed load with kills and a full disk; no message may be lost (bench/soak.py)
#   make fuzz-smoke  every fuzz target for 10 s (FUZZ_SECONDS) from its corpus (doc/fuzzing.md)

PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
CARGO ?= cargo
FUZZ_SECONDS ?= 10
PYTHON ?= python3

.PHONY: all build release run test tools unit integration bench bench-reference bench-tools fmt lint man deb deb-test \
	fuzz-smoke soak \
	install uninstall clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

run:
	$(CARGO) run --release -- serve

# The tools the integration tests drive (swaks, socat, smtp-source, mutt, dnsmasq, pytest).
tools:
	sh tests/setup-tools.sh

# Both suites run even when the first fails; the result fails if either did.
test: tools
	@status=0; \
	$(MAKE) --no-print-directory unit || status=1; \
	$(MAKE) --no-print-directory integration || status=1; \
	exit $$status

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast --no-tests=pass; \
	else \
		$(CARGO) test; \
	fi

integration: build
	$(PYTHON) -m pytest -q tests

# Installs cargo-fuzz when missing; fails on the first crash, leaving its input in fuzz/artifacts/.
fuzz-smoke:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/smoke

# Every case against Postel, the reference Postfix (when it runs) and smtp-sink, in one table;
# also bench/results/bench.csv and bench.png. BENCH_ARGS=--quick for a smoke check.
bench: release bench-tools
	$(PYTHON) bench/run.py $(BENCH_ARGS)

# 30 minutes of mixed load, kills and a full spool disk, then an account of every message (bench/soak.py; as root).
# SOAK_ARGS='--minutes 3' for a short run.
soak: release bench-tools
	$(PYTHON) bench/soak.py $(SOAK_ARGS)

# The reference Postfix on 127.0.0.1:2525 that `make bench` compares with (as root; idempotent).
bench-reference: bench-tools
	$(PYTHON) bench/reference.py $(BENCH_REFERENCE_ARGS)

# The test tools (smtp-source, smtp-sink, dnsmasq come with them) and matplotlib for the chart.
bench-tools: tools
	PYTHON=$(PYTHON) sh bench/setup-tools.sh

fmt:
	$(CARGO) fmt

# The module graph check also runs in `make test` (tests/test_module_graph.py).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(PYTHON) tests/module_graph.py

# postel.toml(5) is made from the key table in src/config.rs; a test fails when the committed page is stale.
man:
	POSTEL_UPDATE_MAN=1 $(CARGO) test --test man_pages

# The Debian package, laid out and built with dpkg-deb by debian/build-deb.
deb: release
	sh debian/build-deb

# lintian on the package, then the test that installs it into a fresh Debian root (tests/test_package.py).
deb-test: deb
	POSTEL_DEB="$$(ls target/debian/postel_*.deb | tail -n 1)" $(PYTHON) -m pytest -q -rs tests/test_package.py

# sendmail, mailq and newaliases are the same binary under other names (it looks at argv[0]).
install: release
	install -d $(DESTDIR)$(SBINDIR)
	install -m 755 target/release/postel $(DESTDIR)$(SBINDIR)/postel
	ln -sf postel $(DESTDIR)$(SBINDIR)/sendmail
	ln -sf postel $(DESTDIR)$(SBINDIR)/mailq
	ln -sf postel $(DESTDIR)$(SBINDIR)/newaliases
	install -d $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 644 doc/man/postel.8 $(DESTDIR)$(MANDIR)/man8/postel.8
	install -m 644 doc/man/postel.toml.5 $(DESTDIR)$(MANDIR)/man5/postel.toml.5

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/postel $(DESTDIR)$(SBINDIR)/sendmail $(DESTDIR)$(SBINDIR)/mailq \
		$(DESTDIR)$(SBINDIR)/newaliases $(DESTDIR)$(MANDIR)/man8/postel.8 $(DESTDIR)$(MANDIR)/man5/postel.toml.5

# Build output and test caches only; ./spool and ./mailboxes may hold mail and stay.
clean:
	$(CARGO) clean
	rm -rf .pytest_cache tests/__pycache__ bench/__pycache__
