from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from aesop_loss import AESOPLoss, AutoEncoder
from aesop_loss.cli import run_cli
from aesop_loss.pretrain import main
from aesop_loss.train import PretrainRun, StopRequest

from conftest import IMAGES, TINY_FLAGS, assert_stopped_and_saved, skip_without_fp16_training, wait_for_file
from conftest import TINY as TINY_ARCH

pytestmark = pytest.mark.usefixtures("two_photo_report")  # a short report after each run

TINY = [*TINY_FLAGS, "--crop", "32", "--workers", "0"]


def _args(out: Path, *extra: str) -> list[str]:
    return ["--data", str(IMAGES), "--out", str(out), *TINY, "--val", "none", *extra]


def _metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_ae_learns_and_the_run_folder_loads(tmp_path):
    out = tmp_path / "run"
    args = _args(
        out, "--steps", "60", "--batch-size", "4", "--lr", "1e-3", "--ema", "0.9", "--log-every", "10"
    )
    assert main([*args, "--val", str(IMAGES), "--val-every", "60", "--save-every", "30"]) == 0
    logs = [m for m in _metrics(out) if "loss_rec" in m]
    assert [m["step"] for m in logs] == [10, 20, 30, 40, 50, 60]
    assert logs[-1]["loss_rec"] < 0.6 * logs[0]["loss_rec"]
    assert logs[-1]["loss_bottleneck"] < logs[0]["loss_bottleneck"]
    val = [m for m in _metrics(out) if "psnr_ae_hr" in m]
    assert len(val) == 1
    assert val[0]["psnr_ae_hr"] > 12
    ae = AutoEncoder.from_pretrained(out)
    assert ae.config == {"num_in_ch": 3, "num_feat": 16, "num_block": 1, "num_grow_ch": 8, "scale": 4,
                         "encoder": "learned", "decoder": "rrdb"}  # fmt: skip
    card = (out / "README.md").read_text()
    assert "Training steps: 60" in card
    assert "python -m aesop_loss.pretrain" in card
    assert "psnr_ae_hr" in card
    loss = AESOPLoss(ae=str(out))
    x = torch.rand(1, 3, 32, 32)
    assert float(loss(x, x)) == 0.0


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    common = [
        "--steps",
        "12",
        "--batch-size",
        "4",
        "--crops-per-image",
        "2",
        "--save-every",
        "6",
        "--log-every",
        "3",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*_args(straight), *common]) == 0
    assert main([*_args(split), *common[:-4], "--save-every", "6", "--log-every", "3", "--steps", "6"]) == 0
    assert main([*_args(split), *common, "--resume"]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    sb = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 12
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([*_args(out), "--steps", "2", "--batch-size", "2", "--save-every", "2"]) == 0
    ckpt = out / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()

    def broken_save(obj: object, f: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    code = run_cli(main, [*_args(out), "--steps", "4", "--batch-size", "2", "--save-every", "2", "--resume"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no space left on the device while saving step 4; the checkpoint of step 2" in err
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]
    assert torch.load(ckpt, weights_only=True)["step"] == 2


def _signal_during_step(monkeypatch, at_step: int, times: int) -> None:
    """Deliver Ctrl-C ``times`` times in the middle of step ``at_step``, as a user would."""
    import signal

    real_step = PretrainRun.train_step

    def step_with_signal(self, hr, lr):  # type: ignore[no-untyped-def]
        if self.step + 1 == at_step:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return real_step(self, hr, lr)

    monkeypatch.setattr(PretrainRun, "train_step", step_with_signal)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path, monkeypatch, caplog):
    common = ["--batch-size", "2", "--save-every", "100", "--log-every", "2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*_args(straight), *common, "--steps", "6"]) == 0
    with monkeypatch.context() as patch:
        _signal_during_step(patch, at_step=3, times=1)
        assert run_cli(main, [*_args(split), *common, "--steps", "6"]) == 130
    assert "stopping after the current step" in caplog.text
    assert torch.load(split / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    assert AutoEncoder.from_pretrained(split).config["num_feat"] == 16
    assert main([*_args(split), *common, "--steps", "6", "--resume"]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_duplicate_signals_count_as_one_stop(tmp_path, monkeypatch):
    # a terminal's Ctrl-C plus torchrun forwarding it: two signals at once, one graceful stop
    out = tmp_path / "run"
    _signal_during_step(monkeypatch, at_step=2, times=2)
    assert run_cli(main, [*_args(out), "--steps", "50", "--batch-size", "2", "--save-every", "100"]) == 130
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_second_ctrl_c_aborts_without_saving(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    monkeypatch.setattr(StopRequest, "repeat_window", 0.0)  # a human's second press, not a duplicate
    _signal_during_step(monkeypatch, at_step=2, times=2)
    assert run_cli(main, [*_args(out), "--steps", "50", "--batch-size", "2", "--save-every", "1"]) == 130
    assert "aborted without saving" in caplog.text
    # step 1's checkpoint is intact; nothing was written mid-step 2
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data", "/no/such/dir"], "neither a dataset name"),
        (["--data", "EMPTY"], "holds no images"),
        (["--crop", "30"], "--crop 30 is not a multiple of --scale 4"),
        (["--crop", "4096"], "no usable images"),
        (["--resume"], "no checkpoint at"),
    ],
    ids=["missing", "empty", "crop-scale", "too-small", "resume-nothing"],
)
def test_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    base = _args(tmp_path / "run", "--steps", "1", "--batch-size", "1")
    with pytest.warns(UserWarning, match="smaller than") if "4096" in argv else _no_warning():
        code = run_cli(main, [*base, *argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "Traceback" not in err
    assert re.search(needle, lines[0])


_NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--save-every", "0", "an integer >= 1"),
        ("--log-every", "0", "an integer >= 1"),
        ("--val-every", "0", "an integer >= 1"),
        ("--steps", "0", "an integer >= 1"),
        ("--batch-size", "0", "an integer >= 1"),
        ("--crops-per-image", "0", "an integer >= 1"),
        ("--crop", "0", "an integer >= 1"),
        ("--num-feat", "0", "an integer >= 1"),
        ("--num-feat", "15", "expected a multiple of --scale squared \\(16\\)"),
        ("--num-grow-ch", "0", "an integer >= 1"),
        ("--num-block", "-1", "an integer >= 0"),
        ("--num-block", "100000", "<= 256"),
        ("--workers", "-1", "an integer >= 0"),
        ("--seed", "-1", "an integer >= 0"),
        ("--freeze-decoder-steps", "-2", "an integer >= -1"),
        ("--lr", "nan", "a finite number"),
        ("--lr", "inf", "a finite number"),
        ("--lr", "0", "a finite number > 0"),
        ("--lr", "-1e-4", "a finite number"),
        ("--ema", "1.0", "< 1.0"),
        ("--ema", "nan", "a finite number"),
        ("--bottleneck-weight", "nan", "a finite number >= 0"),
        ("--bottleneck-weight", "-1", "a finite number >= 0"),
        ("--color-jitter", "1.5", "< 1.0"),
        ("--device", "foo", "expected cpu, cuda or cuda:N"),
        ("--device", "mps", "expected cpu, cuda or cuda:N"),
        ("--device", "cuda:7", "no CUDA GPU is available" if _NO_GPU else "only"),
    ],
)
def test_every_flag_is_checked_before_any_work(tmp_path, capsys, flag, value, needle):
    out = tmp_path / "run"
    code = run_cli(main, [*_args(out, "--steps", "1", "--batch-size", "1"), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {flag}")
    assert re.search(needle, lines[0])
    assert not out.exists()  # refused before the run folder, the data or the model existed


@pytest.mark.parametrize(("flag", "value"), [("--amp", "fp8"), ("--scale", "3"), ("--steps", "ten")])
def test_argparse_rejects_bad_choices_in_one_line(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main([*_args(tmp_path / "run"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error:" in line] == [
        next(line for line in err.splitlines() if line.startswith("python -m aesop_loss.pretrain: error:"))
    ]
    assert flag in err
    assert not (tmp_path / "run").exists()


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_color_jitter_flag_and_resume_of_runs_from_before_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_args(out), "--steps", "1", "--batch-size", "2", "--save-every", "1"]) == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["color_jitter"]  # a checkpoint written before the option existed
    torch.save(state, ckpt)
    assert main([*_args(out), "--steps", "2", "--batch-size", "2", "--save-every", "1", "--resume"]) == 0
    code = run_cli(
        main, [*_args(out), "--steps", "3", "--batch-size", "2", "--color-jitter", "0.2", "--resume"]
    )
    assert code == 2
    assert "color_jitter=0.0 (now 0.2)" in capsys.readouterr().err


def test_resume_with_other_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_args(out), "--steps", "1", "--batch-size", "1", "--save-every", "1"]) == 0
    code = run_cli(main, [*_args(out), "--steps", "2", "--batch-size", "2", "--resume"])
    assert code == 2
    assert "another configuration: batch_size=1 (now 2)" in capsys.readouterr().err
    # and starting over into a used folder is refused rather than overwriting it
    assert run_cli(main, [*_args(out), "--steps", "2", "--batch-size", "1"]) == 2


@pytest.mark.slow
def test_cli_entry_point_exits_nonzero(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aesop_loss.pretrain",
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    common = [
        "--steps",
        "4",
        "--crops-per-image",
        "1",
        "--save-every",
        "2",
        "--log-every",
        "2",
        "--device",
        "cpu",
        "--teacher",  # distillation under DDP too: each rank runs the frozen teacher on its crops
        str(tmp_path / "teacher"),
    ]
    torch.manual_seed(5)
    AutoEncoder(**TINY_ARCH).save_pretrained(tmp_path / "teacher")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "aesop_loss.pretrain", *_args(ddp), "--batch-size", "2", *common],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*_args(single), "--batch-size", "4", *common]) == 0
    logs = _metrics(ddp)
    assert [m["step"] for m in logs] == [2, 4]  # written once, by rank 0
    assert all(m["loss_distill"] > 0 for m in logs)
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["last.pt"]
    a, b = load_file(ddp / "model.safetensors"), load_file(single / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_same_weights_with_any_number_of_workers(tmp_path):
    common = ["--steps", "3", "--batch-size", "4", "--crops-per-image", "2", "--save-every", "3"]
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        args = [a if a != "0" else workers for a in _args(out)]  # TINY sets --workers 0
        assert main([*args, *common]) == 0
        runs[workers] = load_file(out / "model.safetensors")
    assert all(torch.equal(runs["0"][k], runs["2"][k]) for k in runs["0"])


@pytest.mark.parametrize(
    ("sig", "workers", "to_group"),
    [("SIGTERM", "0", False), ("SIGINT", "2", True)],
    ids=["sigterm-to-process", "ctrl-c-to-process-group-with-workers"],
)
@pytest.mark.slow
def test_signal_finishes_step_saves_and_exits(tmp_path, sig, workers, to_group):
    import signal

    out = tmp_path / "run"
    args = [a if a != "0" else workers for a in _args(out)]  # TINY sets --workers 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "aesop_loss.pretrain", *args, "--steps", "100000", "--batch-size", "1",
         "--save-every", "100000", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    wait_for_file(out / "metrics.jsonl", timeout=60)
    signum = getattr(signal, sig)
    if to_group:  # what a terminal's Ctrl-C does: the DataLoader workers get it too
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    assert assert_stopped_and_saved(proc, out / "checkpoints" / "last.pt", timeout=60) >= 1
    assert AutoEncoder.from_pretrained(out).config["num_feat"] == 16


def test_freeze_decoder_always(tmp_path):
    out = tmp_path / "run"
    torch.manual_seed(0)
    start = AutoEncoder(**TINY_ARCH).state_dict()  # the run's seed-0 init
    args = [*_args(out), "--steps", "3", "--batch-size", "2", "--save-every", "3", "--ema", "0"]
    assert main([*args, "--freeze-decoder-steps", "-1"]) == 0
    trained = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[k], start[k]) for k in start if k.startswith("decoder."))
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.startswith("encoder."))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_on_cpu(tmp_path, amp):
    if amp == "fp16":
        skip_without_fp16_training("cpu")
    out = tmp_path / "run"
    assert main([*_args(out), "--steps", "2", "--batch-size", "2", "--amp", amp, "--log-every", "1"]) == 0
    losses = [m["loss_rec"] for m in _metrics(out)]
    assert len(losses) == 2
    assert all(0 < x < 10 for x in losses)


def _stop_vote(rank: int, store_path: str, results: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    stop = StopRequest()
    stop.requested = rank == 0  # only rank 0 got the signal (so far)
    every = StopRequest.check_every
    results.put(
        (rank, [stop.agreed(step, world=2, device=torch.device("cpu")) for step in (every - 1, every)])
    )
    dist.destroy_process_group()


def test_ddp_ranks_agree_on_when_to_stop(tmp_path):
    # a rank that stopped alone would leave the others waiting in the next all-reduce forever
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_stop_vote, args=(r, str(tmp_path / "store"), results)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    votes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert votes == {0: [False, True], 1: [False, True]}  # both stop, after the same step


def _recon_psnr(folder: Path) -> float:
    from aesop_loss.diagnostics import diagnose

    return diagnose(AutoEncoder.from_pretrained(folder), size=64, tiles=1).recon_psnr


@pytest.mark.slow
def test_ema_warmup_makes_an_80_step_run_export_trained_weights(tmp_path):
    torch.manual_seed(0)  # the runs' own seed-0 initialisation, saved untrained
    AutoEncoder(**TINY_ARCH).save_pretrained(tmp_path / "untrained")
    common = ["--steps", "80", "--batch-size", "4", "--lr", "1e-3", "--save-every", "80", "--log-every", "80"]
    assert main([*_args(tmp_path / "warm", *common)]) == 0
    assert main([*_args(tmp_path / "plain", *common, "--no-ema-warmup")]) == 0
    untrained, warm, plain = (_recon_psnr(tmp_path / n) for n in ("untrained", "warm", "plain"))
    assert warm > untrained + 5  # measured: 8.8 dB untrained, 18.7 dB with the warm-up (3 photos)
    assert abs(plain - untrained) < 1.0  # the paper's plain EMA 0.999 still holds the initialisation


@pytest.mark.slow
def test_checkpoints_from_before_the_warmup_resume_with_it_off(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main([*_args(out), "--steps", "1", "--batch-size", "1", "--save-every", "1", "--no-ema-warmup"]) == 0
    )
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["ema_warmup"]  # as written before the option existed: plain EMA
    torch.save(state, ckpt)
    assert run_cli(main, [*_args(out), "--steps", "2", "--batch-size", "1", "--resume"]) == 2
    assert "ema_warmup=False (now True)" in capsys.readouterr().err
    assert main([*_args(out), "--steps", "2", "--batch-size", "1", "--resume", "--no-ema-warmup"]) == 0


def test_the_run_ends_with_the_fitness_report_in_the_card(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="aesop_loss")
    out = tmp_path / "run"
    assert main([*_args(out), "--steps", "2", "--batch-size", "1"]) == 0
    assert "fitness for AESOP" in caplog.text
    assert "verdict: unfit" in caplog.text  # two steps make no AE
    assert f"the model is in {out}; use it with: AESOPLoss(ae={str(out)!r})" in caplog.text
    assert re.search(
        r"estimated cost: [\d.]+ GiB of RAM and [\d.]+ s per step; 2 steps: about \d+ s \(from two probe "
        r"steps: on a machine busy with other work it has been off by up to 4x either way",
        caplog.text,
    )  # the estimate says how far it can be off
    card = (out / "README.md").read_text()
    assert "## Fitness for AESOP" in card
    assert "reconstruction PSNR" in card


def test_presets_fill_what_the_command_line_does_not_give(tmp_path):
    from aesop_loss.train import PretrainConfig
    from aesop_loss.train.config import PRESETS

    parser = PretrainConfig.parser(prog="p", description=None)
    for name, values in PRESETS.items():
        argv = ["--data", "d", "--out", "o", "--preset", name, "--steps", "7", "--no-ema-warmup"]
        cfg = PretrainConfig.from_args(parser.parse_args(argv), argv=argv)
        cfg.validate()
        assert cfg.steps == 7  # the flag given wins
        assert cfg.ema_warmup is False
        assert all(getattr(cfg, k) == v for k, v in values.items() if k != "steps")
        assert cfg.cautions() == []  # no preset makes an AE blind to a colour direction
    assert "--preset {tiny,demo,paper}" in parser.format_help()


def test_an_encoder_narrower_than_the_colours_is_cautioned_once_the_run_starts(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="aesop_loss")
    assert main([*_args(tmp_path / "run"), "--steps", "1", "--batch-size", "1"]) == 0  # 16 features at x4
    cautions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warning: --num-feat")]
    assert cautions == [
        "warning: --num-feat 16 at --scale 4: the learned encoder starts with 1 channel for 3 colours, so "
        "it drops a colour direction: AESOP with this AE cannot see a colour cast along it, and an SR net "
        "trained with it drifts that way; use --encoder bicubic (a wider learned encoder can still learn to "
        "drop one on a small photo set: check the run's colour floor)"
    ]
    caplog.clear()
    bicubic = [*_args(tmp_path / "bicubic"), "--steps", "1", "--batch-size", "1", "--encoder", "bicubic"]
    assert main(bicubic) == 0
    assert not [r for r in caplog.records if "colour" in r.getMessage() and r.levelno >= logging.WARNING]


def test_a_step_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import aesop_loss.train.budget as budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 2**20)  # 1 MiB free
    monkeypatch.setattr(budget, "_state_bytes", lambda cfg, teacher: 0)  # past the weights-only check
    out = tmp_path / "run"
    assert run_cli(main, [*_args(out), "--steps", "1", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.search(
        r"needs about [\d.]+ GiB per step \(batch 1 x 32\^2\) but 0\.0 GiB of RAM is free", err[0]
    )
    assert "--preset tiny" in err[0]
    assert "--force" in err[0]
    assert not out.exists()
    assert main([*_args(out), "--steps", "1", "--batch-size", "1", "--force"]) == 0


@pytest.mark.slow
def test_a_long_cpu_run_says_what_it_costs_and_names_the_quick_presets(caplog):
    import logging

    import aesop_loss.train.budget as budget
    from aesop_loss.train import PretrainConfig

    caplog.set_level(logging.INFO, logger="aesop_loss")
    cfg = PretrainConfig(data="d", out=Path("o"), **TINY_ARCH, crop=32, batch_size=2, steps=10**7)
    est = budget.check_budget(cfg, torch.device("cpu"))
    assert est.run_seconds > 2 * 3600
    assert "on this CPU. For a quick run: --preset tiny" in caplog.text
    bigger = budget.estimate(PretrainConfig(data="d", out=Path("o"), **TINY_ARCH, crop=64, batch_size=4),
                             torch.device("cpu"))  # fmt: skip
    assert bigger.step_bytes > budget.estimate(cfg, torch.device("cpu")).step_bytes  # 8x the pixels


@pytest.mark.parametrize("abbreviated", [["--ste", "3"], ["--batch", "2"]])
def test_abbreviated_flags_are_refused_not_overridden_by_the_preset(tmp_path, capsys, abbreviated):
    # --preset fills the flags the command line does not name; "--ste" named --steps only to argparse
    with pytest.raises(SystemExit) as exit_info:
        main([*_args(tmp_path / "run"), "--preset", "tiny", *abbreviated])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {' '.join(abbreviated)}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_without_any_rrdb_writes_a_folder_that_loads(tmp_path):
    out = tmp_path / "run"
    flags = ["--encoder", "bicubic", "--decoder", "compact", "--steps", "1", "--batch-size", "1"]
    assert main([*_args(out), *flags]) == 0
    ae = AutoEncoder.from_pretrained(out)
    assert (ae.config["encoder"], ae.config["decoder"], ae.config["num_grow_ch"]) == ("bicubic", "compact", 8)


@pytest.mark.slow
def test_resume_refuses_a_data_folder_whose_files_changed(tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for name in ("brick.png", "grass.png"):
        shutil.copy(IMAGES / name, data / name)
    out = tmp_path / "run"
    args = [
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY,
        "--val",
        "none",
        "--batch-size",
        "1",
        "--save-every",
        "1",
    ]
    assert main([*args, "--steps", "1"]) == 0
    shutil.copy(IMAGES / "gravel.png", data / "gravel.png")  # the set grew: the sample stream would differ
    assert run_cli(main, [*args, "--steps", "2", "--resume"]) == 2
    assert "the files of --data (added, removed or rewritten) changed since" in capsys.readouterr().err
    (data / "gravel.png").unlink()
    assert main([*args, "--steps", "2", "--resume"]) == 0  # as it was: resumes


@pytest.mark.parametrize(("flag", "value"), [("--ram-cache-mb", "64"), ("--disk-cache-mb", "0")])
def test_optional_integer_flags_take_a_value_on_the_command_line(flag, value):
    from aesop_loss.train import PretrainConfig

    argv = ["--data", "d", "--out", "o", flag, value]
    cfg = PretrainConfig.from_args(
        PretrainConfig.parser(prog="p", description=None).parse_args(argv), argv=argv
    )
    cfg.validate()  # was: "expected a finite number >= 0" for every value (parsed as a string)
    assert getattr(cfg, flag[2:].replace("-", "_")) == int(value)


def test_progress_into_a_log_is_plain_lines_with_the_measured_rate(tmp_path, monkeypatch, capsys):
    # stderr is not a terminal here (as in `... 2> log`): tqdm's carriage returns made one endless line
    from aesop_loss.train import progress as progress_mod

    monkeypatch.setattr(progress_mod.LogProgress, "__init__",
                        _with_every(progress_mod.LogProgress.__init__, 0.0))  # fmt: skip
    assert main([*_args(tmp_path / "run"), "--steps", "3", "--batch-size", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("pretrain: ")]
    assert [line.split(" step")[0] for line in lines] == ["pretrain: 1/3", "pretrain: 2/3", "pretrain: 3/3",
                                                          "pretrain: 3/3"]  # fmt: skip
    assert re.search(r"step/s, about \d+ s left at the rate so far", lines[0])


def _with_every(init: Any, every: float) -> Any:
    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "every": every})

    return patched
