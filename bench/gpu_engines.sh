#!/usr/bin/env bash
# Scale-out engines on a GPU machine (issue 15): bench/gpu_engines.py under each configs/accelerate/*.yaml, one GPU
# and all GPUs where there are several. It prints per run the optimizer steps, the losses and the checks (update vs
# one process, losses vs DDP, resume, reload) and exits 1 when one fails. 8 launches on one GPU (4 engines x 2
# models), each mostly process start-up: expect 4-8 minutes; under a 10-minute limit per command, run
# `--models tiny` and `--models smollm2` as two commands.
#
# The GPU image has torch, transformers, accelerate, peft and tokenizers, but neither datasets nor deepspeed, and
# no network. On a machine with PyPI, in the repository root, first:
#     echo /.whl/ >> .git/info/exclude; bash bench/gpu_engines.sh wheels      # -> .whl/ (a few MB)
# then on the GPU machine, with .whl carried (device tool: carry [".whl"]), e.g.
#     set -o pipefail; bash bench/gpu_engines.sh 2>&1 | tee $OUT/gpu_engines.log; cp /tmp/llmrl_gpu_engines/*.json $OUT
# (flags: --engines ddp fsdp2 ds_zero2 ds_zero3 --models tiny smollm2 --out DIR; the run directories stay in DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if [ "${1:-}" = wheels ]; then
  mkdir -p "$WHEELS"
  # pure-Python or cp312 manylinux wheels (the GPU image runs Python 3.12); versions as tested with llmrl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5
  "$PY" -m pip wheel -q --no-deps -w "$WHEELS" deepspeed==0.19.8  # an sdist that builds a pure-Python wheel
  ls "$WHEELS"
  exit 0
fi
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" bench/gpu_engines.py "$@"
