from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn

from aesop_loss import AESOPLoss, AutoEncoder

from conftest import AE_CKPT, TINY, rel_err, skip_without_autocast, tiny_ae, warnings_as_errors


@pytest.mark.usefixtures("strict_fp32")
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_parity_with_reference_loss_and_gradient(device, ae_golden, criterion):
    loss_fn = AESOPLoss(AE_CKPT, criterion=criterion).to(device)
    sr = ae_golden["sr"].to(device).requires_grad_()
    loss = loss_fn(sr, ae_golden["gt"].to(device))
    loss.backward()
    assert rel_err(loss.reshape(1), ae_golden[f"loss_{criterion}"]) <= 1e-5
    # the reference gradient was computed in fp32: the exact (float64) one is 1.0e-5 away from it
    assert rel_err(sr.grad, ae_golden[f"grad_{criterion}"]) <= 3e-5


def test_gradient_reaches_input_not_ae(reference_ae, ae_golden):
    loss_fn = AESOPLoss(reference_ae)
    sr = ae_golden["sr"].clone().requires_grad_()
    loss_fn(sr, ae_golden["gt"]).backward()
    assert sr.grad is not None
    assert sr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.ae.parameters())


def test_hr_branch_has_no_graph(reference_ae, ae_golden):
    loss_fn = AESOPLoss(reference_ae)
    hr = ae_golden["gt"].clone().requires_grad_()
    sr = ae_golden["sr"].clone().requires_grad_()
    loss_fn(sr, hr).backward()
    assert hr.grad is None


class _Model(nn.Module):
    def __init__(self, ae: AutoEncoder) -> None:
        super().__init__()
        self.net = nn.Conv2d(3, 3, 3, padding=1)
        self.criterion = AESOPLoss(ae)


def test_parent_train_keeps_ae_in_eval():
    model = _Model(tiny_ae())
    model.train()
    assert model.training
    assert model.criterion.training
    assert not model.criterion.ae.training
    assert not any(m.training for m in model.criterion.ae.modules())


def test_parent_state_dict_excludes_ae_and_loads_back_strictly():
    model = _Model(tiny_ae())
    sd = model.state_dict()
    assert sorted(sd) == ["net.bias", "net.weight"]
    fresh = _Model(tiny_ae())
    before = {k: v.clone() for k, v in fresh.criterion.ae.state_dict().items()}
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh.net.weight, model.net.weight)
    assert all(torch.equal(before[k], v) for k, v in fresh.criterion.ae.state_dict().items())


def test_moving_parent_moves_ae(device):
    model = _Model(tiny_ae()).to(device=device, dtype=torch.float64)
    assert all(
        p.device.type == device.type and p.dtype == torch.float64 for p in model.criterion.ae.parameters()
    )
    x = torch.rand(1, 3, 8, 8, device=device, dtype=torch.float64)
    assert model.criterion(x, x).dtype == torch.float64


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("space", ["ae", "bottleneck"])
def test_identical_inputs_give_zero(criterion, space):
    loss_fn = AESOPLoss(tiny_ae(), criterion=criterion, space=space)
    x = torch.rand(2, 3, 16, 16)
    assert float(loss_fn(x, x.clone())) == 0.0


def test_charbonnier_floor():
    loss_fn = AESOPLoss(tiny_ae(), criterion="charbonnier", eps=1e-6)
    x = torch.rand(1, 3, 8, 8)
    assert float(loss_fn(x, x)) == pytest.approx(1e-3, rel=1e-4)


def test_untrained_ae_warns():
    with pytest.warns(UserWarning, match="never loaded or trained"):
        AESOPLoss(AutoEncoder(**TINY))


def test_pretrained_ae_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AESOPLoss(AE_CKPT)


def test_basicsr_weight_convention_and_loss_weight(reference_ae, ae_golden):
    sr, hr = ae_golden["sr"], ae_golden["gt"]
    with torch.no_grad():
        dist = (reference_ae(sr) - reference_ae(hr)).abs()
    w = torch.rand(2, 1, 48, 64)
    loss = AESOPLoss(reference_ae, loss_weight=0.5)(sr, hr, weight=w)
    expected = 0.5 * (dist * w).sum() / (w.sum() * 3)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    w3 = w.expand(-1, 3, -1, -1)
    loss3 = AESOPLoss(reference_ae)(sr, hr, weight=w3)
    assert float(loss3) == pytest.approx(float((dist * w3).sum() / w3.sum()), rel=1e-5)
    total = AESOPLoss(reference_ae, reduction="sum", loss_weight=2.0)(sr, hr)
    assert float(total) == pytest.approx(2.0 * float(dist.sum()), rel=1e-5)
    emap = AESOPLoss(reference_ae, reduction="none")(sr, hr)
    assert emap.shape == sr.shape
    assert rel_err(emap, dist) <= 1e-6


def test_bottleneck_space(reference_ae, ae_golden):
    sr, hr = ae_golden["sr"], ae_golden["gt"]
    loss = AESOPLoss(reference_ae, space="bottleneck")(sr, hr)
    with torch.no_grad():
        expected = (reference_ae.encode(sr) - ae_golden["gt_bottleneck"]).abs().mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_loss_map_mode_matches_reference_formula(reference_ae, ae_golden):
    sr, hr = ae_golden["sr"].clone().requires_grad_(), ae_golden["gt"]
    loss = AESOPLoss(reference_ae, as_loss_map=True)(sr, hr)
    sr2 = ae_golden["sr"].clone().requires_grad_()
    amap = (reference_ae(sr2) - ae_golden["gt_ae"]).abs()
    expected = ((sr2 - hr).abs() * amap).sum() / amap.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    expected.backward()
    # the formula uses the fixture's fp32 gt_ae, the loss this machine's AE(hr): fp32 noise differs
    assert rel_err(sr.grad, sr2.grad) <= 3e-5


def test_invalid_options():
    ae = tiny_ae()
    with pytest.raises(ValueError, match="criterion"):
        AESOPLoss(ae, criterion="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        AESOPLoss(ae, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        AESOPLoss(ae, precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="space='ae'"):
        AESOPLoss(ae, space="bottleneck", as_loss_map=True)
    with pytest.raises(TypeError, match="AutoEncoder"):
        AESOPLoss(nn.Identity())  # type: ignore[arg-type]


def _bad_inputs():
    x = torch.rand(1, 3, 16, 16)
    return [
        ("3-D", x[0], x[0], r"4-D.*unsqueeze"),
        ("channels", torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), r"1 channels.*takes 3"),
        ("shape", x, torch.rand(1, 3, 16, 20), "shapes differ"),
        (
            "divisible",
            torch.rand(1, 3, 18, 16),
            torch.rand(1, 3, 18, 16),
            r"multiples of the AE's scale 4.*16x16",
        ),
        ("uint8", (x * 255).byte(), (x * 255).byte(), r"torch.uint8.*\[0, 1\]"),
        ("device", x, torch.empty(1, 3, 16, 16, device="meta"), "sr is on cpu but hr is on meta"),
        (
            "ae-device",
            torch.empty(1, 3, 16, 16, device="meta"),
            torch.empty(1, 3, 16, 16, device="meta"),
            r"AE is on cpu.*criterion.to\('meta'\)",
        ),
        ("not-tensor", x.tolist(), x, "must be a torch.Tensor"),
    ]


@pytest.mark.parametrize(("case", "sr", "hr", "needle"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_bad_inputs_are_explained(case, sr, hr, needle):
    loss_fn = AESOPLoss(tiny_ae())
    with pytest.raises((ValueError, TypeError), match=needle):
        loss_fn(sr, hr)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda x: x.masked_fill(x > 0.9, float("nan")), "NaN or Inf"),
        (lambda x: x * 255, r"expected \[0, 1\].*1/255"),
        (lambda x: x * 2 - 1, r"\(x \+ 1\) / 2"),
    ],
    ids=["nan", "0-255", "minus1-1"],
)
def test_opt_in_value_checks(make, needle):
    x = torch.rand(1, 3, 16, 16)
    bad = make(x)
    loss_fn = AESOPLoss(tiny_ae())  # by default: no error, and a warning on the first call only
    if needle == "NaN or Inf":
        loss_fn(bad, bad)
    else:
        with pytest.warns(UserWarning, match=r"the first hr spans .* not \[0, 1\]") as seen:
            loss_fn(bad, bad)
        assert seen[0].filename == __file__  # it points at the caller's line
    with warnings_as_errors():
        loss_fn(bad, bad)  # one look only: no more syncs, no more warnings
        AESOPLoss(tiny_ae())(x, x)  # [0, 1]: silent
    with pytest.raises(ValueError, match=needle):
        AESOPLoss(tiny_ae(), check_values=True)(bad, x)


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan"), float("inf")])
def test_charbonnier_eps_must_be_positive_and_finite(eps):
    with pytest.raises(ValueError, match=r"eps .* must be a finite number > 0"):
        AESOPLoss(tiny_ae(), criterion="charbonnier", eps=eps)


def test_weight_shape_checked():
    loss_fn = AESOPLoss(tiny_ae())
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="does not broadcast"):
        loss_fn(x, x, weight=torch.ones(1, 3, 4, 4))


@pytest.mark.usefixtures("strict_fp32")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_caller_autocast_with_default_fp32_is_exact(device, dtype, reference_ae, ae_golden):
    skip_without_autocast(device.type, dtype)
    loss_fn = AESOPLoss(reference_ae).to(device)  # precision="fp32": the AE ignores outer autocast
    sr = ae_golden["sr"].to(device).requires_grad_()
    with torch.autocast(device.type, dtype=dtype):
        loss = loss_fn(sr, ae_golden["gt"].to(device))
    loss.backward()
    assert rel_err(loss.detach().reshape(1), ae_golden["loss_l1"]) <= 1e-5
    assert rel_err(sr.grad, ae_golden["grad_l1"]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("how", ["auto-under-autocast", "precision-option"])
def test_reduced_precision(device, dtype, how, reference_ae, ae_golden):
    skip_without_autocast(device.type, dtype)
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    loss_fn = AESOPLoss(reference_ae, precision="auto" if how.startswith("auto") else name).to(device)
    sr = ae_golden["sr"].to(device).requires_grad_()
    ctx = torch.autocast(device.type, dtype=dtype) if how.startswith("auto") else contextlib.nullcontext()
    with ctx:
        loss = loss_fn(sr, ae_golden["gt"].to(device))
    loss.backward()
    assert loss.dtype == torch.float32
    assert sr.grad is not None
    assert sr.grad.dtype == torch.float32
    assert torch.isfinite(sr.grad).all()
    assert loss.item() == pytest.approx(float(ae_golden["loss_l1"]), rel=0.05)
    assert loss.item() != float(ae_golden["loss_l1"])  # it really ran in reduced precision
    cos = torch.nn.functional.cosine_similarity(
        sr.grad.flatten().cpu(), ae_golden["grad_l1"].flatten(), dim=0
    )
    assert cos > 0.9


@pytest.mark.usefixtures("strict_fp32")
@pytest.mark.parametrize(
    "option",
    [{"channels_last": True}, {"memory_efficient": True}, {"allow_tf32": True}],
    ids=["channels_last", "memory_efficient", "pytorch-default-tf32"],
)
@pytest.mark.parametrize("space", ["ae", "bottleneck"])
def test_speed_and_memory_options_give_the_same_numbers(device, option, space, ae_golden):
    from aesop_loss import AutoEncoder

    tf32 = option.pop("allow_tf32", False)
    tol = 1e-3 if tf32 and device.type == "cuda" else 1e-4
    grads = []
    for fn, allow_tf32 in (
        (AESOPLoss(AutoEncoder.from_pretrained(AE_CKPT), space=space).to(device), False),
        (AESOPLoss(AutoEncoder.from_pretrained(AE_CKPT), space=space, **option).to(device), tf32),
    ):
        sr = ae_golden["sr"].to(device).requires_grad_()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow_tf32):
            loss = fn(sr, ae_golden["gt"].to(device))
            loss.backward()
        grads.append((loss.detach(), sr.grad))
    assert rel_err(grads[1][0].reshape(1), grads[0][0].reshape(1)) <= tol
    assert rel_err(grads[1][1], grads[0][1]) <= tol


def test_memory_efficient_stores_less_for_backward():
    def saved_bytes(memory_efficient: bool) -> int:
        torch.manual_seed(0)
        fn = AESOPLoss(_pretrained_tiny_deep(), memory_efficient=memory_efficient)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        sr = torch.rand(1, 3, 32, 32, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(sr, torch.rand(1, 3, 32, 32))
        return sum(storages.values())

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def _pretrained_tiny_deep() -> AutoEncoder:
    return tiny_ae(num_block=4)


@pytest.mark.usefixtures("strict_fp32")
@pytest.mark.parametrize(
    "backend",
    # aot_eager traces autograd too (30 s on a 2-core CPU for this AE) and inductor compiles for
    # minutes there: both are checked on CUDA; on the CPU, dynamo's graph capture ("eager")
    [
        "eager",
        pytest.param("aot_eager", marks=pytest.mark.cuda),
        pytest.param("inductor", marks=pytest.mark.cuda),
    ],
)
@pytest.mark.slow
def test_compile_gives_the_same_numbers(device, backend, ae_golden):
    if backend != "eager" and device.type == "cpu":
        pytest.skip(f"{backend} on a CPU takes too long for the suite; checked on CUDA")
    loss_fn = AESOPLoss(AE_CKPT, compile=backend).to(device)
    sr = ae_golden["sr"].to(device).requires_grad_()
    loss = loss_fn(sr, ae_golden["gt"].to(device))
    loss.backward()
    assert rel_err(loss.detach().reshape(1), ae_golden["loss_l1"]) <= 1e-4
    assert rel_err(sr.grad, ae_golden["grad_l1"]) <= 1e-4
    assert sorted(loss_fn.state_dict()) == []  # the compiled wrapper adds nothing to the state dict


@pytest.fixture
def restore_cudnn_tf32():
    previous = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.usefixtures("restore_cudnn_tf32")
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["stored", "recomputed"])
@pytest.mark.parametrize("caller", [True, False], ids=["tf32-on", "tf32-off"])
def test_ae_follows_the_callers_tf32_policy_and_never_changes_it(caller, memory_efficient):
    # cuDNN reads the flag when each convolution runs: the AE's forward and backward, and the
    # caller's own layers, all see the caller's setting, and the loss never flips it.
    seen: list[tuple[str, bool]] = []

    def record(name: str):
        return lambda *args: seen.append((name, torch.backends.cudnn.allow_tf32))

    ae = tiny_ae()
    ae.decoder.conv_first.register_forward_pre_hook(record("ae forward"))
    ae.decoder.conv_first.register_full_backward_pre_hook(record("ae backward"))
    generator = nn.Conv2d(3, 3, 3, padding=1)
    generator.register_full_backward_pre_hook(record("generator backward"))
    torch.backends.cudnn.allow_tf32 = caller
    loss_fn = AESOPLoss(ae, memory_efficient=memory_efficient)
    loss = loss_fn(generator(torch.rand(1, 3, 16, 16, requires_grad=True)), torch.rand(1, 3, 16, 16))
    loss.backward()
    assert {setting for _, setting in seen} == {caller}
    assert {name for name, _ in seen} == {"ae forward", "ae backward", "generator backward"}
    assert torch.backends.cudnn.allow_tf32 is caller


def test_tf32_option_is_deprecated_and_means_the_callers_policy():
    with pytest.warns(DeprecationWarning, match=r"precision='tf32' is deprecated"):
        loss_fn = AESOPLoss(tiny_ae(), precision="tf32")  # type: ignore[arg-type]
    assert loss_fn.precision == "fp32"


def test_low_precision_inputs_follow_ae_dtype(reference_ae, ae_golden):
    sr = ae_golden["sr"].bfloat16().requires_grad_()
    loss = AESOPLoss(reference_ae)(sr, ae_golden["gt"].bfloat16())
    loss.backward()
    assert loss.dtype == torch.float32
    assert sr.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("encoder", ["learned", "bicubic"])
def test_scales_and_encoders(scale, encoder):
    loss_fn = AESOPLoss(tiny_ae(scale=scale, encoder=encoder))
    sr = torch.rand(2, 3, 8, 12, requires_grad=True)
    loss = loss_fn(sr, torch.rand(2, 3, 8, 12))
    loss.backward()
    assert loss.ndim == 0
    assert loss > 0
    assert sr.grad.abs().sum() > 0


def test_drop_in_for_l1_in_a_training_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = AESOPLoss(tiny_ae(scale=2))  # was: nn.L1Loss()
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    before = [p.clone() for p in net.parameters()]
    loss = criterion(net(lr), hr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("compile", [False, "eager"], ids=["plain", "compiled"])
@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_loss_pickles_and_deep_copies(compile, copier):
    import copy
    import io
    import pickle

    loss_fn = AESOPLoss(tiny_ae(), criterion="charbonnier", loss_weight=0.5, compile=compile)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))
    model.criterion = loss_fn  # type: ignore[assignment]
    if copier == "pickle":
        buf = io.BytesIO()
        torch.save(model, buf)  # a whole-model save, which failed before; it pickles as below
        assert buf.tell() > 0
        clone = pickle.loads(pickle.dumps(model))
    else:
        clone = copy.deepcopy(model)
    copied = clone.criterion
    assert copied.ae is not loss_fn.ae
    a, b = loss_fn.ae.state_dict(), copied.ae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not copied.ae.training
    assert all(not p.requires_grad for p in copied.ae.parameters())
    sr, hr = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16)
    assert torch.equal(copied(sr, hr), loss_fn(sr, hr))
    copied(sr, hr).backward()
    assert sr.grad is not None


@pytest.mark.parametrize("shape", [(0, 3, 16, 16), (1, 3, 0, 16)], ids=["no-images", "no-rows"])
def test_empty_batch_is_a_clear_error(shape):
    loss_fn = AESOPLoss(tiny_ae())
    with pytest.raises(ValueError, match=r"sr is empty .*pass at least one image"):
        loss_fn(torch.rand(*shape), torch.rand(*shape))
