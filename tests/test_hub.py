from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from aesop_loss import AESOPLoss, AutoEncoder, CheckpointError, RRDBNet
from aesop_loss.checkpoints import canonicalize_rrdbnet
from aesop_loss.cli import run_cli
from aesop_loss.convert import main as convert_main

from conftest import AE_CKPT, TINY, rel_err
from hubserver import COMMIT, serve_hub


@pytest.mark.parametrize(
    "config",
    [{"scale": 4}, {"scale": 2}, {"scale": 4, "encoder": "bicubic"}, {"scale": 2, "encoder": "bicubic"}],
    ids=["x4", "x2", "x4-bicubic", "x2-bicubic"],
)
def test_save_load_round_trip_is_bit_identical(tmp_path, config):
    torch.manual_seed(0)
    ae = AutoEncoder(**TINY, **config)
    folder = ae.save_pretrained(tmp_path / "ae", training_data="unit test", training_steps=3)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "AutoEncoder"
    assert {k: cfg[k] for k in ae.config} == ae.config
    card = (folder / "README.md").read_text()
    assert f"| scale | {config['scale']} |" in card
    assert "unit test" in card
    assert "Auto-Encoded Supervision for Perceptual Image Super-Resolution" in card
    loaded = AutoEncoder.from_pretrained(folder)
    assert loaded.is_pretrained
    assert not loaded.training
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), ae(x))
    # a single .safetensors file alone works too (hyperparameters inferred from shapes)
    single = AutoEncoder.from_pretrained(folder / "model.safetensors")
    assert single.config == ae.config


def test_rrdbnet_round_trip(tmp_path):
    net = RRDBNet(**TINY, scale=2)
    net.save_pretrained(tmp_path)
    loaded = RRDBNet.from_pretrained(tmp_path)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_convert_cli_reproduces_golden(tmp_path, ae_golden, capsys):
    out = tmp_path / "aesop-ae"
    assert convert_main([str(AE_CKPT), str(out), "--training-data", "DF2K"]) == 0
    card = (out / "README.md").read_text()
    assert hashlib.sha256(AE_CKPT.read_bytes()).hexdigest() in card
    assert "official_rrdb_ae_small.pth" in card
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert len(weights) == 178 - 68  # the duplicated encoder keys are gone
    ae = AutoEncoder.from_pretrained(out)
    with torch.no_grad():
        for key, fn, src in (("gt_ae", ae, "gt"), ("sr_ae", ae, "sr"), ("gt_bottleneck", ae.encode, "gt")):
            assert rel_err(fn(ae_golden[src]), ae_golden[key]) <= 1e-5
    sr = ae_golden["sr"].clone().requires_grad_()
    loss = AESOPLoss(out)(sr, ae_golden["gt"])
    loss.backward()
    assert rel_err(loss.detach().reshape(1), ae_golden["loss_l1"]) <= 1e-5
    assert rel_err(sr.grad, ae_golden["grad_l1"]) <= 1e-5


def test_convert_help_names_the_source(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "AE_RRDBdecoder_100K.pth" in out
    assert "RealAE_RRDBdecoder_100K.pth" in out
    assert "github.com/2minkyulee" in out


def test_convert_cli_bad_source_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    assert run_cli(convert_main, [str(tmp_path / "bad.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "bad.pth" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- Hub ids through huggingface_hub's real code path --------------------------------------------

_LOAD = textwrap.dedent(
    """
    import json, sys, torch
    from aesop_loss import AutoEncoder, CheckpointError
    for src in sys.argv[1:]:
        try:
            ae = AutoEncoder.from_pretrained(src)
        except CheckpointError as exc:
            print(json.dumps({"src": src, "error": str(exc)}))
            continue
        torch.manual_seed(0)
        with torch.no_grad():
            print(json.dumps({"src": src, "sum": float(ae(torch.rand(1, 3, 16, 16)).sum())}))
    """
)


def _run_load(srcs: list[str], env: dict[str, str]) -> dict[str, dict[str, object]]:
    full = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, *srcs],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        check=True,
    )
    return {r["src"]: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.slow
def test_hub_repo_id_download_then_offline_cache(tmp_path):
    ae = AutoEncoder(**TINY)
    ae.save_pretrained(tmp_path / "repo")
    torch.manual_seed(0)
    with torch.no_grad():
        expected = float(ae(torch.rand(1, 3, 16, 16)).sum())
    cache = {"HF_HOME": str(tmp_path / "hf")}
    with serve_hub({"aesop/tiny-ae": tmp_path / "repo"}) as (endpoint, log):
        online = _run_load(
            ["aesop/tiny-ae", f"aesop/tiny-ae@{COMMIT}", "aesop/no-such-ae", "aesop/tiny-ae@v9"],
            {**cache, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
        )
    assert any("/aesop/tiny-ae/resolve/main/config.json" in line for line in log)
    assert any("/aesop/tiny-ae/resolve/main/model.safetensors" in line for line in log)
    assert online["aesop/tiny-ae"]["sum"] == expected
    assert online[f"aesop/tiny-ae@{COMMIT}"]["sum"] == expected
    assert "no such repo on the Hub" in str(online["aesop/no-such-ae"]["error"])
    assert "revision 'v9' does not exist" in str(online["aesop/tiny-ae@v9"]["error"])
    # the server is gone: the populated cache serves the same weights offline
    offline = _run_load(["aesop/tiny-ae", "aesop/other-ae"], {**cache, "HF_HUB_OFFLINE": "1"})
    assert offline["aesop/tiny-ae"]["sum"] == expected
    error = str(offline["aesop/other-ae"]["error"])
    assert "not in the local Hugging Face cache" in error
    assert "pass a local folder" in error


def test_no_network_at_import():
    code = (
        "import socket\nsocket.socket.connect = None\n"
        "import aesop_loss, aesop_loss.hub, aesop_loss.convert\nprint('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "ok"


# --- decoder initialisation from the three generator layouts -------------------------------------


def _original_esrgan_layout(sd: dict[str, torch.Tensor], num_block: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith("body."):
            _, i, rdb, conv, kind = k.split(".")
            out[f"model.1.sub.{i}.RDB{rdb[-1]}.{conv}.0.{kind}"] = v
        else:
            name, kind = k.split(".")
            index = {
                "conv_first": "0",
                "conv_up1": "3",
                "conv_up2": "6",
                "conv_hr": "8",
                "conv_last": "10",
            }.get(name)
            key = f"model.{index}.{kind}" if index else f"model.1.sub.{num_block}.{kind}"
            out[key] = v
    return out


def _trunk_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renames = {"conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}
    out = {}
    for k, v in sd.items():
        if k.startswith("body."):
            _, i, rdb, rest = k.split(".", 3)
            out[f"RRDB_trunk.{i}.RDB{rdb[-1]}.{rest}"] = v
        else:
            name, kind = k.split(".")
            out[f"{renames.get(name, name)}.{kind}"] = v
    return out


@pytest.mark.parametrize("layout", ["basicsr", "esrgan", "trunk"])
@pytest.mark.parametrize("scale", [4, 2])
def test_decoder_init_from_generator_layouts(tmp_path, layout, scale):
    if layout == "esrgan" and scale == 2:
        pytest.skip("the original ESRGAN release has x4 models only")
    torch.manual_seed(1)
    gen = RRDBNet(**TINY, scale=scale)
    sd = gen.state_dict()
    payload = {
        "basicsr": {"params_ema": sd},
        "esrgan": _original_esrgan_layout(sd, TINY["num_block"]),
        "trunk": _trunk_layout(sd),
    }[layout]
    torch.save(payload, tmp_path / "gen.pth")
    assert (
        canonicalize_rrdbnet(torch.load(tmp_path / "gen.pth", weights_only=True).get("params_ema", payload))[
            1
        ]
        == gen.config
    )
    loaded = RRDBNet.from_pretrained(tmp_path / "gen.pth")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), gen(x))
    ae = AutoEncoder.from_decoder(tmp_path / "gen.pth")
    assert ae.config == {"num_in_ch": 3, **TINY, "scale": scale, "encoder": "learned", "decoder": "rrdb"}
    assert not ae.is_pretrained
    z = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(ae.decode(z), gen(z))


# --- bad input ------------------------------------------------------------------------------------


def test_folder_without_config(tmp_path):
    AutoEncoder(**TINY).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        AutoEncoder.from_pretrained(tmp_path)


def test_config_that_does_not_match_weights(tmp_path):
    AutoEncoder(**TINY).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_block"] = 3  # the weights have 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"config\.json: does not match model\.safetensors: num_block=3"
    ):
        AutoEncoder.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda text: "{not json", "not valid JSON"),
        (
            lambda text: json.dumps({**json.loads(text), "architecture": "RRDBNet"}),
            r"RRDBNet\.from_pretrained",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "depth": 9}),
            r"unknown AutoEncoder settings \['depth'\]",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "scale": 3}),
            r"does not match.*scale=3 \(weights: 4\)",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "encoder": "vae"}),
            r"encoder='vae' \(weights: 'learned'\)",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "num_feat": True}),
            r"invalid configuration: num_feat=True",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "num_feat": 16.0}),
            r"invalid configuration: num_feat=16\.0",
        ),
    ],
    ids=["bad-json", "wrong-architecture", "unknown-key", "bad-value", "bad-encoder", "bool", "float"],
)
def test_malformed_config(tmp_path, edit, needle):
    AutoEncoder(**TINY).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(edit(path.read_text()))
    with pytest.raises(CheckpointError, match=needle):
        AutoEncoder.from_pretrained(tmp_path)


def test_truncated_safetensors(tmp_path):
    AutoEncoder(**TINY).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        AutoEncoder.from_pretrained(tmp_path)


@pytest.mark.parametrize("src", ["org/name@a@b", "not a repo", "a/b/c/d"])
def test_neither_path_nor_repo_id(src):
    with pytest.raises((CheckpointError, ValueError)):
        AutoEncoder.from_pretrained(src)


def test_conflicting_revisions():
    with pytest.raises(ValueError, match="pins revision"):
        AutoEncoder.from_pretrained("org/name@v1", revision="v2")


def test_device_argument(tmp_path):
    AutoEncoder(**TINY).save_pretrained(tmp_path)
    ae = AutoEncoder.from_pretrained(tmp_path, device="cpu")
    assert next(ae.parameters()).device.type == "cpu"


_PUSH = textwrap.dedent(
    """
    import sys, torch
    from aesop_loss import AutoEncoder
    from aesop_loss.convert import main as convert
    from aesop_loss.pretrain import main as pretrain
    ckpt, images, work = sys.argv[1:4]
    torch.manual_seed(0)
    ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)  # conftest.TINY
    print("url", ae.push_to_hub("aesop/pushed", training_data="unit test"))
    assert convert([ckpt, work + "/converted", "--push-to-hub", "aesop/converted"]) == 0
    tiny = ["--num-feat", "16", "--num-block", "1", "--num-grow-ch", "8", "--crop", "32", "--workers", "0"]
    assert pretrain(["--data", images, "--out", work + "/run", "--val", "none", "--steps", "2",
                     "--batch-size", "1", *tiny, "--push-to-hub", "aesop/pretrained"]) == 0
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        converted = AutoEncoder.from_pretrained(work + "/converted")
        trained = AutoEncoder.from_pretrained(work + "/run")
        pairs = (("aesop/pushed", ae), ("aesop/converted", converted), ("aesop/pretrained", trained))
        for repo, local in pairs:
            assert torch.equal(AutoEncoder.from_pretrained(repo)(x), local(x)), repo
    print("ok")
    """
)


@pytest.mark.slow
def test_push_to_hub_round_trip(tmp_path):
    from conftest import IMAGES

    with serve_hub({}, uploads=tmp_path / "hub") as (endpoint, log):
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test",
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", _PUSH, str(AE_CKPT), str(IMAGES), str(tmp_path)],
            capture_output=True, text=True, env=env, timeout=180,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert any("/api/models/aesop/pushed/commit/main" in line for line in log)
    for repo in ("pushed", "converted", "pretrained"):
        assert sorted(p.name for p in (tmp_path / "hub" / "aesop" / repo).iterdir()) == [
            "README.md", "config.json", "model.safetensors",
        ]  # fmt: skip
    assert (
        hashlib.sha256(AE_CKPT.read_bytes()).hexdigest()
        in (tmp_path / "hub" / "aesop" / "converted" / "README.md").read_text()
    )


# --- hostile or broken model files: refused fast, by name ------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_block", 10**9), ("num_feat", 10**7), ("num_grow_ch", 2**40), ("num_block", 1000)],
    ids=["huge-blocks", "huge-feat", "huge-grow", "bounded-but-not-the-weights"],
)
def test_hostile_config_fails_fast_before_allocating(tmp_path, key, value):
    import time

    AutoEncoder(**TINY).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"config\.json: .*{key}={value}"):
        AutoEncoder.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("dtype", "poison", "needle"),
    [
        (torch.int8, None, r"'decoder\.conv_first\.weight' is torch\.int8, not a float tensor"),
        (torch.bool, None, r"'decoder\.conv_first\.weight' is torch\.bool"),
        (torch.float32, float("nan"), r"'decoder\.conv_first\.weight' holds NaN or Inf"),
        (torch.float32, float("inf"), r"'decoder\.conv_first\.weight' holds NaN or Inf"),
    ],
    ids=["int8", "bool", "nan", "inf"],
)
@pytest.mark.parametrize("container", ["folder", "pth"])
def test_non_float_or_non_finite_weights_are_refused(tmp_path, dtype, poison, needle, container):
    from aesop_loss._io import save_safetensors

    sd = AutoEncoder(**TINY).state_dict()
    key = "decoder.conv_first.weight"
    sd[key] = sd[key].to(dtype) if poison is None else sd[key].clone().fill_(poison)
    if container == "folder":
        AutoEncoder(**TINY).save_pretrained(tmp_path)
        save_safetensors(sd, str(tmp_path / "model.safetensors"))
        src = tmp_path
    else:
        src = tmp_path / "ae.pth"
        torch.save({"params_ema": sd}, src)
    with pytest.raises(CheckpointError, match=needle):
        AutoEncoder.from_pretrained(src)


class _RunsCode:
    def __init__(self, func, *args):  # type: ignore[no-untyped-def]
        self.call = (func, args)

    def __reduce__(self):  # what a malicious pickle does: call something while loading
        return self.call


@pytest.mark.parametrize(
    ("func", "args", "shown"),
    [(os.system, ("echo pwned",), "system"), (print, ("pwned",), "print"), (eval, ("1",), "eval")],
    ids=["os.system", "print", "eval"],
)
def test_pickle_that_would_run_code_is_refused_for_safety(tmp_path, capfd, func, args, shown):
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": AutoEncoder(**TINY).state_dict(), "x": _RunsCode(func, *args)}, path)
    with pytest.raises(
        CheckpointError, match=rf"refused for safety: it holds pickled Python objects \(.*{shown}"
    ):
        AutoEncoder.from_pretrained(path)
    assert "pwned" not in capfd.readouterr().out


@pytest.mark.parametrize(
    "payload",
    [b"hello, I am a text file\n", b"PK\x03\x04 not really a zip", b"\x80\x02}q\x00."[:3]],
    ids=["text", "fake-zip", "cut-pickle"],
)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_any_non_checkpoint_file_is_a_checkpoint_error(tmp_path, payload, suffix):
    path = tmp_path / f"ae{suffix}"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"not a readable"):
        AutoEncoder.from_pretrained(path)


@pytest.mark.parametrize("src", ["org/..", "org/a--b", "../x", "org/name.", "a" * 97 + "/b"])
def test_invalid_repo_ids_are_checkpoint_errors(src):
    with pytest.raises(CheckpointError):
        AutoEncoder.from_pretrained(src)


def test_missing_local_looking_path_says_so_without_the_hub(tmp_path, monkeypatch):
    import aesop_loss.hub as hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_hub(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(hub, "hf_hub_download", no_hub)
    with pytest.raises(CheckpointError, match=r"^runs/ae: no such file or folder \(runs exists here"):
        AutoEncoder.from_pretrained("runs/ae")


def test_hub_id_that_is_missing_says_the_local_path_is_missing_first():
    with pytest.raises(
        CheckpointError, match=r"^nobody/nothing: no such local file or folder; as a Hub repo"
    ):
        AutoEncoder.from_pretrained("nobody/nothing", local_files_only=True)


_REFUSALS = {  # how torch.load(weights_only=True) words the refusal, by version (2.13 is also tested live)
    "2.1-2.3": "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will "
    "likely succeed, but it can result in arbitrary code execution.Do it only if you get the file from a "
    "trusted source. WeightsUnpickler error: Unsupported class builtins.print",
    "2.4-2.5": "Weights only load failed. ... WeightsUnpickler error: Unsupported global: GLOBAL "
    "builtins.print was not an allowed global by default.",
    "2.6+": "Weights only load failed. ...\n\nTrying to load unsupported GLOBAL posix.system whose module "
    "posix is blocked.",
}


@pytest.mark.parametrize("version", list(_REFUSALS))
def test_pickle_refusal_is_recognised_in_every_supported_torch_wording(tmp_path, monkeypatch, version):
    import pickle

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise pickle.UnpicklingError(_REFUSALS[version])

    (tmp_path / "evil.pth").write_bytes(b"not read: torch.load is replaced")
    monkeypatch.setattr(torch, "load", refuse)
    shown = "posix.system" if version == "2.6+" else "builtins.print"
    with pytest.raises(
        CheckpointError, match=rf"refused for safety: it holds pickled Python objects \({shown}\)"
    ):
        AutoEncoder.from_pretrained(tmp_path / "evil.pth")


@pytest.mark.parametrize("num_block", [0, 1])
@pytest.mark.parametrize("decoder", ["rrdb", "compact"])
@pytest.mark.parametrize("encoder", ["learned", "bicubic"])
def test_every_constructible_ae_round_trips_through_a_folder(tmp_path, encoder, decoder, num_block):
    # without an RRDB anywhere (bicubic encoder, no decoder blocks) the weights cannot show the growth:
    # config.json's value stands, where it used to be refused as "num_grow_ch=8 (weights: 32)"
    ae = AutoEncoder(num_feat=16, num_block=num_block, num_grow_ch=8, encoder=encoder, decoder=decoder)
    ae.save_pretrained(tmp_path / "ae")
    back = AutoEncoder.from_pretrained(tmp_path / "ae")
    assert back.config == ae.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ae.state_dict().items())
