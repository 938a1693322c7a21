#!/usr/bin/env bash
# GPU check (issue 16): on a machine with CUDA, train, embed and verify the full-width built-in ResNet-18 on the
# GPU through bench/resnet.py (Fashion-MNIST as 3x32x32 from a memmap folder, plus the 1x/10x peak-RSS row),
# then serve it, printing the times and ratios. On a machine without CUDA it says so and exits 0.
#
# From a fresh clone (two commands):
#     make venv
#     bash bench/gpu_check.sh
#
# Budget: about 8 minutes (each step below has its own timeout). It prints; it writes nothing into docs/.
# Needs shared/data/fashion_mnist.npz beside the checkout (or $TRACEMARK_DATA_DIR), as the CPU benchmarks do.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "gpu_check: no $PY; run 'make venv' first (or set PYTHON=/path/to/python)" >&2
    exit 1
fi

no_cuda="gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing checked, exiting 0"
# no NVIDIA driver at all: say so without paying for a torch import
if [ ! -e /proc/driver/nvidia/version ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "$no_cuda"
    exit 0
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "$no_cuda"
    exit 0
fi

"$PY" -c 'import torch; print("gpu_check: torch", torch.__version__, "on", torch.cuda.get_device_name(0))'
start=$(date +%s)

data_dir=$("$PY" -c 'from tracemark.data import shared_data_dir; print(shared_data_dir())')
if [ ! -f "$data_dir/fashion_mnist.npz" ]; then
    echo "gpu_check: no $data_dir/fashion_mnist.npz; set TRACEMARK_DATA_DIR to the folder holding it (see shared/data/README.md)" >&2
    exit 1
fi

echo "== ResNet-18 on the GPU: base training vs embedding, clean change, trigger accuracy, p at <= 100 queries; RSS 1x vs 10x"
timeout 360 "$PY" bench/resnet.py --device cuda --width 64 --train-size 60000 --test-size 10000 --epochs 2 \
    --workers 4 --batch-size 256 --rss-steps 200 --no-write \
    || echo "gpu_check: bench/resnet.py failed or ran past its 6 minutes (exit $?); see above"

echo "== serving the ResNet on the GPU (raw-tensor bodies, protected vs bare)"
if ! command -v wrk >/dev/null 2>&1; then
    echo "gpu_check: serving is not checked: bench/serving.py drives the server with wrk (apt-get install wrk)"
elif "$PY" bench/serving.py --help 2>/dev/null | grep -q -- '--device' \
        && "$PY" bench/serving.py --help 2>/dev/null | grep -q -- '--resnet'; then
    timeout 100 "$PY" bench/serving.py --resnet --device cuda --quick || echo "gpu_check: the serving check failed (see above)"
else
    echo "gpu_check: TODO serving is not checked: bench/serving.py has no --device option yet (needs --resnet --device cuda)"
fi

echo "gpu_check: done in $(( $(date +%s) - start )) s"
