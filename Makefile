# The two set-up commands of the README. Both create or reuse .venv/ (scripts/setup_venv.sh).
.PHONY: setup demo test test-all

setup:
	@bash scripts/setup_venv.sh

# Main job on the embedded default teacher: synthesize a small labelled set + an overlay grid PNG.
demo: setup
	.venv/bin/labelgen demo --out demo_out

# The test suite CI runs (slow tests excluded; `make test-all` runs them too).
test: setup
	@bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -m "not slow" -q

test-all: setup
	@bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -q
