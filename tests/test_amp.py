"""Mixed precision as callers use it: the net's output is made inside ``torch.autocast``, the target is fp32.

``nn.L1Loss`` takes a bf16/fp16 output and an fp32 target under autocast; ``AESOPLoss`` must too, for
every ``precision`` and option, with the value of the fp32 computation where ``precision="fp32"``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aesop_loss import AESOPLoss, AutoEncoder
from aesop_loss.integrations.trainner import AESOPRefLoss

from conftest import AE_CKPT, TinySRNet, skip_without_autocast

PRECISIONS = ["fp32", "bf16", "fp16", "auto"]
AMP_OF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast each reduced precision enters
AMP_DTYPES = [torch.bfloat16, torch.float16]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"check_values": True},
    {"channels_last": True},
    {"memory_efficient": True},
    {"compile": "eager"},
    {"space": "bottleneck"},
]
OPTION_IDS = ["plain", "check_values", "channels_last", "memory_efficient", "compile", "bottleneck"]


@pytest.fixture(scope="module")
def ae() -> AutoEncoder:
    return AutoEncoder.from_pretrained(AE_CKPT)  # the authors' small AE: real weights, real values


def _pair(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hr = F.avg_pool2d(torch.rand(2, 3, 32, 32, generator=gen), 2).clamp(0, 1)  # smooth-ish 16x16
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    return hr.to(device), lr.to(device)


def _train_step(
    loss_fn: nn.Module, amp: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TinySRNet]:
    """``with autocast: sr = net(lr); loss = criterion(sr, hr)``, then backward: (sr, hr, loss, net)."""
    torch.manual_seed(1)
    net = TinySRNet().to(device)
    hr, lr = _pair(device)
    with torch.autocast(device.type, dtype=amp):
        sr = net(lr)
        sr.retain_grad()
        loss = loss_fn(sr, hr)
    loss.backward()
    return sr, hr, loss, net


def _cases() -> list[Any]:
    """Every precision with every option under bf16 autocast, and plainly under fp16 autocast (CPU
    fp16 arithmetic is slow; the options do not depend on the autocast dtype)."""
    named = zip(OPTIONS, OPTION_IDS, strict=True)
    cases = [pytest.param(torch.bfloat16, option, id=f"bf16-{name}") for option, name in named]
    return [*cases, pytest.param(torch.float16, {}, id="fp16-plain")]


@pytest.mark.slow
@pytest.mark.parametrize(("amp", "option"), _cases())
@pytest.mark.parametrize("precision", PRECISIONS)
def test_net_output_from_autocast_and_fp32_target(device, ae, precision, amp, option):
    skip_without_autocast(device.type, amp)
    skip_without_autocast(device.type, AMP_OF.get(precision))
    loss_fn = AESOPLoss(ae, precision=precision, **option).to(device)
    sr, hr, loss, net = _train_step(loss_fn, amp, device)
    assert sr.dtype == amp  # the callers' pattern really mixes dtypes
    assert hr.dtype == torch.float32
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert sr.grad is not None
    assert sr.grad.dtype == amp  # the gradient reaches sr in its own dtype
    assert torch.isfinite(sr.grad).all()
    assert sr.grad.abs().sum() > 0
    assert net.conv.weight.grad is not None
    assert torch.isfinite(net.conv.weight.grad).all()
    # the fp32 computation of the same output, outside any autocast
    plain = AESOPLoss(ae, space=option.get("space", "ae")).to(device)
    with torch.no_grad():
        expected = plain(sr.detach().float(), hr)
    if precision == "fp32":
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=0)
        if not option or "space" in option:  # same arithmetic: bit for bit
            assert torch.equal(loss.detach(), expected)
    else:
        assert loss.item() == pytest.approx(expected.item(), rel=0.05)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cls", [AESOPLoss, AESOPRefLoss])
def test_either_way_round_and_the_traiNNer_adapter(ae, precision, cls):
    skip_without_autocast("cpu", AMP_OF.get(precision))
    kwargs = {"loss_weight": 0.5} if cls is AESOPRefLoss else {}
    loss_fn = cls(ae, precision=precision, **kwargs)
    hr, _ = _pair(torch.device("cpu"))
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    reference = AESOPLoss(ae).unweighted(sr, hr).item()
    for a, b in ((sr.float(), hr.bfloat16()), (sr.half(), hr.float()), (sr.bfloat16(), hr.half())):
        a = a.requires_grad_()
        value = loss_fn.unweighted(a, b)
        value.backward()
        assert torch.isfinite(value)
        assert a.grad is not None
        assert a.grad.dtype == a.dtype
        exact = AESOPLoss(ae).unweighted(a.detach().float(), b.float()).item()
        if precision == "fp32":
            assert value.item() == exact  # both promoted to the AE's fp32
        assert value.item() == pytest.approx(reference, rel=0.1)  # the rounding of the inputs, at most


def test_weight_of_any_float_dtype_and_non_float_refused(ae):
    loss_fn = AESOPLoss(ae)
    hr, _ = _pair(torch.device("cpu"))
    sr = hr.flip(-1)
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    expected = loss_fn(sr, hr, weight=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss_fn(sr.bfloat16(), hr, weight=mask.bfloat16()).item() == pytest.approx(
            expected.item(), rel=1e-2
        )
    for bad in (mask.bool(), mask.long()):
        with pytest.raises(TypeError, match=r"weight has dtype torch\.(bool|int64); pass a float tensor"):
            loss_fn(sr, hr, weight=bad)


@pytest.mark.parametrize("bad", [torch.uint8, torch.int32, torch.bool])
def test_non_float_inputs_still_get_one_clear_error(ae, bad):
    loss_fn = AESOPLoss(ae)
    hr, _ = _pair(torch.device("cpu"))
    with pytest.raises(TypeError, match=rf"sr has dtype {bad}; pass float images in \[0, 1\]"):
        loss_fn((hr * 255).to(bad), hr)
    with pytest.raises(TypeError, match=rf"hr has dtype {bad}"):
        loss_fn(hr.bfloat16(), (hr * 255).to(bad))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", PRECISIONS)
def test_cuda_fp16_with_grad_scaler_and_bf16(ae, precision):
    device = torch.device("cuda")
    loss_fn = AESOPLoss(ae, precision=precision).to(device)
    for amp in AMP_DTYPES:
        torch.manual_seed(1)
        net = TinySRNet().to(device)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        hr, lr = _pair(device)
        with torch.autocast("cuda", dtype=amp):
            sr = net(lr)
            loss = loss_fn(sr, hr)
        before = net.conv.weight.detach().clone()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert sr.dtype == amp
        assert torch.isfinite(loss)
        assert not torch.equal(before, net.conv.weight)  # the step was taken, not skipped as inf/NaN
        with torch.no_grad(), contextlib.nullcontext():
            expected = AESOPLoss(ae).to(device)(sr.detach().float(), hr)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5 if precision == "fp32" else 0.05)
