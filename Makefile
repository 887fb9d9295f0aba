# The README's two commands: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck pytest bench fuzz soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy envelope relay controller_vault

# A private base temp dir per run: pytest keeps only the newest three runs under the
# shared default, so concurrent runs on one machine would delete each other's files.
pytest: $(STAMP)
	d=$$(mktemp -d /tmp/cr-pytest.XXXXXX); $(VENV)/bin/pytest --basetemp="$$d"; rc=$$?; \
	rm -rf "$$d"; exit $$rc

demo: $(STAMP)
	$(PY) examples/demo.py

# The relay runs on uvloop when installed (the `fast` extra, as deploy/install-relay.sh
# installs it); the baselines then run on uvloop too (bench/servers.py), and py-spy for
# bench/profile_relay.py comes with the `bench` extra.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench,fast]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/run_all.py

# Each atheris target for FUZZ_SECONDS (CI runs them for 10 s inside `make test`).
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	for t in envelope frames receipts export_name; do \
		$(PY) -m fuzz.launcher $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

# The full proofs: 500 random SIGKILLs of the vault/relay (CI runs 30) and invariant 1
# at 200 engagements. SOAK_SEED=N repeats a run (the seed is printed).
SOAK_KILLS ?= 500
soak: $(STAMP)
	SOAK_KILLS=$(SOAK_KILLS) PROOF_ENGAGEMENTS=200 $(VENV)/bin/pytest -s -p no:cacheprovider \
		tests/proofs/test_proofs_soak.py tests/proofs/test_proofs_no_personal_data.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
