#!/usr/bin/env bash
# On a lent GPU machine (after bench/device_wheels.sh here, with .whl carried):
#   run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels beside the image's torch and runs bench/gpu.py (6 minutes at most);
# results land in $OUT as they come (gpu_bench.jsonl, gpu_bench_table.txt, gpu_bench.txt).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__)'
python3 bench/gpu.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_bench.txt"
