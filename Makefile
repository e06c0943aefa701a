# fcgi-shim: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
PREFIX ?= $(HOME)/.local

.PHONY: all build test lint check install demo fuzz-check clean bench

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

# Build the shim and serve a demo site through a private Apache + mod_fcgid.
demo:
	@./scripts/demo.sh || [ $$? -eq 130 ]

# fcgi-shim vs flup behind the same private Apache + mod_fcgid (wrk; not part of `make test`).
# ARGS go to every run, e.g. make bench ARGS="--apache lean --rounds 4".
bench:
	./bench/wsgi-vs-flup.sh $(ARGS)

# The fuzz targets build on stable; running them needs cargo-fuzz and nightly.
fuzz-check:
	cd fuzz && $(CARGO) check

clean:
	$(CARGO) clean
