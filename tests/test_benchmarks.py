"""The benchmark scripts run end to end (tiny sizes; their numbers are not checked, only printed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_AE = ["--num-feat", "16", "--num-block", "1", "--num-grow-ch", "8"]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_loss_prints_every_variant_ratio_and_summary():
    out = _run("bench_loss.py", *TINY_AE, "--crop", "16", "--repeats", "1", "--device", "cpu")
    assert re.search(r"measured conv peak .*fp32 \d+\.\d{3}", out)
    labels = ["naive fp32 (baseline)", "nn.L1Loss", "RRDBNet generator", "AESOPLoss fp32 (default)",
              "AESOPLoss fp32 channels_last", "AESOPLoss fp32 memory_efficient"]  # fmt: skip
    for label in labels:
        row = re.search(re.escape(label) + r".*?\s(\d+\.\d)\s+(\d+\.\d\d)\s", out)
        assert row, f"no row for {label!r} in:\n{out}"
        assert float(row.group(1)) > 0
    assert re.search(r"naive fp32 \(baseline\)\s+[\d.]+\s+1\.00\s", out)
    assert re.search(r"fastest AESOPLoss with gradient cosine >= 0\.99 .*: \d+\.\d\dx faster", out)


def test_bench_pretrain_prints_step_and_loader_rates():
    out = _run("bench_pretrain.py", "--steps", "1", "--batch-size", "2", "--crop", "32",
               "--loader-batches", "2", "--device", "cpu")  # fmt: skip
    assert re.search(r"train step: \d+\.\d\d steps/s, \d+\.\d images/s", out)
    assert re.search(r"data pipeline,\s+0 workers:\s+\d+\.\d images/s\s+\((keeps up|data-bound)\)", out)
