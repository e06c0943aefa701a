# fcgi-shim: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
PREFIX ?= $(HOME)/.local
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)

.PHONY: all build test lint check install demo fuzz fuzz-check clean bench bench-flup bench-node bench-touch static dist

all: build

build:
	$(CARGO) build --release

# The whole suite: unit tables, integration tests against the real binary,
# and end-to-end tests through private Apache (mod_fcgid, mod_proxy_fcgi,
# mod_proxy_scgi), nginx and lighttpd instances, with real Django and Flask.
# The WSGI tests need a Python with Django, Flask and flup that Apache's
# www-data can run: scripts/test-venv.sh makes (or reuses) it under /var/tmp.
test:
	py="$$(./scripts/test-venv.sh)" && FCGI_SHIM_TEST_PYTHON="$$py" $(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

check: lint test

install: build
	install -d $(PREFIX)/bin
	install -m 0755 target/release/fcgi-shim $(PREFIX)/bin/fcgi-shim

# The static executable for hosts with an old glibc (CentOS 7's 2.17 and up)
# and no Rust toolchain: glibc linked in (+crt-static), as a plain static
# EXEC (relocation-model=static: no PT_INTERP, no dynamic section, `ldd` says
# "not a dynamic executable"; a static-pie would still have a dynamic
# section). GNU ld (linker-features=-lld) because it warns about glibc
# functions that need NSS shared libraries at run time ("Using 'getaddrinfo'
# in statically linked applications requires ..."), which rust-lld does not;
# -D linker-messages makes such a warning a build error (both options are
# stable since Rust 1.90, which made rust-lld the default). Its own target dir,
# so the flags do not invalidate the normal build.
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static \
	-C linker-features=-lld -D linker-messages

static:
	RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release --locked --bin fcgi-shim \
		--target $(STATIC_TARGET) --target-dir target/static-build
	install -d target/static
	install -m 0755 target/static-build/$(STATIC_TARGET)/release/fcgi-shim target/static/fcgi-shim

# The tarball a shared-hosting user downloads: the static executable, the
# settings templates, the .htaccess examples and INSTALL, under one folder.
# Names sorted, owner root (0:0), modes normalized, times from the last
# commit, gzip without a timestamp: the same tree gives the same bytes.
DIST_NAME := fcgi-shim-$(VERSION)
DIST_TARBALL := target/dist/$(DIST_NAME)-x86_64-linux.tar.gz
DIST_MTIME := $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

dist: static
	rm -rf target/dist/$(DIST_NAME)
	install -d target/dist/$(DIST_NAME)
	install -m 0755 target/static/fcgi-shim target/dist/$(DIST_NAME)/fcgi-shim
	cp -R shim-templates htaccess-examples target/dist/$(DIST_NAME)/
	install -m 0644 dist/INSTALL target/dist/$(DIST_NAME)/INSTALL
	tar --sort=name --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' \
		--mtime=@$(DIST_MTIME) -I 'gzip -9n' -C target/dist -cf $(DIST_TARBALL).tmp $(DIST_NAME)
	mv $(DIST_TARBALL).tmp $(DIST_TARBALL)
	@echo "$(DIST_TARBALL)"

# Build the shim and serve a demo site through a private Apache + mod_fcgid.
demo:
	@./scripts/demo.sh || [ $$? -eq 130 ]

# The benchmark of record (not part of `make test`; about 20 minutes on 2
# cores): bench/peers.py --write (fcgi-shim vs flup, a C libfcgi responder,
# mod_wsgi, Passenger, uWSGI and gunicorn behind Apache; hello, Django, 1 MiB
# out, 1 MiB in; c=1, 4, 8; memory; touch-to-new-code; appended to
# bench/results.md), then bench-node. ARGS go to bench/peers.py, e.g. a quick
# run: make bench ARGS="--rounds 2 --seconds 2 --connections 4 --workloads hello".
bench:
	CARGO="$(CARGO)" ./bench/prepare.sh
	py="$$(./scripts/test-venv.sh)" && "$$py" bench/peers.py --write $(ARGS)
	$(MAKE) bench-node

# The older two-way benchmark: fcgi-shim vs flup (and the C responder) behind one
# private Apache + mod_fcgid, hello only, at 2, 4 and 8 connections.
# ARGS go to every run, e.g. make bench-flup ARGS="--apache lean --rounds 4".
bench-flup:
	CARGO="$(CARGO)" ./bench/wsgi-vs-flup.sh $(ARGS)

# A Node.js app through the shim (kind = "http", Apache + mod_fcgid) vs Passenger vs Apache
# mod_proxy_http, interleaved rounds (about 90 s), and, with libfcgi-dev, the C libfcgi
# responder behind the same mod_fcgid (the ceiling of any FastCGI program there).
# Needs nodejs, wrk, libapache2-mod-passenger.
# NODE_ARGS, e.g. make bench-node NODE_ARGS="--connections 8 --apache lean".
bench-node:
	CARGO="$(CARGO)" ./bench/prepare.sh
	c=target/bench/hello-libfcgi; \
	python3 bench/node-vs-peers.py $$([ -x $$c ] && echo --c-responder $$c) $(NODE_ARGS)

# What one `touch mysite.fcgi` costs (touch -> new code, the slowest request
# during the switch, imports per touch) with 1 and 4 mod_fcgid processes,
# this build against BENCH_BEFORE (built in a git worktree, BENCH_BEFORE_DIR).
BENCH_BEFORE ?= 6f71d09
BENCH_BEFORE_DIR ?= /var/tmp/fcgi-shim-bench-$(BENCH_BEFORE)
bench-touch: build
	dir=$(BENCH_BEFORE_DIR); \
	[ -d "$$dir" ] || git worktree add --detach "$$dir" $(BENCH_BEFORE); \
	(cd "$$dir" && $(CARGO) build --release -q) && \
	py="$$(./scripts/test-venv.sh)" && \
	"$$py" bench/touch.py --before "$$dir/target/release/fcgi-shim" --python "$$py" $(ARGS)

# The fuzz targets build on stable; running them needs cargo-fuzz and nightly.
fuzz-check:
	cd fuzz && $(CARGO) check

# Every fuzz target of fuzz/ for FUZZ_SECONDS each (libFuzzer's
# -max_total_time), one after the other; a crash stops it with an error and
# its input in fuzz/artifacts/<target>/. The corpus (fuzz/corpus/) is kept
# between runs. Needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly`, `cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 60

fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2; exit 1; }
	@$(CARGO) +nightly --version >/dev/null 2>&1 || { echo "make fuzz: no nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
	cd fuzz && $(CARGO) +nightly fuzz build
	set -e; cd fuzz && for target in $$($(CARGO) +nightly fuzz list); do \
		echo "make fuzz: $$target for $(FUZZ_SECONDS) s"; \
		$(CARGO) +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS); \
	done

clean:
	$(CARGO) clean
