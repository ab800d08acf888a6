# The two commands of the README, plus the pieces they are made of.
.PHONY: setup demo test unit lint images qemu bench clean

setup:
	@bash scripts/setup

demo: setup
	.venv/bin/harness demo

# the whole suite: lint, unit tests, guest tests (TCG), config file checks
test: setup lint images qemu
	.venv/bin/python -m pytest -v --durations=15 $(PYTEST_ARGS)

unit: setup
	.venv/bin/python -m pytest tests/unit

lint: setup
	.venv/bin/ruff check harness tests

images: setup
	.venv/bin/harness image build minimal full

# the patched QEMU that guests asking for uintr run on (about 10 minutes cold)
qemu: setup
	.venv/bin/harness qemu build

bench: setup
	.venv/bin/harness bench boot

clean:
	-.venv/bin/harness gc --all
	rm -rf .venv results
