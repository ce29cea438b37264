# The two commands a newcomer needs: `make dev` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PORT ?= 8787
# Local R2 state for `make dev` (tests use their own temporary directories).
DEV_STATE ?= .dev-state
export WRANGLER_SEND_METRICS := false
export PATH := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)

WRANGLER := node_modules/.bin/wrangler
SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock .cargo/config.toml scripts/build.sh

.PHONY: setup build dev seed test lint unit unit-wasm bundle-size e2e python-test smoke dry-run bench token clean

## setup: install whatever is missing (idempotent; seconds when everything is present)
setup:
	@bash scripts/setup.sh

## build: release bundle in build/ (skipped when newer than every source)
build: build/index.js
build/index.js: $(SOURCES)
	@bash scripts/build.sh

## seed: write the demo database for user `a` into local R2
seed: setup
	@cargo run -q --release --example make_db -- demo target/demo.sqlite
	@$(WRANGLER) r2 object put reel-ballers-users/a/database.sqlite --file target/demo.sqlite \
		--local --persist-to $(DEV_STATE) >/dev/null
	@# A reset, not an outside write: drop every manifest slot an earlier run left, so the demo
	@# file is the whole database again (its old deltas are orphans the sweep removes later).
	@for key in manifest.json manifest-1.json manifest-2.json manifest-3.json manifest-4.json; do \
		$(WRANGLER) r2 object delete reel-ballers-users/a/$$key \
			--local --persist-to $(DEV_STATE) >/dev/null; done
	@echo "seeded user 'a' in $(DEV_STATE)"

## dev: serve the worker on 127.0.0.1:$(PORT) with local R2 seeded with the demo database
dev: setup build seed
	$(WRANGLER) dev --ip 127.0.0.1 --port $(PORT) --persist-to $(DEV_STATE) --var ALLOW_ANONYMOUS:true

## test: every check CI runs
test: setup lint unit unit-wasm build bundle-size dry-run e2e python-test

lint:
	cargo fmt --check
	cargo clippy --all-targets --locked --features e2e -- -D warnings
	cargo clippy --all-targets --locked --target wasm32-unknown-unknown -- -D warnings
	@# The worker as deployed: without the `testing` feature the test targets turn on.
	cargo clippy --lib --locked --target wasm32-unknown-unknown -- -D warnings

unit:
	cargo test --locked

## unit-wasm: the unit tests, the pipeline scenarios and the incremental-layout suite on wasm32, under Node, against the Worker's SQLite build
unit-wasm:
	cargo test --locked --lib --test pipeline --test incremental --test upload --test admission --target wasm32-unknown-unknown

## bundle-size: fail if the gzipped bundle grew past scripts/bundle-budget (a size check, not timing)
bundle-size: build
	@bash scripts/bundle_size.sh

## dry-run: validate the release bundle as `wrangler deploy` would, and print its size
dry-run: build
	@rm -rf target/dry-run
	@$(WRANGLER) deploy --dry-run --outdir target/dry-run 2>&1 | grep -E "Total Upload|--dry-run|rror"

## e2e: end-to-end tests against the real workerd (each test starts its own wrangler dev).
## One at a time: with wrangler 4.86 an instance starting while another stops sometimes fails to start.
e2e: build
	cargo test --locked --features e2e --test e2e -- --test-threads 1

## python-test: the Python package (python/) against the real workerd, and against the worker's Rust bands
python-test: setup build
	.venv/bin/python -m pytest -q python/tests

## smoke: check the JSON contract against BASE_URL (a running `make dev`, or a deployed worker)
smoke: setup
	@bash scripts/smoke.sh $(BASE_URL)

## bench: native CPU benchmark, the end-to-end benchmark (URL=https://... for a deployed worker), single vs incremental layouts side by side (local), then under the R2 model: one user's write rate, and reads and writes by size
bench: setup build
	cargo bench --locked --bench sqlite_ops
	cargo bench --locked --features e2e --bench e2e $(if $(URL),-- --url $(URL))
	cargo bench --locked --features e2e --bench layouts
	cargo bench --locked --features e2e --bench write_rate
	cargo bench --locked --features e2e --bench by_size
	cargo bench --locked --features e2e --bench soak

## token: TOKEN_SECRET=... make token USER=a [TTL=3600] prints a per-user token
token:
	@$(if $(filter command line,$(origin USER)),,echo "usage: TOKEN_SECRET=... make token USER=<id> [TTL=3600]" >&2; exit 2)
	@cargo run -q --release --example token -- $(USER) $(or $(TTL),3600)

clean:
	rm -rf build target/dry-run $(DEV_STATE)
