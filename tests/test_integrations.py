"""Each framework adapter gives exactly ``loss_weight * L_AESOP`` under that framework's own rules.

The frameworks are not installed: each is stood in for by the few lines of its code that decide the
value of the loss (how the registry names and builds losses, how the model calls them, who applies
the weight), written from its source (BasicSR 1.4.2; neosr and traiNNer-redux at their mains) and
cited by file. traiNNer-redux's AE is stood in for the same way, from
``traiNNer/archs/autoencoder_arch.py`` and spandrel's ESRGAN (``model.N`` layout).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aesop_loss import AESOPLoss, AutoEncoder, CheckpointError
from aesop_loss._io import save_safetensors
from aesop_loss.checkpoints import canonicalize_autoencoder, trainner_autoencoder_state_dict
from aesop_loss.cli import run_cli
from aesop_loss.convert import main as convert_main
from aesop_loss.integrations import basicsr, neosr, trainner

from conftest import TinySRNet, skip_without_autocast, tiny_ae, warnings_as_errors

WEIGHTS = [1.0, 0.5, -0.5]


# --- the frameworks' registries (basicsr/utils/registry.py, neosr/utils/registry.py,
# traiNNer/utils/registry.py): register(obj) under obj.__name__, asserting it is new; get(name) with a
# "name_<suffix>" fallback. traiNNer-redux lower-cases names in both.
class Registry:
    def __init__(self, suffix: str, *, lower: bool = False) -> None:
        self.suffix, self.lower, self.objects = suffix, lower, {}

    def _key(self, name: str) -> str:
        return name.lower() if self.lower else name

    def register(self, obj: Any) -> None:
        name = self._key(obj.__name__)
        assert name not in self.objects, f"An object named '{name}' was already registered"
        self.objects[name] = obj

    def get(self, name: str) -> Any:
        name = self._key(name)
        found = self.objects.get(name, self.objects.get(f"{name}_{self.suffix}"))
        if found is None:
            raise KeyError(f"No object named '{name}' found in 'loss' registry!")
        return found


def build_loss(registry: Registry, opt: dict[str, Any]) -> nn.Module:
    """``build_loss`` of all three: ``LOSS_REGISTRY.get(opt.pop("type"))(**opt)`` on a copy."""
    opt = copy.deepcopy(opt)
    return registry.get(opt.pop("type"))(**opt)


def basicsr_generator_loss(
    cri_pix: nn.Module, net_g: nn.Module, lq: torch.Tensor, gt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """basicsr/models/esrgan_model.py (no AMP): ``output = net_g(lq)``; ``l_g_pix = cri_pix(output, gt)``,
    added as is. Returns (total, output)."""
    output = net_g(lq)
    l_g_total = 0
    l_g_pix = cri_pix(output, gt)
    l_g_total += l_g_pix
    return l_g_total, output


def neosr_generator_loss(
    opt: dict[str, Any], registry: Registry, net_g: nn.Module, lq: torch.Tensor, gt: torch.Tensor,
    *, amp_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """neosr/models/image.py: built, moved channels-last; with ``use_amp`` the generator's forward and
    the losses run inside one autocast region; added as is. Returns (total, output)."""
    cri_pix = build_loss(registry, opt).to(gt.device, memory_format=torch.channels_last)
    with torch.autocast(device_type=gt.device.type, dtype=amp_dtype, enabled=True):
        output = net_g(lq)
        l_g_total = torch.zeros(1)
        l_g_pix = cri_pix(output, gt)
        l_g_total += l_g_pix
    return l_g_total, output


def trainner_generator_loss(
    losses_opt: list[dict[str, Any]], registry: Registry, net_g: nn.Module, gt: torch.Tensor,
    lq: torch.Tensor, scale: int, *, use_amp: bool = True, amp_bf16: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """traiNNer/models/sr_model.py: losses by label; the generator's forward and the losses inside
    ``autocast(dtype=bf16 if amp_bf16 else fp16, enabled=use_amp)``; a negative weight swaps the
    target for the clamped bicubic-upscaled LR; the model multiplies by ``abs(loss.loss_weight)``.
    Returns (total, logged, output)."""
    # use_channels_last (on in its templates) takes effect with use_amp: losses, lq and gt channels-last
    memory_format = torch.channels_last if use_amp else torch.preserve_format
    losses = {}
    for loss in losses_opt:
        assert "loss_weight" in loss
        if float(loss["loss_weight"]) != 0:
            label = "l_g_" + loss["type"].lower().replace("loss", "")  # loss_type_to_label
            losses[label] = build_loss(registry, loss).to(gt.device, memory_format=memory_format)
    gt, lq = gt.to(memory_format=memory_format), lq.to(memory_format=memory_format)  # feed_data
    total = torch.tensor(0.0)
    logged = {}
    amp_dtype = torch.bfloat16 if amp_bf16 else torch.float16
    with torch.autocast(device_type=gt.device.type, dtype=amp_dtype, enabled=use_amp):
        output = net_g(lq)
        lq_target = None
        for label, loss in losses.items():
            target = gt
            if loss.loss_weight < 0:
                if lq_target is None:
                    with torch.inference_mode():
                        up = F.interpolate(lq, scale_factor=scale, mode="bicubic", antialias=True)
                        lq_target = torch.clamp(up, 0, 1)
                target = lq_target
            weighted = loss(output, target) * abs(loss.loss_weight)
            total = total + weighted
            logged[label] = weighted
    return total, logged, output


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("ae")
    torch.manual_seed(0)
    ae = tiny_ae()
    with torch.no_grad():  # weights that make the loss of order 0.1, so that relative checks bite
        for p in ae.parameters():
            p.normal_(0, 0.12)
    ae.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def batch() -> tuple[TinySRNet, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 3, 32, 32, generator=gen)
    lq = F.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    torch.manual_seed(5)
    return TinySRNet(), gt, lq


def _reference(ae_dir: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_AESOP with weight 1, computed plainly (fp32, contiguous)."""
    with torch.no_grad():
        return AESOPLoss(ae_dir)(output.detach(), target)


def _maybe_negative(weight: float):
    if weight < 0:
        return pytest.warns(UserWarning, match="gradient ascent")
    return warnings_as_errors(UserWarning)


def _grads_reach_the_generator(net_g: nn.Module) -> None:
    grad = net_g.conv.weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("weight", WEIGHTS)
def test_basicsr_gives_weight_times_the_loss(ae_dir, batch, weight):
    net_g, gt, lq = batch
    registry = Registry("basicsr")
    basicsr.register(registry)
    with _maybe_negative(weight):  # BasicSR has no other meaning for a negative weight
        cri_pix = build_loss(registry, {"type": "AESOPLoss", "ae": ae_dir, "loss_weight": weight})
    value, output = basicsr_generator_loss(cri_pix, net_g, lq, gt)
    assert value.item() == pytest.approx(weight * _reference(ae_dir, output, gt).item(), rel=1e-6)
    value.backward()
    _grads_reach_the_generator(net_g)


AMP = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("amp", AMP, ids=["bf16", "fp16"])
@pytest.mark.parametrize("weight", WEIGHTS)
def test_neosr_gives_weight_times_the_loss(ae_dir, batch, weight, amp):
    skip_without_autocast("cpu", amp)
    net_g, gt, lq = batch
    registry = Registry("neosr")
    neosr.register(registry)
    opt = {"type": "AESOPLoss", "ae": ae_dir, "loss_weight": weight}
    with _maybe_negative(weight):
        value, output = neosr_generator_loss(opt, registry, net_g, lq, gt, amp_dtype=amp)
    assert output.dtype == amp  # the generator ran under neosr's autocast
    assert value.dtype == torch.float32  # the AE ran in fp32 inside it
    # channels-last weights move the result by ~1e-6 relative
    expected = weight * _reference(ae_dir, output.float(), gt).item()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.sum().backward()
    _grads_reach_the_generator(net_g)


TRAINNER_AMP = [(False, True), (True, True), (True, False)]  # (use_amp, amp_bf16)


@pytest.mark.parametrize(("use_amp", "amp_bf16"), TRAINNER_AMP, ids=["amp-off", "amp-bf16", "amp-fp16"])
@pytest.mark.parametrize("weight", WEIGHTS)
def test_trainner_gives_abs_weight_times_the_loss_and_its_bicubic_target(
    ae_dir, batch, weight, use_amp, amp_bf16
):
    skip_without_autocast("cpu", torch.float16 if use_amp and not amp_bf16 else None)
    net_g, gt, lq = batch
    registry = Registry("traiNNer", lower=True)
    registry.register(type("AESOPLoss", (nn.Module,), {}))  # traiNNer-redux's own aesoploss
    trainner.register(registry)
    opt = [{"type": "AESOPRefLoss", "ae": ae_dir, "loss_weight": weight}]
    with warnings_as_errors(UserWarning):  # negative is meaningful here
        total, logged, output = trainner_generator_loss(
            opt, registry, net_g, gt, lq, scale=4, use_amp=use_amp, amp_bf16=amp_bf16
        )
    assert output.dtype == (torch.float32 if not use_amp else torch.bfloat16 if amp_bf16 else torch.float16)
    assert list(logged) == ["l_g_aesopref"]
    output = output.float()
    if weight > 0:
        expected = weight * _reference(ae_dir, output, gt)
    else:
        target = F.interpolate(lq, scale_factor=4, mode="bicubic", antialias=True).clamp(0, 1)
        expected = abs(weight) * _reference(ae_dir, output, target)
        assert expected.item() != pytest.approx((abs(weight) * _reference(ae_dir, output, gt)).item())
    # channels-last weights (with AMP) move the result by ~1e-6 relative
    assert total.item() == pytest.approx(expected.item(), rel=1e-5 if use_amp else 1e-6)
    assert total.item() > 0  # never gradient ascent
    total.backward()
    _grads_reach_the_generator(net_g)


def test_trainner_two_entries_need_two_names(ae_dir, batch):
    # traiNNer-redux keys its losses by label (the lower-cased type): a second entry of one type replaces
    # the first without a word, so a second AESOPRefLoss (say, on the bottleneck) is registered apart.
    net_g, gt, lq = batch
    registry = Registry("traiNNer", lower=True)
    trainner.register(registry)
    trainner.register(registry, name="AESOPBottleneckLoss")
    same = [{"type": "AESOPRefLoss", "ae": ae_dir, "loss_weight": 1.0},
            {"type": "AESOPRefLoss", "ae": ae_dir, "loss_weight": 0.5, "space": "bottleneck"}]  # fmt: skip
    _, logged, _ = trainner_generator_loss(same, registry, net_g, gt, lq, scale=4)
    assert list(logged) == ["l_g_aesopref"]  # merged: only the last entry counts
    apart = [same[0], {**same[1], "type": "AESOPBottleneckLoss"}]
    total, logged, output = trainner_generator_loss(apart, registry, net_g, gt, lq, scale=4)
    assert list(logged) == ["l_g_aesopref", "l_g_aesopbottleneck"]
    output = output.float()
    with torch.no_grad():
        bottleneck = AESOPLoss(ae_dir, space="bottleneck")(output, gt)
    expected = _reference(ae_dir, output, gt) + 0.5 * bottleneck
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_plain_class_in_trainner_would_square_the_weight(ae_dir, batch):
    # What the old advice (register AESOPLoss under another name) gave: the stand-in catches it.
    net_g, gt, lq = batch
    registry = Registry("traiNNer", lower=True)
    registry.register(type("AESOPLossRef", (AESOPLoss,), {}))
    opt = [{"type": "AESOPLossRef", "ae": ae_dir, "loss_weight": 0.5}]
    total, _, output = trainner_generator_loss(opt, registry, net_g, gt, lq, scale=4)
    assert total.item() == pytest.approx(0.25 * _reference(ae_dir, output.float(), gt).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["AESOPLoss", "aesoploss", "AesopLoss"])
def test_trainner_refuses_any_casing_of_its_own_aesoploss(name):
    registry = Registry("traiNNer", lower=True)
    registry.register(type("AESOPLoss", (nn.Module,), {}))
    with pytest.raises(ValueError, match=r"already has a loss named .*register\(name=\.\.\.\)"):
        trainner.register(registry, name=name)


def test_trainner_type_is_found_in_any_casing(ae_dir):
    registry = Registry("traiNNer", lower=True)
    cls = trainner.register(registry)
    assert cls is trainner.AESOPRefLoss
    for spelling in ("AESOPRefLoss", "aesoprefloss"):
        assert registry.get(spelling) is cls


@pytest.mark.parametrize("module", [basicsr, neosr])
def test_registering_twice_or_under_a_taken_name_is_one_clear_error(module):
    registry = Registry("x")
    assert module.register(registry) is AESOPLoss
    with pytest.raises(ValueError, match="already has a loss named 'AESOPLoss'"):
        module.register(registry)
    other = module.register(registry, name="aesop_ref")
    assert issubclass(other, AESOPLoss)
    assert other.__name__ == "aesop_ref"
    with pytest.raises(ValueError, match="not a valid loss type name"):
        module.register(registry, name="aesop-loss")


def test_loss_weight_must_be_finite():
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="loss_weight must be finite"):
            AESOPLoss(tiny_ae(), loss_weight=bad)
    with pytest.raises(TypeError, match="loss_weight must be a number"):
        AESOPLoss(tiny_ae(), loss_weight="heavy")


def test_real_basicsr_when_installed(ae_dir, batch):
    registry_module = pytest.importorskip("basicsr.utils.registry")
    losses = pytest.importorskip("basicsr.losses")
    if "AESOPLoss" not in registry_module.LOSS_REGISTRY:
        basicsr.register()
    net_g, gt, lq = batch
    cri_pix = losses.build_loss({"type": "AESOPLoss", "ae": ae_dir, "loss_weight": 0.5})
    value, output = basicsr_generator_loss(cri_pix, net_g, lq, gt)
    assert value.item() == pytest.approx(0.5 * _reference(ae_dir, output, gt).item(), rel=1e-6)


# --- traiNNer-redux's AE, from traiNNer/archs/autoencoder_arch.py and spandrel's ESRGAN blocks:
# spandrel's conv_block is Sequential(conv[, LeakyReLU(0.2)]), so every conv is "convN.0".
class _DenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int = 32) -> None:
        super().__init__()
        for i in range(1, 6):
            conv = nn.Conv2d(nf + (i - 1) * gc, gc if i < 5 else nf, 3, 1, 1)
            setattr(
                self, f"conv{i}", nn.Sequential(conv, nn.LeakyReLU(0.2)) if i < 5 else nn.Sequential(conv)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(getattr(self, f"conv{i}")(torch.cat(feats, 1)))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _SpandrelRRDB(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = _DenseBlock(nf), _DenseBlock(nf), _DenseBlock(nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class _Shortcut(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class _SpandrelESRGAN(nn.Module):
    """traiNNer/archs/rrdbnet_arch.py ``esrgan``: x4 trunk, pixel-unshuffled input at x2."""

    def __init__(self, scale: int, nf: int, nb: int) -> None:
        super().__init__()
        self.shuffle = {4: 1, 2: 2}[scale]
        lrelu = nn.LeakyReLU(0.2)
        up = nn.Upsample(scale_factor=2, mode="nearest")
        self.model = nn.Sequential(
            nn.Conv2d(3 * self.shuffle**2, nf, 3, 1, 1),
            _Shortcut(nn.Sequential(*(_SpandrelRRDB(nf) for _ in range(nb)), nn.Conv2d(nf, nf, 3, 1, 1))),
            up, nn.Conv2d(nf, nf, 3, 1, 1), lrelu, up, nn.Conv2d(nf, nf, 3, 1, 1), lrelu,
            nn.Conv2d(nf, nf, 3, 1, 1), lrelu, nn.Conv2d(nf, 3, 3, 1, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(F.pixel_unshuffle(x, self.shuffle) if self.shuffle > 1 else x)


class _TraiNNerAE(nn.Module):
    def __init__(self, scale: int, nf: int, nb: int) -> None:
        super().__init__()
        hidden = nf // scale**2
        self.conv_first = nn.Sequential(nn.Conv2d(3, hidden, 3, 1, 1), nn.Conv2d(hidden, hidden, 3, 1, 1))
        self.down = nn.PixelUnshuffle(scale)  # at once: the authors unshuffle by 2, twice
        self.body = nn.Sequential(_SpandrelRRDB(nf), _SpandrelRRDB(nf))
        self.conv_last = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.Conv2d(nf, 3, 3, 1, 1))
        self.encoder = nn.Sequential(self.conv_first, self.down, self.body, self.conv_last)
        self.decoder = _SpandrelESRGAN(scale, nf, nb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _trainner_ae(scale: int) -> _TraiNNerAE:
    torch.manual_seed(scale)
    net = _TraiNNerAE(scale, nf=32, nb=1).eval()
    with torch.no_grad():  # weights large enough that a wrong channel order shows
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


def _saved_as_trainner_does(net: nn.Module, path: Path) -> None:
    # traiNNer-redux copies each tensor to the CPU on save, so the aliased encoder keys are separate
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        save_safetensors(sd, str(path))
    else:
        torch.save(sd, path)


@pytest.mark.parametrize(("scale", "suffix"), [(4, ".safetensors"), (2, ".pth"), (4, ".pth")])
def test_trainner_ae_file_loads_strictly_and_computes_the_same(tmp_path, scale, suffix):
    net = _trainner_ae(scale)
    path = tmp_path / f"ae{suffix}"
    _saved_as_trainner_does(net, path)
    ae = AutoEncoder.from_pretrained(path)
    assert ae.config == {"num_in_ch": 3, "num_feat": 32, "num_block": 1, "num_grow_ch": 32,
                         "scale": scale, "encoder": "learned", "decoder": "rrdb"}  # fmt: skip
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = ae(x), net(x)
        z_ours, z_theirs = ae.encode(x), net.encoder(x)
    assert (z_ours - z_theirs).abs().max() < 1e-5 * z_theirs.abs().max()
    assert theirs.abs().max() > 0.01
    assert (ours - theirs).abs().max() < 1e-5 * theirs.abs().max()


@pytest.mark.parametrize("scale", [4, 2])
def test_our_ae_in_trainner_layout_loads_into_trainner_and_round_trips_exactly(scale):
    ae = AutoEncoder(num_feat=32, num_block=1, num_grow_ch=32, scale=scale)
    with torch.no_grad():
        for p in ae.parameters():
            p.normal_(0, 0.05)
    sd = trainner_autoencoder_state_dict(ae.state_dict(), ae.config)
    net = _TraiNNerAE(scale, nf=32, nb=1).eval()
    net.load_state_dict(sd, strict=True)  # what traiNNer-redux's AESOPLoss and AE model do
    assert torch.equal(sd["conv_first.0.weight"], sd["encoder.0.0.weight"])
    assert sd["conv_first.0.weight"].data_ptr() != sd["encoder.0.0.weight"].data_ptr()  # safetensors-safe
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ae(x) - net(x)).abs().max() < 1e-5 * ae(x).abs().max()
    back, config = canonicalize_autoencoder(sd)
    assert config == ae.config
    assert back.keys() == ae.state_dict().keys()
    assert max((back[k] - v).abs().max().item() for k, v in ae.state_dict().items()) == 0.0


class _TraiNNerCompact(nn.Module):
    """traiNNer/archs/srvgg_arch.py ``compact`` (spandrel's SRVGGNetCompact with PReLU)."""

    def __init__(self, scale: int, nf: int, num_conv: int, learn_residual: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.learn_residual = learn_residual
        self.body = nn.ModuleList([nn.Conv2d(3, nf, 3, 1, 1), nn.PReLU(nf)])
        for _ in range(num_conv):
            self.body.extend([nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(nf)])
        self.body.append(nn.Conv2d(nf, 3 * scale * scale, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest") if self.learn_residual else out


@pytest.mark.parametrize("scale", [4, 2])
def test_trainner_ae_with_a_compact_decoder_loads_and_computes_the_same(tmp_path, scale):
    net = _trainner_ae(scale)
    net.decoder = _TraiNNerCompact(scale, nf=32, num_conv=3)
    with torch.no_grad():
        for p in net.decoder.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "compact_ae.safetensors"
    _saved_as_trainner_does(net, path)
    ae = AutoEncoder.from_pretrained(path)
    assert ae.config["decoder"] == "compact"
    assert ae.config["num_block"] == 3
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = net(x)
        assert (ae(x) - theirs).abs().max() < 1e-5 * theirs.abs().max()
    back = trainner_autoencoder_state_dict(ae.state_dict(), ae.config)
    assert back.keys() == net.state_dict().keys()


def _nearest_compact(scale: int, learn_residual: bool) -> _TraiNNerCompact:
    """A compact decoder that has learned its job: nearest-neighbour upsampling of the bottleneck,
    by its body alone (``learn_residual: false``) or as the residual's base (body 0)."""
    net = _TraiNNerCompact(scale, nf=32, num_conv=0, learn_residual=learn_residual)
    first, prelu, last = net.body
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first.weight[:3, :, 1, 1] = torch.eye(3)
        prelu.weight.fill_(1.0)  # linear: the bottleneck passes unchanged
        if not learn_residual:
            for c in range(3):
                last.weight[c * scale * scale : (c + 1) * scale * scale, c, 1, 1] = 1.0
    return net


@pytest.mark.parametrize("scale", [4, 2])
def test_trainner_compact_decoder_without_residual_is_refused_by_name(tmp_path, scale):
    x = F.avg_pool2d(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)), 4)
    x = F.interpolate(x, scale_factor=4, mode="bilinear")  # a smooth image, as an AE reconstructs it
    for learn_residual in (True, False):
        net = _trainner_ae(scale)
        net.decoder = _nearest_compact(scale, learn_residual)
        z = F.avg_pool2d(x, scale)
        with torch.no_grad():  # both compute the same function: reading one as the other would not
            assert (net.decoder(z) - x).abs().mean() < 0.05
        path = tmp_path / f"residual_{learn_residual}.safetensors"
        _saved_as_trainner_does(net, path)
        if learn_residual:
            ae = AutoEncoder.from_pretrained(path)
            with torch.no_grad():
                assert torch.allclose(ae.decode(z), net.decoder(z), atol=1e-6)
        else:  # was: loaded silently, computing body + upsampled input (twice the image)
            with pytest.raises(CheckpointError, match="learn_residual: false"):
                AutoEncoder.from_pretrained(path)


_INDEX = torch.zeros(4, dtype=torch.long)  # transformers' relative_position_index buffers are int64
_W = torch.zeros(1)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("SwinIR", {"layers.0.residual_group.blocks.0.attn.relative_position_index": _INDEX}),
        ("HAT", {"layers.0.residual_group.blocks.0.conv_block.cab.0.weight": _W,
                 "layers.0.residual_group.blocks.0.attn.relative_position_index": _INDEX}),
        ("DRCT", {"layers.0.swin1.attn.qkv.weight": _W,
                  "layers.0.swin1.attn.relative_position_index": _INDEX}),
        ("SPANPlus", {"feats.0.eval_conv.weight": _W, "feats.1.block_1.c1_r.sk.weight": _W}),
        ("ArtCNN", {"conv0.weight": _W, "depth_to_space.upscale.0.weight": _W}),
        ("ATD", {"layers.0.residual_group.td.0.weight": _W, "relative_position_index_SA": _INDEX}),
        ("RGT", {"layers.0.blocks.0.gamma": _W, "layers.0.blocks.0.attn.rpi": _INDEX}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_trainner_ae_with_a_transformer_or_other_decoder_is_refused_by_name(tmp_path, name, keys, suffix):
    sd = {k: v for k, v in _trainner_ae(4).state_dict().items() if not k.startswith("decoder.")}
    sd |= {f"decoder.{k}": v for k, v in keys.items()}
    path = tmp_path / f"ae{suffix}"
    save_safetensors(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(CheckpointError, match=rf"decoder is {name}, an architecture aesop-loss does not"):
        AutoEncoder.from_pretrained(path)


@pytest.mark.parametrize(
    ("wrapper", "needle"),
    [
        ({"initted": torch.tensor(True), "step": torch.tensor(3), "online_model.w": torch.zeros(1)},
         "without its averaged weights"),
        ({"ema_model.w": torch.zeros(1), 7: torch.zeros(1)}, "key 7 is a int, not a tensor name"),
    ],
)  # fmt: skip
def test_malformed_ema_wrappers_are_one_checkpoint_error(tmp_path, wrapper, needle):
    path = tmp_path / "net_ae_ema_latest.pth"
    torch.save(wrapper, path)
    with pytest.raises(CheckpointError, match=needle):
        AutoEncoder.from_pretrained(path)


def test_trainner_ae_with_another_decoder_is_refused_naming_it(tmp_path):
    sd = {k: v for k, v in _trainner_ae(4).state_dict().items() if not k.startswith("decoder.")}
    sd |= {"decoder.body.0.weight": torch.zeros(8, 3, 3, 3), "decoder.body.0.bias": torch.zeros(8),
           "decoder.body.2.weight": torch.zeros(8, 8, 3, 3)}  # fmt: skip  # compact with ReLU: no PReLU
    path = tmp_path / "relu_compact_ae.safetensors"
    save_safetensors({k: v.clone().contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"decoder is SRVGGNetCompact without PReLU weights"):
        AutoEncoder.from_pretrained(path)
    for name, keys in _OTHER_DECODERS.items():
        sd = {k: v for k, v in sd.items() if not k.startswith("decoder.")}
        sd |= {f"decoder.{key}": torch.zeros(4, 4, 3, 3) for key in keys}
        save_safetensors({k: v.clone().contiguous() for k, v in sd.items()}, str(path))
        with pytest.raises(CheckpointError) as info:
            AutoEncoder.from_pretrained(path)
        assert str(info.value).splitlines() == [
            f"{path}: a traiNNer-redux AE whose decoder is {name}, an architecture aesop-loss does not "
            "implement; aesop-loss reads AEs with an RRDB (ESRGAN) or SRVGGNetCompact (PReLU) decoder only."
        ]


# A few of each architecture's keys, as spandrel's detection reads them (SwinIR's and DRCT's have an
# ESRGAN-like conv_first, which must not pass for an RRDB generator).
_OTHER_DECODERS = {
    "SPAN": ["conv_1.sk.weight", "block_1.c1_r.sk.weight", "block_1.c1_r.eval_conv.weight",
             "upsampler.0.weight"],
    "SwinIR": ["conv_first.weight", "layers.0.residual_group.blocks.0.attn.relative_position_index",
               "layers.0.residual_group.blocks.0.norm1.weight", "conv_last.weight"],
    "DRCT": ["conv_first.weight", "layers.0.swin1.attn.qkv.weight", "layers.0.adjust1.weight", "norm.weight"],
    "PLKSR / RealPLKSR": ["feats.0.weight", "feats.1.refine.weight", "feats.1.channel_mixer.0.weight"],
}  # fmt: skip


class _EMA(nn.Module):
    """ema_pytorch's ``EMA`` as traiNNer-redux's AE model builds it (``ae_model.py``): the raw network
    as ``online_model``, its average as ``ema_model``, and ``initted`` / ``step`` buffers."""

    def __init__(self, online: nn.Module, ema: nn.Module) -> None:
        super().__init__()
        self.online_model, self.ema_model = online, ema
        self.register_buffer("initted", torch.tensor(True))
        self.register_buffer("step", torch.tensor(1234))


def _saved_as_trainner_save_network_does(net: nn.Module, path: Path) -> None:
    """traiNNer/models/base_model.py ``save_network``: the bare module's state dict without ``module.``
    and ``n_averaged``, contiguous on the CPU; safetensors as it is, ``.pth`` bare (no hyperparameters)."""
    sd = {k.removeprefix("module."): v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
          for k, v in net.state_dict().items() if k != "n_averaged"}  # fmt: skip
    if path.suffix == ".safetensors":
        save_safetensors(sd, str(path))
    else:
        torch.save(sd, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_trainner_ema_wrapper_file_loads_its_ema_weights(tmp_path, suffix):
    online, ema = _trainner_ae(4), _trainner_ae(4)
    with torch.no_grad():  # the average differs from the raw weights
        for p in ema.parameters():
            p.mul_(0.9)
    path = tmp_path / f"net_ae_ema_latest{suffix}"  # traiNNer-redux's experiments/NAME/models/ file
    _saved_as_trainner_save_network_does(_EMA(online, ema), path)
    ae = AutoEncoder.from_pretrained(path)
    assert ae.config == {"num_in_ch": 3, "num_feat": 32, "num_block": 1, "num_grow_ch": 32,
                         "scale": 4, "encoder": "learned", "decoder": "rrdb"}  # fmt: skip
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        theirs, raw = ema(x), online(x)
        assert (ae(x) - theirs).abs().max() < 1e-5 * theirs.abs().max()
        assert (ae(x) - raw).abs().max() > 1e-3 * raw.abs().max()  # the EMA weights, not the online ones
    loss = AESOPLoss(path)  # as ae= in a loss's options
    assert loss(x, x).item() == 0.0


def test_trainner_ema_wrapper_is_read_strictly(tmp_path):
    wrapper = _EMA(_trainner_ae(2), _trainner_ae(2))
    sd = {k: v.detach().clone().contiguous() for k, v in wrapper.state_dict().items()}
    path = tmp_path / "net_ae_ema_latest.safetensors"
    save_safetensors({**sd, "extra.weight": torch.zeros(1)}, str(path))
    unexpected = r"EMA wrapper \(ema_model\.\*\) with unexpected entries extra\.weight"
    with pytest.raises(CheckpointError, match=unexpected):
        AutoEncoder.from_pretrained(path)
    save_safetensors({k: v for k, v in sd.items() if k != "online_model.decoder.model.0.bias"}, str(path))
    with pytest.raises(CheckpointError, match=r"online_model\.\* and ema_model\.\* name different tensors"):
        AutoEncoder.from_pretrained(path)
    save_safetensors({k: v for k, v in sd.items() if k != "ema_model.decoder.model.0.bias"
               and k != "online_model.decoder.model.0.bias"}, str(path))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.conv_first\.bias"):
        AutoEncoder.from_pretrained(path)


def _convert(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``python -m aesop_loss.convert ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = run_cli(convert_main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_to_trainner_writes_once_verifies_and_prints_the_options(tmp_path, capsys):
    ae = AutoEncoder(num_feat=32, num_block=1, num_grow_ch=32)
    ae.save_pretrained(tmp_path / "ae")
    src, out = str(tmp_path / "ae"), tmp_path / "ae_trainner.safetensors"
    code, printed, err = _convert(capsys, src, str(out), "--to", "trainner")
    assert code == 0, err
    assert "type: aesoploss" in printed
    assert f"pretrain_network_ae: {out}" in printed
    assert "decoder_opt: {type: esrgan, num_filters: 32, num_blocks: 1}" in printed
    assert "nf=64" in printed  # this AE has nf=32: says which traiNNer-redux part reads it
    back = AutoEncoder.from_pretrained(out)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ae.state_dict().items())
    code, _, err = _convert(capsys, src, str(out), "--to", "trainner")
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: OUT {out} exists and is left alone (pass --overwrite to replace it); name a new file."
    ]
    assert _convert(capsys, src, str(out), "--to", "trainner", "--overwrite")[0] == 0
    # a user's file of that name is never replaced, --overwrite or not
    users = tmp_path / "users.safetensors"
    save_safetensors({"w": torch.ones(1)}, str(users))
    before = users.read_bytes()
    code, _, err = _convert(capsys, src, str(users), "--to", "trainner", "--overwrite")
    assert code == 2
    assert "not written by this tool" in err
    assert users.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ae",
        "ae_trainner.safetensors",
        "users.safetensors",
    ]


def test_convert_to_trainner_refuses_an_ae_without_an_equivalent(tmp_path, capsys):
    with pytest.warns(UserWarning, match="demo AE"):
        code, _, err = _convert(capsys, "demo", str(tmp_path / "x.safetensors"), "--to", "trainner")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: this AE has no traiNNer-redux equivalent: its encoder is the bicubic ablation "
        "(traiNNer-redux's AE has a learned one); num_grow_ch=16 (traiNNer-redux's RRDB blocks fix it at 32)."
    ]
    assert not (tmp_path / "x.safetensors").exists()


def test_a_class_registered_under_another_name_pickles(ae_dir):
    import pickle

    registry = Registry("traiNNer", lower=True)
    cls = trainner.register(registry, name="AESOPPickleLoss")
    loss = cls(ae_dir, loss_weight=0.5)
    back = pickle.loads(pickle.dumps(loss))  # what torch.save(model) of a model holding it does
    assert type(back).__name__ == "AESOPPickleLoss"
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    assert back(x, x.flip(-1)).item() == loss(x, x.flip(-1)).item()


def test_convert_to_trainner_clears_what_a_killed_conversion_left(tmp_path, capsys):
    AutoEncoder(num_feat=32, num_block=1, num_grow_ch=32).save_pretrained(tmp_path / "ae")
    out = tmp_path / "ae_trainner.safetensors"
    stale = tmp_path / ".ae_trainner.safetensors.k1ll3d_0.tmp"  # atomic_path's temp of a killed run
    stale.write_bytes(b"\0" * 4096)
    others = [tmp_path / ".other.safetensors.abcd.tmp", tmp_path / "ae_trainner.safetensors.tmp",
              tmp_path / ".ae_trainner.safetensors.my-notes.tmp"]  # fmt: skip  # not atomic_path's names
    for other in others:
        other.write_bytes(b"not ours to remove")
    code, _, err = _convert(capsys, str(tmp_path / "ae"), str(out), "--to", "trainner")
    assert code == 0, err
    assert not stale.exists()
    assert all(other.read_bytes() == b"not ours to remove" for other in others)


@pytest.mark.parametrize("src", ["demo", "FOLDER", "MISSING"])
def test_convert_to_a_folder_needs_a_checkpoint_file_and_says_so(tmp_path, capsys, src):
    if src == "FOLDER":
        AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(tmp_path / "ae")
        src = str(tmp_path / "ae")
    elif src == "MISSING":
        src = str(tmp_path / "nothing.pth")
    code, _, err = _convert(capsys, src, str(tmp_path / "out"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "convert turns a checkpoint file (.pth or .safetensors) into a model folder" in lines[0]
    assert not (tmp_path / "out").exists()
