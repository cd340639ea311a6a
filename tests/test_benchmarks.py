"""The benchmark scripts run end to end (tiny sizes; their numbers are not checked, only printed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_FLAGS

pytestmark = pytest.mark.slow  # every test here runs a script end to end

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_AE = TINY_FLAGS


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_loss_prints_every_variant_ratio_and_summary():
    out = _run("bench_loss.py", *TINY_AE, "--crop", "16", "--repeats", "1", "--device", "cpu")
    assert re.search(r"measured conv peak .*fp32 \d+\.\d{3}", out)
    labels = ["naive, PyTorch defaults (baseline)", "nn.L1Loss", "RRDBNet generator", "AESOPLoss default",
              "AESOPLoss channels_last", "AESOPLoss memory_efficient"]  # fmt: skip
    for label in labels:
        row = re.search(re.escape(label) + r".*?\s(\d+\.\d)\s+(\d+\.\d\d)\s+(\d+\.\d\d)\s", out)
        assert row, f"no row for {label!r} in:\n{out}"
        assert float(row.group(1)) > 0
    assert re.search(r"\(baseline\)\s+[\d.]+\s+1\.00\s+1\.00\s+1\.00000\s", out)
    # the default and memory_efficient compute the same gradient as the naive code
    assert re.search(r"AESOPLoss default\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(1\.00000|0\.9999\d)\s", out)
    assert re.search(r"AESOPLoss memory_efficient\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(1\.00000|0\.9999\d)\s", out)
    assert re.search(r"fastest AESOPLoss with gradient cosine >= 0\.99 .*: \d+\.\d\dx naive", out)


def test_bench_memory_measures_fresh_processes():
    out = _run("bench_memory.py", "--crop", "64", "--only", "demo-size AE (32/2/16)", "--device", "cpu")
    assert "peak RSS growth in a fresh process" in out
    row = r"demo-size AE \(32/2/16\)\s+(default|memory_efficient)\s+(-?\d+)\s+(\d+\.\d\d|nan)"
    rows = re.findall(row, out)
    assert [r[0] for r in rows] == ["default", "memory_efficient"]
    assert rows[0][2] in ("1.00", "nan")  # nan: no measurable growth at this tiny size


def test_bench_pretrain_prints_step_and_loader_rates():
    out = _run("bench_pretrain.py", "--steps", "1", "--batch-size", "2", "--crop", "32",
               "--loader-batches", "2", "--device", "cpu")  # fmt: skip
    assert re.search(r"train step: \d+\.\d\d steps/s, \d+\.\d images/s", out)
    assert re.search(r"data pipeline,\s+0 workers:\s+\d+\.\d images/s\s+\((keeps up|data-bound)\)", out)


def test_bench_compact_prints_cost_ratios_against_the_paper_ae(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # in this process: the script's main, as it runs
    import bench_compact

    args = ["--shapes", "1x32", "--repeats", "1", "--only", "compact 32/16 (demo-compact)"]
    assert bench_compact.main(args) == 0
    out = capsys.readouterr().out
    macs = re.search(r"paper AE \(rrdb 64/23/32\)\s+[\d.]+M\s+([\d.]+)M\s+1\.000", out)
    assert macs, out
    assert float(macs.group(1)) > 10  # about 19 M multiply-adds per LR pixel
    compact = re.search(r"compact 32/16 \(demo-compact\)\s+[\d.]+M\s+[\d.]+M\s+(0\.\d{3})", out)
    assert compact, out
    assert float(compact.group(1)) < 0.1
    rows = re.findall(
        r"1x32\^2\s+(paper AE|compact 32/16).*?([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M
    )
    assert [r[0] for r in rows] == ["paper AE", "compact 32/16"]
    assert rows[0][2] == "1.000"  # the baseline's own ratio


def test_bench_data_prints_startup_rates_and_peaks_per_worker_count(tmp_path):
    out = _run("bench_data.py", "--files", "16", "--formats", "png", "--size", "96x64",
               "--crop", "32", "--batch-size", "4", "--seconds", "0.3", "--step-ms", "50",
               "--no-pretrain-check", "--work", str(tmp_path))  # fmt: skip
    assert "a 50 ms step at batch 4 consumes 80 crops/s" in out
    for folder in ("png_16_96x64",):
        rows = re.findall(
            rf"{folder}\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(keeps up|data-bound)", out
        )
        assert [int(r[0]) for r in rows][:2] == [0, 2]
        assert all(float(r[1]) > 0 and float(r[2]) > 0 and int(r[4]) > 0 for r in rows)
        assert int(rows[1][5]) > 0  # the workers' peak is measured


def test_bench_guidance_smoke_prints_spreads_and_paired_intervals(tmp_path):
    record = tmp_path / "guidance.jsonl"
    out = _run("bench_guidance.py", "--smoke", "--record", str(record), "--lr-weight", "1")
    assert "2 folds x 1 seeds = 2 paired units" in out
    assert "every crop score capped at 60 dB for every loss" in out
    losses = ("L1", "AESOP demo", "AESOP demo-compact", "AESOP demo + LR 1", "AESOP demo-compact + LR 1")
    units = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(units) == 2 * len(losses)  # one line per unit and loss, as each ended
    assert all(
        len(u["curve"]) == 0 and len(u["crops"]) == len(u["crop_sd"]) == len(u["psnr_y"]) == 2 for u in units
    )  # 3 steps < 25
    again = _run("bench_guidance.py", "--report", str(record))
    report = out.split("# 2 paired units")[1].rsplit("\n# ", 1)[0]  # the report, less the time taken
    assert again.split("# 2 paired units")[1].strip() == report.strip()
    # AE-PSNR under the independent yardstick, and under the AE trained with, labelled as such
    assert "# ae_psnr@yardstick: AE-PSNR under 'yardstick', an AE no loss here trained with" in out
    assert ("# ae_psnr@demo: AE-PSNR under 'demo', the AE that AESOP demo, AESOP demo + LR 1 trained with: "
            "partly true by construction") in out  # fmt: skip
    for loss in losses:
        assert re.search(rf"^{re.escape(loss)}(\s+\d+\.\d\d \+-\s+\d+\.\d\d){{4}}$", out, re.M), out
    pairs = re.findall(
        r"^(.+?)\s{2,}(psnr_y|lr_psnr|ae_psnr@yardstick|ae_psnr@demo)\s+[+-][\d.]+ "
        r"\[\s*[+-][\d.]+,\s+[+-][\d.]+\]  (tie|.+ higher)( \(same AE as trained with\))?$",
        out,
        re.M,
    )
    assert "# every held-out crop has an HR sd of 2 levels or more: no flat crop to leave out" in out
    assert len(pairs) == 10 * 4  # every pair of the 5 losses, on each of the 4 scores
    assert {p[0].strip() for p in pairs if p[1] == "ae_psnr@demo" and p[3]} == {
        "AESOP demo - L1", "AESOP demo-compact - AESOP demo", "AESOP demo + LR 1 - L1",
        "AESOP demo + LR 1 - AESOP demo", "AESOP demo + LR 1 - AESOP demo-compact",
        "AESOP demo-compact + LR 1 - AESOP demo", "AESOP demo-compact + LR 1 - AESOP demo + LR 1",
    }  # fmt: skip


def test_bench_loss_fidelity_gives_each_precisions_errors_with_their_spread(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_loss

    cosines = bench_loss.fidelity("demo", torch.device("cpu"), photos=2)
    out = capsys.readouterr().out
    cell = r"\s+(\d\.\d{4}) \+- \d\.\d{4} \((\d\.\d{4})\)"
    rows = {m[0]: m[1:] for m in re.findall(rf"^(bf16|auto, bf16 AMP)\s*{cell * 4}$", out, re.M)}
    assert set(rows) == {"bf16", "auto, bf16 AMP"}, out
    loss_err, grad_err = float(rows["bf16"][0]), float(rows["bf16"][2])
    assert 0 < loss_err < 0.1
    assert grad_err > 0.05  # what the README reports: bf16 moves the gradient far more than the loss
    assert cosines["bf16"] < 1.0


def test_bench_guidance_report_caps_exact_matches_for_every_loss_and_says_so(tmp_path):
    # dark crops that a net reproduces exactly score an infinite PSNR: this used to crash
    # (statistics.stdev on inf) after all the training
    record = tmp_path / "guidance.jsonl"
    lines = []
    for seed in range(3):
        for loss, shift in (("L1", 0.0), ("AESOP demo", 0.5)):
            unit = {
                "loss": loss,
                "fold": 0,
                "seed": seed,
                "crops": ["a#0", "a#1", "b#0"],
                "curve": [0.1],
                "crop_sd": [12.0, 0.4, 30.0],
            }  # the exact-match crop is flat
            for m in ("psnr_y", "lr_psnr", "ae_psnr@yardstick"):
                unit[m] = [30.0 + shift + seed, None if loss == "L1" else 70.0, 35.0 + shift]  # null: inf
            lines.append(json.dumps(unit))
    record.write_text("\n".join(lines) + "\n" + '{"loss": "L1", "fo')  # and a torn last line
    out = _run("bench_guidance.py", "--report", str(record))
    assert "# 3 paired units complete; every crop score capped at 60 dB for every loss" in out
    assert "the cap touched 6 psnr_y, 6 lr_psnr, 6 ae_psnr@yardstick of 18 crop scores each" in out
    pairs = re.findall(r"^AESOP demo - L1\s+(psnr_y|lr_psnr|ae_psnr@yardstick)\s+\+0\.33 \[", out, re.M)
    assert pairs == ["psnr_y", "lr_psnr", "ae_psnr@yardstick"], out  # (0.5 + 0.5 + 0) / 3 per unit, paired
    textured = out.split("the same, textured crops only (HR sd >= 2 levels; 2 per unit)")[1]
    assert re.findall(r"^AESOP demo - L1\s+(psnr_y)\s+\+0\.50 \[", textured, re.M) == ["psnr_y"], out


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--flat-sd", "nan"), ("--flat-sd", "-1"), ("--lr-weight", "inf"), ("--psnr-cap", "0")],
)
def test_bench_guidance_refuses_a_bad_number_before_training(flag, value, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_guidance.py"), flag, value, "--record", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"error: {flag} " in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "r").exists()
