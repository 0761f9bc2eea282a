# Two commands on a fresh machine:  make quickstart   (the main job)   and   make test.
# Both create the project virtualenv (.venv) first: torch, detectron2, ttd_d2 (scripts/install.sh).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# NLTK data (stopwords, POS tagger): $NLTK_DATA if set, else ../shared/nltk_data if present,
# else $(VENV)/nltk_data (downloaded once by `make nltk-data`).
NLTK_DATA ?= $(if $(wildcard ../shared/nltk_data),$(abspath ../shared/nltk_data),$(abspath $(VENV))/nltk_data)
export NLTK_DATA
QUICKSTART_OUT ?= output/quickstart

.PHONY: install nltk-data test quickstart clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py scripts/install.sh scripts/patch_detectron2_v06.py
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	PYTHON=$(PYTHON) bash scripts/install.sh
	$(PYTHON) -m pip install -q pytest
	touch $@

nltk-data: install
	@$(PYTHON) -c "import nltk; nltk.data.find('corpora/stopwords'); nltk.data.find('taggers/averaged_perceptron_tagger_eng')" 2>/dev/null \
	  || $(PYTHON) -m nltk.downloader -d "$(NLTK_DATA)" stopwords averaged_perceptron_tagger_eng

test: nltk-data
	$(PYTHON) -m pytest tests -q

quickstart: nltk-data
	$(PYTHON) tools/quickstart.py --output-dir $(QUICKSTART_OUT)

clean:
	rm -rf $(VENV) output
