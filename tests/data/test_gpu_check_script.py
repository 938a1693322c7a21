"""bench/gpu_check.sh: on a machine without CUDA it says so and exits 0 (without starting the benchmark)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run the GPU check")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing checked, exiting 0"]


def test_gpu_check_without_a_python_points_at_make_venv(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                            env={"PYTHON": str(tmp_path / "no-python"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "run 'make venv' first" in result.stderr
