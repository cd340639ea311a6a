"""Compact AEs: SRVGGNetCompact (shapes, layouts, strict loading), the compact AutoEncoder, pretraining
with ``--decoder compact`` and distillation from a ``--teacher``, and the gradient comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aesop_loss import AESOPLoss, AutoEncoder, CheckpointError, RRDBNet, SRVGGNetCompact
from aesop_loss.cli import run_cli
from aesop_loss.diagnose import main as diagnose_main
from aesop_loss.diagnostics import Diagnosis, gradient_agreement
from aesop_loss.pretrain import main
from aesop_loss.train import PretrainRun
from aesop_loss.train.config import PretrainConfig

from conftest import IMAGES, skip_without_fp16_training, tiny_ae

pytestmark = pytest.mark.usefixtures("two_photo_report")  # a short report after each run

COMPACT = {"num_feat": 16, "num_block": 2, "num_grow_ch": 8, "decoder": "compact"}
COMPACT_FLAGS = ["--num-feat", "16", "--num-block", "2", "--num-grow-ch", "8", "--decoder", "compact"]


def _realesrgan_keys(num_conv: int) -> list[str]:
    """Real-ESRGAN's SRVGGNetCompact (PReLU): conv at even body indices, PReLU slopes after each."""
    keys = []
    for i in range(num_conv + 2):
        keys += [f"body.{2 * i}.weight", f"body.{2 * i}.bias"]
        if i < num_conv + 1:
            keys.append(f"body.{2 * i + 1}.weight")
    return sorted(keys)


@pytest.mark.parametrize(("num_conv", "scale"), [(0, 4), (3, 4), (2, 2), (1, 3)])
def test_compact_shapes_keys_and_cost(num_conv, scale):
    net = SRVGGNetCompact(num_feat=8, num_conv=num_conv, scale=scale)
    assert sorted(net.state_dict()) == _realesrgan_keys(num_conv)
    x = torch.rand(2, 3, 5, 7)
    y = net(x)
    assert y.shape == (2, 3, 5 * scale, 7 * scale)
    with torch.no_grad():  # a zero body leaves the nearest-neighbour upsampled input
        for p in net.body.parameters():
            p.zero_()
    assert torch.equal(net(x), x.repeat_interleave(scale, 2).repeat_interleave(scale, 3))


@pytest.mark.parametrize("wrapper", ["params", "params_ema", None])
def test_realesrgan_compact_checkpoint_loads_strictly_with_inferred_config(tmp_path, wrapper):
    net = SRVGGNetCompact(num_feat=12, num_conv=4, scale=2)
    sd = net.state_dict()
    path = tmp_path / "realesr-compact.pth"
    torch.save({wrapper: sd} if wrapper else sd, path)
    loaded = SRVGGNetCompact.from_pretrained(path)
    assert loaded.config == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 12, "num_conv": 4, "scale": 2}
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded(x), net(x))
    loaded.save_pretrained(tmp_path / "folder")
    assert json.loads((tmp_path / "folder" / "config.json").read_text())["architecture"] == "SRVGGNetCompact"
    assert SRVGGNetCompact.from_pretrained(tmp_path / "folder").config == loaded.config


def test_compact_without_prelu_weights_or_inconsistent_is_refused(tmp_path):
    relu = {k: v for k, v in SRVGGNetCompact(num_feat=8, num_conv=2).state_dict().items()
            if not k.endswith((".1.weight", ".3.weight", ".5.weight"))}  # fmt: skip
    torch.save(relu, tmp_path / "relu.pth")
    with pytest.raises(CheckpointError, match=r"activations have no weights \(ReLU or LeakyReLU\)"):
        SRVGGNetCompact.from_pretrained(tmp_path / "relu.pth")
    SRVGGNetCompact(num_feat=8, num_conv=2).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "num_conv": 5}))
    with pytest.raises(CheckpointError, match=r"num_conv=5 \(weights: 2\)"):
        SRVGGNetCompact.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("scale", [4, 2])
def test_compact_autoencoder_round_trip_and_loss(tmp_path, scale):
    ae = tiny_ae(**COMPACT, scale=scale)
    assert isinstance(ae.decoder, SRVGGNetCompact)
    x = torch.rand(1, 3, 16, 24)
    assert ae(x).shape == x.shape
    ae.save_pretrained(tmp_path / "ae")
    back = AutoEncoder.from_pretrained(tmp_path / "ae")
    assert back.config == {"num_in_ch": 3, **COMPACT, "scale": scale, "encoder": "learned"}
    assert torch.equal(back(x), ae(x))
    sr = x.clone().requires_grad_(True)
    AESOPLoss(back)(sr, x + 0.1).backward()
    assert sr.grad is not None
    assert sr.grad.abs().sum() > 0


def test_compact_ae_from_a_compact_generator():
    gen = SRVGGNetCompact(num_feat=16, num_conv=3, scale=4)
    ae = AutoEncoder.from_decoder(gen, num_grow_ch=8)
    assert ae.config == {"num_in_ch": 3, "num_feat": 16, "num_block": 3, "num_grow_ch": 8, "scale": 4,
                         "encoder": "learned", "decoder": "compact"}  # fmt: skip
    assert all(torch.equal(ae.decoder.state_dict()[k], v) for k, v in gen.state_dict().items())
    assert not ae.is_pretrained


@pytest.mark.slow
def test_gradient_agreement_of_an_ae_with_itself_is_one_and_with_another_less():
    a = tiny_ae()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.1)
    b = tiny_ae(**COMPACT)
    cosine, ratio = gradient_agreement(a, a, size=32)
    assert cosine == pytest.approx(1.0, abs=1e-9)
    assert ratio == pytest.approx(1.0, abs=1e-9)
    other, _ = gradient_agreement(b, a, size=32)
    assert other < 0.99
    with pytest.raises(ValueError, match="the student is x2, the teacher x4"):
        gradient_agreement(tiny_ae(scale=2), a, size=32)


@pytest.mark.slow
def test_diagnose_with_a_teacher_points_to_the_outcome_benchmark(capsys):
    with pytest.warns(UserWarning, match="demo AE"):
        code = run_cli(diagnose_main, ["demo", "--teacher", "demo", "--size", "32", "--tiles", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gradient cosine" in out
    assert "benchmarks/bench_guidance.py measures (--ae demo --ae demo)" in out


@pytest.mark.slow
def test_diagnose_with_a_teacher_reports_cosine_and_ratio(capsys):
    with pytest.warns(UserWarning, match="demo AE"):
        code = run_cli(diagnose_main, ["demo", "--teacher", "demo", "--size", "64", "--tiles", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teacher_grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert report["teacher_loss_ratio"] == pytest.approx(1.0, abs=1e-6)
    table = Diagnosis(**{k: v for k, v in report.items() if k not in ("verdict", "reasons")}).table()
    assert "gradient cosine        1.0000" in table
    assert "loss ratio             1.000" in table


# --- pretraining a compact AE, and distilling it from a teacher
def _args(out: Path, *extra: str) -> list[str]:
    return ["--data", str(IMAGES), "--out", str(out), *COMPACT_FLAGS, "--crop", "32", "--workers", "0",
            "--val", "none", "--batch-size", "2", "--log-every", "2", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(3)
    tiny_ae().save_pretrained(folder)  # same encoder shape as COMPACT: 16 features, growth 8, x4
    return folder


def test_compact_decoder_init_from_a_realesrgan_checkpoint(tmp_path):
    gen = SRVGGNetCompact(num_feat=16, num_conv=2, scale=4)
    torch.save({"params": gen.state_dict()}, tmp_path / "compact_x4.pth")
    out = tmp_path / "run"
    argv = _args(out, "--decoder-init", str(tmp_path / "compact_x4.pth"), "--freeze-decoder-steps", "-1",
                 "--steps", "2", "--save-every", "2")  # fmt: skip
    assert main(argv) == 0
    ae = AutoEncoder.from_pretrained(out)
    assert ae.config["decoder"] == "compact"
    assert all(torch.equal(ae.decoder.state_dict()[k], v) for k, v in gen.state_dict().items())


def test_the_student_starts_from_the_teachers_encoder(teacher_dir, tmp_path):
    cfg = PretrainConfig(data=str(IMAGES), out=tmp_path / "run", teacher=str(teacher_dir), num_feat=16,
                         num_block=2, num_grow_ch=8, decoder="compact")  # fmt: skip
    run = PretrainRun(cfg)
    teacher = AutoEncoder.from_pretrained(teacher_dir)
    assert all(
        torch.equal(run.ae.encoder.state_dict()[k], v) for k, v in teacher.encoder.state_dict().items()
    )
    assert run.teacher is not None
    assert not any(p.requires_grad for p in run.teacher.parameters())


@pytest.mark.slow
def test_distillation_logs_its_term_and_resumes_exactly(teacher_dir, tmp_path, capsys, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    distill = ["--distill-weight", "2", "--distill-noise", "0.1", "--save-every", "3"]
    common = ["--teacher", str(teacher_dir), *distill]
    assert main(_args(straight, *common, "--steps", "6")) == 0
    assert main(_args(split, *common, "--steps", "3")) == 0
    assert main(_args(split, *common, "--steps", "6", "--resume")) == 0
    a, b = (torch.load(p / "checkpoints" / "last.pt", weights_only=True) for p in (straight, split))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    logs = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [round(m["loss_distill"], 6) > 0 for m in logs if "loss_rec" in m] == [True, True, True]
    # a resumed run must keep its teacher's weights (whatever path names them) and the distillation weight
    others = [*distill, "--steps", "9", "--resume"]
    capsys.readouterr()
    assert run_cli(main, _args(split, "--teacher", "demo", *others)) == 2
    assert "the --teacher weights changed since" in capsys.readouterr().err
    code = run_cli(
        main, _args(split, "--teacher", str(teacher_dir), "--save-every", "3", "--steps", "9", "--resume")
    )
    assert code == 2
    assert "distill_weight=2.0 (now 1.0)" in capsys.readouterr().err
    monkeypatch.chdir(teacher_dir.parent)  # the same teacher by another spelling of its path resumes
    again = _args(split, "--teacher", f"./{teacher_dir.name}/", *distill, "--steps", "7", "--resume")
    assert main(again) == 0


def test_distillation_under_amp_is_finite(teacher_dir, tmp_path):
    # fp16: the GradScaler path (bf16 without a teacher: test_pretrain.py::test_amp_runs_on_cpu)
    skip_without_fp16_training("cpu")
    out = tmp_path / "run"
    teacher = ["--teacher", str(teacher_dir), "--distill-noise", "0.1"]
    argv = _args(out, *teacher, "--amp", "fp16", "--steps", "2")
    assert main(argv) == 0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    terms = [(m["loss_rec"], m["loss_distill"]) for m in logs if "loss_rec" in m]
    assert len(terms) == 1
    assert all(0 < x < 10 for x in terms[0])


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_distilling_from_an_identical_teacher_adds_nothing(tmp_path, noise):
    # the distillation terms (outputs, and responses to perturbations) vanish when student == teacher
    cfg = PretrainConfig(data=str(IMAGES), out=tmp_path / "run", **{k: v for k, v in COMPACT.items()},
                         distill_noise=noise, crop=32)  # fmt: skip
    run = PretrainRun(cfg)
    run.teacher = AutoEncoder(**run.ae.config)
    run.teacher.load_state_dict(run.ae.state_dict())
    run.teacher.requires_grad_(False).eval()
    hr = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    lr = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    rec, bott, loss = run.train_step(hr, lr)
    assert loss.item() == pytest.approx((rec + bott).item(), abs=1e-7)
    run.teacher = None
    other = AutoEncoder(**run.ae.config)
    with torch.no_grad():  # a teacher whose outputs differ clearly from the student's
        for p in other.decoder.parameters():
            p.normal_(0, 0.1)
    distilled = PretrainRun(cfg, teacher=other.requires_grad_(False))
    rec, bott, loss = distilled.train_step(hr, lr)
    assert loss.item() > (rec + bott).item() + 1e-4  # a different teacher: a real distillation term


@pytest.mark.parametrize(
    ("teacher", "needle"),
    [("no/such/ae", "--teacher: 'no/such/ae'"), ("SCALE2", "is a x2 AE; this run is --scale 4")],
    ids=["missing", "scale"],
)
def test_a_bad_teacher_is_one_line_and_leaves_no_folder(tmp_path, capsys, teacher, needle):
    if teacher == "SCALE2":
        tiny_ae(scale=2).save_pretrained(tmp_path / "x2")
        teacher = str(tmp_path / "x2")
    out = tmp_path / "run"
    assert run_cli(main, _args(out, "--teacher", teacher, "--steps", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert needle in err[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Loaded the bundled demo AE")
def test_the_bundled_compact_demo_guides_like_its_teacher_at_a_fraction_of_the_cost():
    from torch.utils.flop_counter import FlopCounterMode

    from aesop_loss.diagnostics import diagnose

    student, teacher = AutoEncoder.from_pretrained("demo-compact"), AutoEncoder.from_pretrained("demo")
    assert student.config["decoder"] == "compact"
    d = diagnose(student, teacher=teacher)
    assert d.teacher_grad_cosine is not None
    assert d.teacher_grad_cosine >= 0.9  # measured 0.977
    rank = {"ok": 0, "warn": 1, "unfit": 2}
    assert rank[d.verdict] <= rank[diagnose(teacher).verdict]  # not worse than the demo's
    x = torch.rand(1, 3, 32, 32)
    flops = []
    for ae in (student, AutoEncoder()):  # the paper's AE
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            ae(x)
        flops.append(counter.get_total_flops())
    assert flops[0] < 0.1 * flops[1]  # 0.027x the paper AE's multiply-adds


@pytest.mark.slow
def test_decoder_init_of_another_scale_and_distillation_flags_without_a_teacher_are_refused(tmp_path, capsys):
    for scale, fmt in ((2, "x2"), (3, "x3")):
        path = tmp_path / f"compact_{fmt}.pth"
        torch.save({"params": SRVGGNetCompact(num_feat=16, num_conv=2, scale=scale).state_dict()}, path)
        code = run_cli(main, _args(tmp_path / f"run{scale}", "--decoder-init", str(path), "--steps", "1"))
        err = capsys.readouterr().err
        assert code == 2
        assert f"is a x{scale} generator" in err
        assert "pass --scale 2" in err if scale == 2 else "x4 or x2" in err
    wide = tmp_path / "wide_x4.pth"  # an RRDB generator of width 24: not a multiple of 4**2
    torch.save({"params": RRDBNet(num_feat=24, num_block=1, num_grow_ch=8).state_dict()}, wide)
    small = ["--steps", "1", "--crop", "32", "--batch-size", "1", "--workers", "0", "--val", "none"]
    argv = ["--data", str(IMAGES), "--out", str(tmp_path / "runwide"), "--decoder-init", str(wide), *small]
    assert run_cli(main, argv) == 2
    assert "num_feat=24 must be divisible by scale**2=16" in capsys.readouterr().err
    gray = tmp_path / "gray_x4.pth"
    gray_net = SRVGGNetCompact(num_in_ch=1, num_out_ch=1, num_feat=16, num_conv=2, scale=4)
    torch.save({"params": gray_net.state_dict()}, gray)
    assert run_cli(main, _args(tmp_path / "rungray", "--decoder-init", str(gray), "--steps", "1")) == 2
    assert "is a generator of 1-channel images" in capsys.readouterr().err
    for flags in (["--distill-noise", "0.1"], ["--distill-weight", "2"]):
        assert run_cli(main, _args(tmp_path / "run", *flags, "--steps", "1")) == 2
        assert "without --teacher they would be ignored" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
