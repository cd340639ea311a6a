from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from aesop_loss import AutoEncoder, CheckpointError, RRDBNet
from aesop_loss.checkpoints import canonicalize_autoencoder, read_state_dict

from conftest import AE_CKPT, OFFICIAL, RRDB_CKPT, TINY, rel_err, skip_without_autocast


@pytest.mark.usefixtures("strict_fp32")
def test_rrdbnet_matches_basicsr_fixture(device, rrdb_golden):
    net = RRDBNet.from_pretrained(RRDB_CKPT, device=device)
    assert net.config == {
        "num_in_ch": 3,
        "num_out_ch": 3,
        "num_feat": 32,
        "num_block": 1,
        "num_grow_ch": 8,
        "scale": 4,
    }
    with torch.no_grad():
        out = net(rrdb_golden["lr"].to(device))
    assert out.shape == (1, 3, 48, 64)
    assert rel_err(out, rrdb_golden["sr"]) <= 1e-5


def test_rrdbnet_prefers_params_ema(tmp_path):
    net_a, net_b = RRDBNet(**TINY), RRDBNet(**TINY)
    torch.save({"params": net_a.state_dict(), "params_ema": net_b.state_dict()}, tmp_path / "g.pth")
    loaded = RRDBNet.from_pretrained(tmp_path / "g.pth")
    assert torch.equal(loaded.conv_first.weight, net_b.conv_first.weight)


@pytest.mark.usefixtures("strict_fp32")
@pytest.mark.parametrize("key", ["gt_ae", "sr_ae", "gt_bottleneck"])
def test_autoencoder_matches_reference_outputs(device, ae_golden, key):
    ae = AutoEncoder.from_pretrained(AE_CKPT, device=device)
    src = ae_golden["sr" if key.startswith("sr") else "gt"].to(device)
    with torch.no_grad():
        out = ae.encode(src) if key == "gt_bottleneck" else ae(src)
    assert out.shape == ae_golden[key].shape
    assert rel_err(out, ae_golden[key]) <= 1e-5


def test_reference_checkpoint_config_and_dedup():
    raw = read_state_dict(AE_CKPT)
    assert len(raw) == 178
    sd, config = canonicalize_autoencoder(raw)
    assert config == {
        "num_in_ch": 3,
        "num_feat": 32,
        "num_block": 1,
        "num_grow_ch": 8,
        "scale": 4,
        "encoder": "learned",
        "decoder": "rrdb",
    }
    assert not any(k.startswith(("conv_first.", "body.", "conv_last.")) for k in sd)
    ae = AutoEncoder(**config)
    assert set(ae.state_dict()) == set(sd)


def _full_layout_checkpoint(tmp_path):
    layout = json.loads((OFFICIAL / "official_rrdb_ae_x4_state_dict_layout.json").read_text())["entries"]
    assert len(layout) == 838
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in layout.items():
        sd[key] = torch.randn(shape, generator=gen) * 0.01
    aliases = {"conv_first.": "encoder.0.", "body.": "encoder.2.", "conv_last.": "encoder.3."}
    for key in sd:
        for alias, target in aliases.items():
            if key.startswith(alias):
                sd[key] = sd[target + key[len(alias) :]]
    return sd


def test_full_size_reference_layout_loads_strictly(tmp_path):
    sd = _full_layout_checkpoint(tmp_path)
    torch.save({"params_ema": sd}, tmp_path / "AE_RRDBdecoder_100K.pth")
    ae = AutoEncoder.from_pretrained(tmp_path / "AE_RRDBdecoder_100K.pth")
    assert ae.config == AutoEncoder().config  # the paper's AE is the default
    assert len(ae.state_dict()) == 838 - 136 // 2
    n_dec = sum(p.numel() for p in ae.decoder.parameters())
    n_enc = sum(p.numel() for p in ae.encoder.parameters())
    assert round(n_dec / 1e6, 2) == 16.70
    assert round(n_enc / 1e6, 2) == 1.48
    assert torch.equal(ae.encoder[0][0].weight, sd["conv_first.0.weight"])


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda sd: sd.__setitem__("decoder.extra.weight", torch.zeros(1)), "decoder.extra.weight"),
        (lambda sd: sd.pop("decoder.conv_hr.bias"), "decoder.conv_hr.bias"),
        (lambda sd: sd.pop("encoder.3.1.bias"), "encoder.3.1.bias"),
        (lambda sd: sd.__setitem__("decoder.conv_up1.bias", torch.zeros(5)), "decoder.conv_up1.bias"),
    ],
    ids=["extra-key", "missing-key", "missing-aliased-key", "wrong-shape"],
)
def test_bad_keys_are_named(tmp_path, mutate, needle):
    sd = dict(read_state_dict(AE_CKPT))
    mutate(sd)
    torch.save({"params_ema": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        AutoEncoder.from_pretrained(tmp_path / "bad.pth")


def test_aliases_that_disagree_are_rejected(tmp_path):
    sd = dict(read_state_dict(AE_CKPT))
    sd["body.0.rdb1.conv1.bias"] = sd["body.0.rdb1.conv1.bias"] + 1
    torch.save({"params_ema": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="differ"):
        AutoEncoder.from_pretrained(tmp_path / "bad.pth")


def test_module_prefix_and_params_key(tmp_path, ae_golden):
    sd = {f"module.{k}": v for k, v in read_state_dict(AE_CKPT).items()}
    torch.save({"params": sd}, tmp_path / "ddp.pth")
    ae = AutoEncoder.from_pretrained(tmp_path / "ddp.pth")
    with torch.no_grad():
        assert rel_err(ae(ae_golden["gt"]), ae_golden["gt_ae"]) <= 1e-5


@pytest.mark.parametrize("scale", [2, 4])
def test_autoencoder_shapes(scale):
    ae = AutoEncoder(**TINY, scale=scale)
    x = torch.rand(2, 3, 16, 24)
    z = ae.encode(x)
    assert z.shape == (2, 3, 16 // scale, 24 // scale)
    assert ae.decode(z).shape == x.shape
    assert ae(x).shape == x.shape
    # the encoder's hidden width is num_feat / scale**2, unshuffled back to num_feat
    assert ae.encoder[0][0].out_channels == 16 // scale**2
    assert len(ae.encoder[1]) == {2: 1, 4: 2}[scale]


def test_x2_round_trip_through_reference_format(tmp_path):
    ae = AutoEncoder(**TINY, scale=2)
    sd = ae.state_dict()
    # write it the way the reference code would: encoder parts registered twice
    ref = dict(sd)
    for alias, target in {
        "conv_first.": "encoder.0.",
        "body.": "encoder.2.",
        "conv_last.": "encoder.3.",
    }.items():
        ref.update({alias + k[len(target) :]: v for k, v in sd.items() if k.startswith(target)})
    torch.save({"params_ema": ref}, tmp_path / "x2.pth")
    loaded = AutoEncoder.from_pretrained(tmp_path / "x2.pth")
    assert loaded.config == ae.config
    x = torch.rand(1, 3, 12, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), ae(x))


def test_bicubic_encoder_and_reference_ablation_checkpoint(tmp_path):
    ae = AutoEncoder(**TINY, encoder="bicubic")
    assert sum(p.numel() for p in ae.encoder.parameters()) == 0
    x = torch.rand(1, 3, 16, 16)
    expected = F.interpolate(x, scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(ae.encode(x), expected)
    # the reference's BicubicDown_RRDBNet still holds unused conv_first/body/conv_last weights
    learned = AutoEncoder(**TINY)
    dead = {
        k.replace("encoder.0.", "conv_first.")
        .replace("encoder.2.", "body.")
        .replace("encoder.3.", "conv_last."): v
        for k, v in learned.state_dict().items()
        if k.startswith("encoder.")
    }
    torch.save({"params_ema": {**ae.state_dict(), **dead}}, tmp_path / "bicubic.pth")
    loaded = AutoEncoder.from_pretrained(tmp_path / "bicubic.pth")
    assert loaded.config["encoder"] == "bicubic"
    with torch.no_grad():
        assert torch.equal(loaded(x), ae(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bicubic_encoder_takes_reduced_precision_input(dtype, device):
    # antialiased bicubic has no bf16/fp16 kernel on CPUs (torch 2.13 raises NotImplementedError), so
    # AESOPLoss(precision="bf16") with a bicubic-encoder AE (the bundled demo) crashed
    from aesop_loss import AESOPLoss

    ae = AutoEncoder(**TINY, encoder="bicubic").to(device)
    x = torch.rand(2, 3, 32, 32, device=device)
    z = ae.encode(x.to(dtype))
    assert z.dtype == dtype
    assert torch.allclose(z.float(), ae.encode(x), atol=1e-2)
    # as a framework calls it: a net's output made inside autocast, the AE following it ("auto")
    skip_without_autocast(device.type, dtype)
    ae.is_pretrained = True
    net = torch.nn.Conv2d(3, 3, 3, padding=1).to(device)
    with torch.autocast(device.type, dtype=dtype):
        sr = net(x)
        assert sr.dtype == dtype
        value = AESOPLoss(ae, precision="auto")(sr, torch.rand_like(x))
    value.backward()
    assert net.weight.grad is not None
    assert torch.isfinite(net.weight.grad).all()


def test_constructor_validation():
    with pytest.raises(ValueError, match="scale"):
        AutoEncoder(scale=3)
    with pytest.raises(ValueError, match="divisible"):
        AutoEncoder(num_feat=24, scale=4)
    with pytest.raises(ValueError, match="encoder"):
        AutoEncoder(encoder="conv")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AutoEncoder(64)  # type: ignore[misc]  # keyword-only


def test_is_pretrained_flag(tmp_path):
    ae = AutoEncoder(**TINY)
    assert not ae.is_pretrained
    ae2 = AutoEncoder(**TINY)
    ae2.load_state_dict(ae.state_dict())
    assert ae2.is_pretrained


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "not a readable"),
        (b"\x00garbage" * 10, "not a readable"),
    ],
    ids=["empty", "garbage"],
)
def test_unreadable_files(tmp_path, payload, needle):
    path = tmp_path / "broken.pth"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=needle):
        AutoEncoder.from_pretrained(path)


def test_truncated_checkpoint(tmp_path):
    data = AE_CKPT.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*(truncated|corrupted)"):
        AutoEncoder.from_pretrained(tmp_path / "cut.pth")


class _Payload:
    def __reduce__(self):  # what a malicious pickle does
        return (print, ("pwned",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    torch.save({"params_ema": read_state_dict(AE_CKPT), "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused for safety: .*pickled Python objects \(.*print\)"):
        AutoEncoder.from_pretrained(tmp_path / "evil.pth")
    assert "pwned" not in capsys.readouterr().out


def test_missing_file():
    with pytest.raises(CheckpointError, match="no such"):
        AutoEncoder.from_pretrained("./nope/ae.pth")


def test_generator_checkpoint_given_to_autoencoder():
    with pytest.raises(CheckpointError, match="from_decoder"):
        AutoEncoder.from_pretrained(RRDB_CKPT)


def test_autoencoder_checkpoint_given_to_rrdbnet():
    with pytest.raises(CheckpointError, match=r"AutoEncoder\.from_pretrained"):
        RRDBNet.from_pretrained(AE_CKPT)
