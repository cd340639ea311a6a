#!/usr/bin/env bash
# Every GPU check in one run, for a session that has a CUDA machine (e.g. the device tool):
# the CUDA tests, the GPU benchmarks, and timed examples. Writes logs to ${OUT:-gpu-check}/.
# Needs torch (CUDA), safetensors, huggingface-hub, pillow, tqdm and pytest on that machine (bring
# wheels if it has no network); this package is used from src/ without installing it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -m cuda tests 2>&1 | tee "$out/cuda-tests.txt"
python benchmarks/bench_loss.py --gpu-defaults --compile --fidelity 2>&1 | tee "$out/bench_loss.txt"
python benchmarks/bench_memory.py --device cuda --batch 1 --crop 256 2>&1 | tee "$out/bench_memory_b1.txt"
python benchmarks/bench_memory.py --device cuda --batch 16 --crop 256 2>&1 | tee "$out/bench_memory_b16.txt"
python benchmarks/bench_compact.py --device cuda 2>&1 | tee "$out/bench_compact.txt"
python benchmarks/bench_pretrain.py --paper --device cuda --batch-size 16 --crop 256 --amp bf16 2>&1 \
  | tee "$out/bench_pretrain.txt"
python benchmarks/bench_data.py --files 1000 --no-pretrain-check 2>&1 | tee "$out/bench_data.txt"
{ time python examples/quickstart.py --out "$out/quickstart.png"; } 2>&1 | tee "$out/quickstart.txt"
{ time python examples/train_esrgan.py --smoke --out "$out/esrgan"; } 2>&1 | tail -5 | tee "$out/esrgan.txt"
