# make demo: set up .venv and extract features of the bundled sample photos (offline).
# make test: set up .venv and run the test suite.
.PHONY: setup demo test bench clean

setup: .venv/.setup-done

.venv/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	.venv/bin/imgfeat extract samples/ -o features/
	.venv/bin/imgfeat info features/

test: setup
	.venv/bin/python -m pytest
	.venv-beam/bin/python -m pytest -q tests/test_beam.py

clean:
	rm -rf features/ .pytest_cache build dist
