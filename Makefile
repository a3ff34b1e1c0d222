# Every target creates .venv when missing: torch==2.13.0 first (a local CPU build here), then the package.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint browser bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q torch==2.13.0
	@$(PY) -m pip install -q -e '.[dev,app]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/causal-sprites demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

# The browser tests drive Debian's Chromium (Playwright's own download does not work here): install
# it when it is missing and we are root (CI is); otherwise those tests skip and say why.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	  || echo "WARNING: apt-get could not install chromium: the browser tests will skip"; \
	else echo "NOTE: $(CHROMIUM) is missing and installing it needs root: the browser tests will skip"; fi

test: lint browser
	$(PY) -m pytest -q -n auto --dist loadfile

# The benchmarks of BENCHMARKS.md (about 35 minutes on 2 cores).
bench: $(STAMP)
	$(PY) bench/data.py
	$(PY) bench/train.py --minutes 10 --side-by-side --fp32-too
	$(PY) bench/counterfactual.py
	$(PY) bench/causal.py
	$(PY) bench/distribution_speed.py
	$(PY) bench/inference.py
	$(PY) bench/decoder.py
	$(PY) bench/app.py

clean:
	rm -rf $(VENV) build *.egg-info
