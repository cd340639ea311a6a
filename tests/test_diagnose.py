"""``aesop_loss.diagnose``: is an AE fit for the loss? Untrained AEs are unfit, trained ones pass."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from aesop_loss import AutoEncoder
from aesop_loss.cli import run_cli
from aesop_loss.diagnose import main
from aesop_loss.diagnostics import THRESHOLDS, Diagnosis, diagnose, null_space_detail, sample_images
from aesop_loss.resize import imresize

from conftest import AE_CKPT, IMAGES, TINY, tiny_ae

FIELDS = ["recon_psnr", "lr_psnr", "detail_ratio", "fidelity_ratio", "selectivity", "retention",
          "colour_gains", "colour_floor", "colour_blind", "images", "tiles", "recon_psnr_per_image",
          "teacher_grad_cosine", "teacher_loss_ratio", "verdict", "reasons"]  # fmt: skip


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object on stdout, nothing else
    return json.loads(out[0])


@pytest.fixture(scope="module")
def untrained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained AE saved as a model folder: it loads as 'pretrained', but it is not."""
    folder = tmp_path_factory.mktemp("untrained")
    torch.manual_seed(0)
    AutoEncoder(**TINY).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_untrained_ae_is_unfit_even_when_it_claims_to_be_pretrained(untrained_folder, capsys):
    assert AutoEncoder.from_pretrained(untrained_folder).is_pretrained  # what a loader sees
    assert run_cli(main, [str(untrained_folder), "--json"]) == 1
    report = _json(capsys)
    assert list(report) == FIELDS
    assert report["verdict"] == "unfit"
    assert report["recon_psnr"] < THRESHOLDS.unfit_recon_psnr
    assert any("does not reconstruct" in reason for reason in report["reasons"])


@pytest.mark.slow
def test_a_trained_ae_passes(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo AE's "for examples and tests" warning
        assert run_cli(main, ["demo", "--json"]) == 0
    report = _json(capsys)
    assert report["verdict"] in ("ok", "warn")
    assert report["recon_psnr"] > THRESHOLDS.warn_recon_psnr
    assert report["selectivity"] > THRESHOLDS.warn_selectivity  # detail costs far less than error
    assert report["retention"] > THRESHOLDS.warn_retention
    assert report["images"] == 7


@pytest.mark.slow
def test_table_output_and_images_folder(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(main, ["demo", "--images", str(folder), "--size", "96"]) == 0
    out = capsys.readouterr().out
    rows = ("reconstruction PSNR", "bottleneck vs LR PSNR", "detail ratio", "fidelity ratio", "selectivity",
            "colour gains", "verdict: ")  # fmt: skip
    for row in rows:
        assert row in out
    assert re.search(r"verdict: \w+ \(2 images, \d+ tiles\)", out)  # tiles cover each whole photo
    assert "(images " in out  # the spread across images


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["./no/such/ae"], "no such file or folder"),
        (["demo", "--images", "EMPTY"], "holds no images"),
        (["demo", "--size", "4"], "--size 4"),
        (["demo", "--device", "quantum"], "--device 'quantum'"),
    ],
    ids=["missing-ae", "empty-images", "tiny-size", "bad-device"],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert needle in err[0]


@pytest.mark.slow
def test_command_line_exit_status(untrained_folder):
    proc = subprocess.run(
        [sys.executable, "-m", "aesop_loss.diagnose", str(untrained_folder)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "verdict: unfit" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_selectivity_separates_detail_from_error():
    # the paper's argument, measured: the detail leaves the LR image as it was, and AESOP with a
    # trained AE penalises it far less than a fidelity error of the same energy
    hr = sample_images()[0].double()[None] / 255
    detail = null_space_detail(hr, 4, 0.08, torch.Generator().manual_seed(0))
    assert float((imresize(hr + detail, 1 / 4) - imresize(hr, 1 / 4)).abs().max()) < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = diagnose(AutoEncoder.from_pretrained("demo"))
    assert d.detail_ratio < 0.05 < 0.5 < d.fidelity_ratio


@pytest.mark.parametrize(
    ("change", "verdict", "reason"),
    [
        ({}, "ok", None),
        ({"recon_psnr": 12.0}, "unfit", "does not reconstruct"),
        ({"recon_psnr": 24.0}, "warn", "train longer"),
        ({"fidelity_ratio": 0.1, "retention": 0.1}, "unfit", "barely see fidelity errors"),
        ({"selectivity": 1.5}, "unfit", "like L1"),
        ({"lr_psnr": 25.0}, "warn", "not the bicubic LR image"),
        ({"colour_gains": {"y": 1.0, "cb": 0.1, "cr": 0.9}}, "warn", "Cb 0.10"),
        ({"colour_gains": {"y": 0.5, "cb": 0.9, "cr": 0.9}}, "warn", "brightness"),
        (
            {"colour_floor": 0.02},
            "unfit",
            "colour floor 0.02 < 0.1: a colour cast along RGB (-0.10, +0.98, -0.16) is invisible to AESOP",
        ),
        (
            {"colour_floor": 0.2},
            "warn",
            "is under-weighted (pretrain with --encoder bicubic and --color-jitter",
        ),
    ],
)
def test_verdict_rules(change, verdict, reason):
    fields = {"recon_psnr": 30.0, "lr_psnr": 40.0, "detail_ratio": 0.01, "fidelity_ratio": 0.8,
              "selectivity": 80.0, "retention": 0.8, "colour_gains": {"y": 1.0, "cb": 0.9, "cr": 0.9},
              "colour_floor": 0.9, "colour_blind": [-0.10, 0.98, -0.16], "images": 7}  # fmt: skip
    d = Diagnosis(**{**fields, **change})  # type: ignore[arg-type]
    got, reasons = THRESHOLDS.judge(d)
    assert got == verdict
    assert (reason is None and reasons == []) or any(reason in r for r in reasons)


def test_diagnose_keeps_the_callers_mode_and_device():
    ae = tiny_ae().train()
    d = diagnose(ae, sample_images()[:2], size=64)
    assert ae.training
    assert d.images == 2
    assert json.loads(d.to_json())["verdict"] == d.verdict


def test_tiles_cover_a_large_image_and_are_repeatable():
    import random

    from aesop_loss.diagnostics import _tiles

    img = torch.arange(3 * 200 * 300, dtype=torch.float64).reshape(3, 200, 300)  # each pixel: its index
    every = _tiles(img, 128, 4, 64, random.Random(0))
    assert len(every) == 6  # a 2 x 3 grid of 128^2 tiles covers 200 x 300
    seen = torch.zeros(200, 300, dtype=torch.bool)
    for tile in every:
        top, left = divmod(int(tile[0, 0, 0, 0]), 300)
        seen[top : top + 128, left : left + 128] = True
    assert seen.all()
    four = [t[0, 0, 0, 0].item() for t in _tiles(img, 128, 4, 4, random.Random(0))]
    assert len(four) == 4
    assert four == [t[0, 0, 0, 0].item() for t in _tiles(img, 128, 4, 4, random.Random(0))]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Loaded the bundled demo AE")
def test_the_verdict_does_not_move_with_the_tile_size():
    ae = AutoEncoder.from_pretrained("demo")
    by_size = {size: diagnose(ae, size=size) for size in (64, 128)}
    assert {d.verdict for d in by_size.values()} == {"ok"}
    recon = [d.recon_psnr for d in by_size.values()]
    assert max(recon) - min(recon) < 1.0  # tiles cover the same pixels at every size
    assert by_size[64].tiles == 28
    assert by_size[128].tiles == 7


def test_report_columns_and_rounding_against_the_thresholds():
    d = Diagnosis(recon_psnr=25.96, lr_psnr=40.0, detail_ratio=0.01, fidelity_ratio=0.195, selectivity=19.5,
                  retention=0.195, colour_gains={"y": 1.0, "cb": -0.004, "cr": -0.001}, colour_floor=0.001,
                  colour_blind=[0.0, 0.6, 0.8], images=2, tiles=3,
                  recon_psnr_per_image=[25.0, 26.92])  # fmt: skip
    d.verdict, d.reasons = THRESHOLDS.judge(d)
    table = d.table()
    assert "retention 0.195 < 0.2" in table
    assert "reconstruction PSNR 25.96 dB < 26" in table
    assert "25.96 dB (images 25.0-26.9)" in table
    assert "verdict: unfit (2 images, 3 tiles)" in table
    assert "colour floor           0.00 along RGB (+0.00, +0.60, +0.80)  the least-passed" in table
    for line in table.splitlines()[:7]:  # every value is followed by at least two spaces
        assert re.match(r"^[a-zA-Z ]+\S.*\S {2,}\S", line), line


@pytest.mark.filterwarnings("ignore:Loaded the bundled demo AE")
def test_the_command_shows_progress_and_starts_the_report_on_its_own_line(monkeypatch, capsys):
    import aesop_loss.diagnose as command

    init = command._Progress.__init__
    monkeypatch.setattr(command._Progress, "__init__", lambda self: init(self, after=0.0, every=0.0))
    assert run_cli(main, ["demo", "--size", "64", "--tiles", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.err.endswith("diagnose: 7/7 images measured\n")
    assert captured.out.startswith("AE: demo\n")


def test_progress_in_a_log_is_plain_lines_not_carriage_returns(tmp_path):
    # stderr to a file, as in `... 2> log`: was "1/7 images measured\rdiagnose: 2/7 ..." on one line
    import subprocess
    import sys

    code = ("import aesop_loss.diagnose as d, sys; i = d._Progress.__init__; "
            "d._Progress.__init__ = lambda self: i(self, after=0.0, every=0.0); "
            "sys.exit(d.run_cli(d.main, ['demo', '--size', '64', '--tiles', '1']))")  # fmt: skip
    log = tmp_path / "log.txt"
    with log.open("w") as err:
        proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, timeout=120)
    assert proc.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    counts = [line for line in text.splitlines() if line.startswith("diagnose: ")]
    assert counts == [f"diagnose: {i}/7 images measured" for i in range(1, 8)]


def test_images_that_cannot_be_measured_are_skipped_and_the_work_is_bounded(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import aesop_loss.diagnose as diagnose_module
    from aesop_loss.cli import run_cli

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png", "d.png")):
        (folder / name).write_bytes((IMAGES / sorted(p.name for p in IMAGES.glob("*.png"))[i]).read_bytes())
    (folder / "broken.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    Image.new("RGB", (900, 900), "gray").save(folder / "bomb.png")
    Image.new("RGB", (600, 600), "gray").save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 360_000)  # over twice that is a decompression bomb
    monkeypatch.setattr(diagnose_module, "_MAX_PIXELS", 300_000)  # 64 MP in use: huge.png is over it
    with pytest.warns(UserWarning, match="skipping") as seen:
        code = run_cli(main, ["demo", "--images", str(folder), "--size", "32", "--tiles", "1", "--json"])
    assert code == 0
    skipped = sorted(
        str(w.message).split(":")[0].rsplit("/", 1)[1] for w in seen if "skipping" in str(w.message)
    )
    assert skipped == ["bomb.png", "broken.png", "dot.png", "huge.png"]
    assert json.loads(capsys.readouterr().out)["images"] == 4
    with pytest.warns(UserWarning, match="demo AE"):
        code = run_cli(main, ["demo", "--images", str(folder), "--size", "32", "--tiles", "1", "--json",
                              "--max-images", "3"])  # fmt: skip
    assert code in (0, 1)  # a verdict (on 32-pixel tiles of two photos), not an error
    assert json.loads(capsys.readouterr().out)["images"] == 2  # of a, bomb, d: spread over the folder
    for bad in ("0", "-3"):
        assert run_cli(main, ["demo", "--images", str(folder), "--max-images", bad]) == 2


def test_an_encoder_narrower_than_the_colours_is_blind_to_a_colour_cast():
    # the authors' small AE (num_feat 32, x4): its encoder starts with conv(3 -> 32 / 4**2 = 2 channels),
    # so a uniform offset along the null direction of that conv's summed kernel never reaches the output
    from aesop_loss.diagnostics import colour_floor, colour_transfer

    ae = AutoEncoder.from_pretrained(AE_CKPT).eval()
    x = sample_images()[2][None].float() / 255
    transfer = colour_transfer(ae, x)
    floor, direction = colour_floor(transfer)
    assert abs(sum(v * v for v in direction) - 1) < 1e-9
    largest = float(torch.linalg.svdvals(transfer)[0])
    assert largest > 0.1  # the other directions pass
    assert floor < 1e-3 * largest  # this one does not
    summed = ae.encoder[0][0].weight.detach().double().sum(dim=(-2, -1))  # (2, 3)
    assert summed.shape == (2, 3)
    along = summed @ torch.tensor(direction, dtype=torch.float64)
    assert float(along.abs().max()) < 1e-2 * float(summed.abs().max())
