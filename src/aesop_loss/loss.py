"""``AESOPLoss``: pixel loss measured after a frozen, pretrained autoencoder.

``L_AESOP = criterion(AE(sr), AE(hr))`` (Lee et al., CVPR 2025). The AE's decoder is a PSNR-oriented
SR network, so ``AE(x)`` is the best-fidelity reconstruction of ``x``'s low-resolution content: the
loss penalises the fidelity bias of an SR output but not the plausible high-frequency detail that
the LR image cannot determine, which a plain L1 loss blurs away.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from ._compat import autocast, autocast_enabled, compile_module, on_load_state_dict, on_state_dict
from .archs import AutoEncoder

__all__ = ["AESOPLoss", "Criterion", "Precision", "Reduction", "Space"]

Criterion = Literal["l1", "l2", "charbonnier"]
"""The distance measured in AE space (``AESOPLoss(criterion=...)``)."""
Precision = Literal["fp32", "bf16", "fp16", "auto"]
"""The arithmetic of the AE passes (``AESOPLoss(precision=...)``)."""
Reduction = Literal["mean", "sum", "none"]
"""How the element-wise distance map is reduced (``AESOPLoss(reduction=...)``)."""
Space = Literal["ae", "bottleneck"]
"""Where the distance is measured: decoder outputs or bottlenecks (``AESOPLoss(space=...)``)."""

# Opt-in value checks: an SR output may overshoot [0, 1] a little; these bounds catch [0, 255]
# and [-1, 1] images, the usual mistakes.
_RANGE_LOW, _RANGE_HIGH = -0.5, 1.5


def _distance(criterion: Criterion, a: Tensor, b: Tensor, eps: float) -> Tensor:
    if criterion == "l1":
        return (a - b).abs()
    if criterion == "l2":
        return (a - b).square()
    return ((a - b).square() + eps).sqrt()


def _weighted_reduce(loss: Tensor, weight: Tensor | None, reduction: Reduction) -> Tensor:
    """BasicSR's convention: a weighted mean divides by the weight's sum (over all channels)."""
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weight is None:
        return loss.mean()
    denom = weight.sum() if weight.size(1) > 1 else weight.sum() * loss.size(1)
    return loss.sum() / denom


class AESOPLoss(nn.Module):
    """The AESOP loss: a drop-in replacement for ``nn.L1Loss`` / BasicSR's ``L1Loss`` in SR training.

    The HR branch runs without autograd; gradients flow to ``sr`` only, never into the AE, which is
    frozen (``requires_grad_(False)``) and stays in eval mode when a parent module calls
    ``.train()``. Moving a parent module (``.to``, ``.cuda``) moves the AE, and the AE's weights are
    left out of a parent's ``state_dict`` (saving a model that holds the loss does not write the AE;
    loading such a state dict back works with ``strict=True``).

    Args:
        ae: The pretrained autoencoder, or anything ``AutoEncoder.from_pretrained`` reads (Hub id,
            folder, ``.safetensors``, the authors' ``.pth``, ``"demo"``).
        criterion: Distance in AE space: ``"l1"`` (the paper), ``"l2"`` or ``"charbonnier"``.
        loss_weight: Multiplies the result (BasicSR's ``loss_weight``, applied inside; see
            ``unweighted`` for frameworks that apply it themselves). Must be finite; a negative
            weight gets a warning (it maximises the distance).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the element-wise map).
        space: ``"ae"`` (the paper: distance of decoder outputs) or ``"bottleneck"`` (the
            reference's ablation: distance of the encoder's LR-sized bottlenecks).
        as_loss_map: The reference's other ablation: use ``|AE(sr) - AE(hr)|`` as the element-wise
            weight of the pixel distance ``criterion(sr, hr)`` (gradient flows through the map, as
            in the reference code).
        eps: Charbonnier's epsilon.
        check_values: Also reject NaN/Inf inputs and values far outside [0, 1]. Off by default
            because the checks synchronise with the GPU on every call.
        precision: Arithmetic of the AE passes. ``"fp32"`` (default) keeps the AE's activations in
            fp32 even inside the caller's ``torch.autocast`` (bf16 moved the gradient's cosine to
            0.959 on real photos) and runs its convolutions under the caller's TF32 policy, like
            the plain ``l1(ae(sr), ae(hr))`` a user would write: PyTorch's default
            (``torch.backends.cudnn.allow_tf32 = True``) gives TF32 convolutions on Ampere and
            newer GPUs. The loss never changes that flag; for the reference's bit-exact numbers,
            set ``torch.backends.cudnn.allow_tf32 = False`` yourself. With ``"fp32"``, a bf16/fp16
            ``sr`` from inside the caller's autocast and an fp32 ``hr`` are both promoted to the
            AE's dtype, so the value equals the loss of ``sr.float()``. ``"bf16"`` / ``"fp16"``
            run the AE under autocast of that type, whatever the inputs' dtypes; ``"auto"``
            follows the caller's autocast (outside one, inputs are cast to the AE's dtype).
            Distances are always accumulated in fp32, and ``sr``'s gradient has ``sr``'s dtype.
        channels_last: Run the AE in channels-last memory format (converts the AE's weights in
            place). Off by default: on a 2-core CPU it measured 0.85-0.90x the default's time at
            batch 1 (64^2-128^2) but 1.04x at batch 4 x 96^2, and it moves results by ~1e-5
            relative; on GPUs it is the format tensor cores want, but it is not measured there
            yet (``benchmarks/gpu_check.sh``), so it is not switched on by guess.
        memory_efficient: Recompute the RRDB activations of the SR pass during backward instead
            of storing them (activation checkpointing). Sets the AE's ``gradient_checkpointing``
            (the HR pass runs without autograd, so only the SR pass is affected). Where the memory
            goes: the SR pass stores its RRDB trunk (23 blocks of 64-channel maps at LR size for
            the paper's AE, most of it) and its upsampling tail (64-channel maps at 2x and 4x the
            LR size); only the trunk is recomputed. Measured on a CPU (one step, 1 x 256^2, peak
            RSS growth in a fresh process): the paper's AE 1,145 -> 252 MiB (0.22x) for 1.24x the
            time; an AE as small as the demo (2 blocks, 32 channels) 153 -> 87 MiB (0.53-0.57x
            over two runs), since its tail dominates. Small AEs gain little.
        compile: ``torch.compile`` the AE passes: ``True`` for the default (inductor) backend, or
            a backend name (``"aot_eager"``, ``"cudagraphs"`` ...). The first call compiles.

    Examples:
        >>> import torch
        >>> from aesop_loss import AESOPLoss, AutoEncoder
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8, scale=4)
        >>> ae.is_pretrained = True  # stands in for AutoEncoder.from_pretrained(...) here
        >>> criterion = AESOPLoss(ae)  # was: criterion = nn.L1Loss()
        >>> sr = torch.rand(2, 3, 32, 32, requires_grad=True)
        >>> hr = torch.rand(2, 3, 32, 32)
        >>> loss = criterion(sr, hr)
        >>> loss.backward()
        >>> loss.shape, sr.grad.shape
        (torch.Size([]), torch.Size([2, 3, 32, 32]))
        >>> float(criterion(hr, hr))
        0.0
    """

    _net: Callable[[Tensor], Tensor]  # the AE (or encoder) pass, compiled or not
    # Whether a negative loss_weight has a meaning here (traiNNer-redux's adapter: bicubic target);
    # for this class it is gradient ascent, which gets a warning.
    _negative_weight_ok: ClassVar[bool] = False

    def __init__(
        self,
        ae: AutoEncoder | str | os.PathLike[str],
        *,
        criterion: Criterion = "l1",
        loss_weight: float = 1.0,
        reduction: Reduction = "mean",
        space: Space = "ae",
        as_loss_map: bool = False,
        eps: float = 1e-12,
        check_values: bool = False,
        precision: Precision = "fp32",
        channels_last: bool = False,
        memory_efficient: bool = False,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("criterion", criterion, Criterion),
            ("reduction", reduction, Reduction),
            ("space", space, Space),
        ):
            if value not in get_args(allowed):
                raise ValueError(f"{name} must be one of {get_args(allowed)}, got {value!r}.")
        if precision == "tf32":  # the option from before the AE followed the caller
            warnings.warn(
                "precision='tf32' is deprecated: the AE now follows the caller's TF32 setting "
                "(torch.backends.cudnn.allow_tf32, on by PyTorch's default), so precision='fp32' "
                "runs TF32 convolutions wherever the caller's own layers do.",
                DeprecationWarning,
                stacklevel=2,
            )
            precision = "fp32"
        if precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {get_args(Precision)}, got {precision!r}.")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(
                f"eps (Charbonnier's epsilon) must be a finite number > 0, got {eps!r}; e.g. 1e-12."
            )
        if as_loss_map and space == "bottleneck":
            raise ValueError("as_loss_map weights the pixel loss by the AE-space error; use space='ae'.")
        if isinstance(ae, (str, os.PathLike)):
            ae = AutoEncoder.from_pretrained(ae)
        if not isinstance(ae, AutoEncoder):
            raise TypeError(f"ae must be an AutoEncoder or a path / Hub id, got {type(ae).__name__}.")
        if not ae.is_pretrained:
            warnings.warn(
                "AESOPLoss got an AutoEncoder that was never loaded or trained: the loss is "
                "meaningless without a pretrained AE. Use AutoEncoder.from_pretrained(...) or "
                "'python -m aesop_loss.pretrain'.",
                UserWarning,
                stacklevel=2,
            )
        self.ae = ae.requires_grad_(False).eval()
        self.criterion = criterion
        self.loss_weight = _check_loss_weight(loss_weight, negative_ok=self._negative_weight_ok)
        self.reduction: Reduction = reduction
        self.space: Space = space
        self.as_loss_map = as_loss_map
        self.eps = eps
        self.check_values = check_values
        self._range_seen = False  # the first call looks at the value range once (one host sync)
        self.precision: Precision = precision
        self.channels_last = channels_last
        self.memory_efficient = memory_efficient
        if memory_efficient:  # set once: the HR pass runs under no_grad, where it does nothing
            self.ae.gradient_checkpointing = True
        if channels_last:  # converts the AE's weights in place (the loss owns its frozen AE)
            self.ae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.compile_backend = (compile if isinstance(compile, str) else "inductor") if compile else None
        self._build_net()
        on_state_dict(self, _drop_ae_from_state_dict)
        on_load_state_dict(self, _keep_ae_on_load)

    def _build_net(self) -> None:
        net: nn.Module = self.ae.encoder if self.space == "bottleneck" else self.ae
        # kept outside the module tree: the compiled wrapper shares the AE's parameters
        if self.compile_backend is not None:
            net = compile_module(net, backend=self.compile_backend)
        object.__setattr__(self, "_net", net)

    def __getstate__(self) -> dict[str, Any]:
        # pickle / deepcopy: the AE pass (possibly a compiled wrapper) is rebuilt, not copied
        state = super().__getstate__()
        state.pop("_net", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._build_net()

    def extra_repr(self) -> str:
        return (
            f"criterion={self.criterion!r}, loss_weight={self.loss_weight}, "
            f"reduction={self.reduction!r}, space={self.space!r}, as_loss_map={self.as_loss_map}, "
            f"precision={self.precision!r}"
        )

    def train(self, mode: bool = True) -> AESOPLoss:
        super().train(mode)
        self.ae.eval()  # frozen: BatchNorm-free today, but eval semantics must hold regardless
        return self

    @property
    def scale(self) -> int:
        """The AE's scale: ``sr`` and ``hr`` heights and widths must be multiples of it."""
        return self.ae.scale

    def _embed(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net(x)

    def _precision(self, device_type: str) -> contextlib.AbstractContextManager[object]:
        if self.precision == "auto":
            return contextlib.nullcontext()
        if self.precision in ("bf16", "fp16"):
            return autocast(device_type, torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return autocast(device_type, None)  # fp32 activations inside the caller's autocast

    def forward(self, sr: Tensor, hr: Tensor, weight: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            sr: Super-resolved images ``(N, C, H, W)`` in [0, 1]; gradients flow to it (in its
                own dtype).
            hr: Ground truth of the same shape and device. Any floating dtypes mix, as in
                ``nn.L1Loss`` under autocast: a bf16/fp16 ``sr`` made inside ``torch.autocast``
                and an fp32 ``hr`` are fine (see ``precision`` for the AE's arithmetic).
            weight: Optional element-wise weight (BasicSR convention), broadcastable to the
                distance map: ``(N, C or 1, H, W)``, or the bottleneck's size with
                ``space="bottleneck"``. A weighted mean divides by the weight's sum.

        Returns:
            A scalar, or the weighted element-wise map for ``reduction="none"``, times
            ``loss_weight``.
        """
        return self.unweighted(sr, hr, weight) * self.loss_weight

    def unweighted(self, sr: Tensor, hr: Tensor, weight: Tensor | None = None) -> Tensor:
        """The loss without ``loss_weight``: for frameworks that apply the weight themselves.

        Args:
            sr: Super-resolved images, as in ``forward``.
            hr: Ground truth, as in ``forward``.
            weight: Optional element-wise weight, as in ``forward``.

        Returns:
            ``forward(sr, hr, weight) / loss_weight``, computed without the division.

        Examples:
            >>> from aesop_loss import AESOPLoss, AutoEncoder
            >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
            >>> ae.is_pretrained = True
            >>> loss = AESOPLoss(ae, loss_weight=0.5)
            >>> sr, hr = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
            >>> bool(torch.allclose(loss(sr, hr), 0.5 * loss.unweighted(sr, hr)))
            True
        """
        param = next(self.ae.parameters())
        self._validate(sr, hr, param)
        device_type = sr.device.type
        with self._precision(device_type):
            if not autocast_enabled(device_type):
                # Outside autocast (precision="fp32", or "auto" in a loop without one), each input
                # meets the AE in the AE's dtype: a bf16/fp16 net output made inside the caller's
                # autocast and an fp32 target are both promoted, as nn.L1Loss would promote them.
                # The cast is differentiable, so sr's gradient comes back in sr's own dtype.
                sr_in, hr_in = sr.to(param.dtype), hr.to(param.dtype)
            else:
                sr_in, hr_in = sr, hr  # autocast chooses the convolutions' dtype
            with torch.no_grad():
                target = self._embed(hr_in.detach())
            pred = self._embed(sr_in)
        # Distances accumulate in at least fp32, also when the AE ran under autocast.
        acc = torch.promote_types(pred.dtype, torch.float32)
        if self.as_loss_map:
            ae_map = (pred.to(acc) - target.to(acc)).abs()
            weight = ae_map if weight is None else ae_map * weight
            dist = _distance(self.criterion, sr.to(acc), hr.to(acc), self.eps)
        else:
            dist = _distance(self.criterion, pred.to(acc), target.to(acc), self.eps)
        if weight is not None:
            _check_weight(weight, dist)
            weight = weight.to(acc)
        return _weighted_reduce(dist, weight, self.reduction)

    def _validate(self, sr: Tensor, hr: Tensor, param: Tensor) -> None:
        for name, x in (("sr", sr), ("hr", hr)):
            if not isinstance(x, Tensor):
                raise TypeError(f"AESOPLoss: {name} must be a torch.Tensor, got {type(x).__name__}.")
            if x.ndim != 4:
                raise ValueError(
                    f"AESOPLoss: {name} must be 4-D (batch, channels, height, width), got shape "
                    f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)."
                )
            if not x.is_floating_point():
                raise TypeError(
                    f"AESOPLoss: {name} has dtype {x.dtype}; pass float images in [0, 1] "
                    "(e.g. x.float() / 255)."
                )
            if 0 in x.shape:
                raise ValueError(
                    f"AESOPLoss: {name} is empty (shape {tuple(x.shape)}); pass at least one image "
                    "of at least one pixel."
                )
            if x.shape[1] != self.ae.num_in_ch:
                raise ValueError(
                    f"AESOPLoss: {name} has {x.shape[1]} channels but the AE takes "
                    f"{self.ae.num_in_ch} (RGB); convert the images (grayscale: "
                    "x.expand(-1, 3, -1, -1))."
                )
        if sr.shape != hr.shape:
            raise ValueError(f"AESOPLoss: sr and hr shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}.")
        if sr.device != hr.device:
            raise ValueError(f"AESOPLoss: sr is on {sr.device} but hr is on {hr.device}.")
        if sr.device != param.device:
            raise ValueError(
                f"AESOPLoss: inputs are on {sr.device} but the AE is on {param.device}; move the "
                f"loss with criterion.to({str(sr.device)!r})."
            )
        h, w = sr.shape[-2:]
        s = self.ae.scale
        if h % s or w % s:
            raise ValueError(
                f"AESOPLoss: height and width must be multiples of the AE's scale {s}, got {h}x{w}; "
                f"crop to {h // s * s}x{w // s * s} (x[..., :{h // s * s}, :{w // s * s}]) or use "
                f"crops that are multiples of {s}."
            )
        if not self._range_seen and not self.check_values:
            # the ground truth tells the convention ([0, 1], [0, 255], [-1, 1]); an untrained net's
            # output may stray, so sr is not judged here
            self._range_seen = True
            lo, hi = float(hr.detach().min()), float(hr.detach().max())
            if lo < _RANGE_LOW or hi > _RANGE_HIGH:
                warnings.warn(
                    f"AESOPLoss: the first hr spans [{lo:.3g}, {hi:.3g}], not [0, 1], where the AE was "
                    "trained: scale [0, 255] images by 1/255 and [-1, 1] images by (x + 1) / 2 "
                    "(check_values=True makes this an error on every call).",
                    UserWarning,
                    stacklevel=6,  # the caller of criterion(sr, hr)
                )
        if self.check_values:
            for name, x in (("sr", sr.detach()), ("hr", hr.detach())):
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"AESOPLoss: {name} contains NaN or Inf values.")
                lo, hi = float(x.min()), float(x.max())
                if lo < _RANGE_LOW or hi > _RANGE_HIGH:
                    raise ValueError(
                        f"AESOPLoss: {name} values span [{lo:.3g}, {hi:.3g}], expected [0, 1]; "
                        "scale [0, 255] images by 1/255 and [-1, 1] images by (x + 1) / 2."
                    )


def _check_loss_weight(loss_weight: float, *, negative_ok: bool) -> float:
    try:
        value = float(loss_weight)
    except (TypeError, ValueError):
        raise TypeError(f"AESOPLoss: loss_weight must be a number, got {loss_weight!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"AESOPLoss: loss_weight must be finite, got {value}; use e.g. loss_weight=1.0.")
    if value < 0 and not negative_ok:
        warnings.warn(
            f"AESOPLoss: loss_weight={value} is negative, so minimising the total loss pushes the SR "
            "output away from the ground truth (gradient ascent); use a positive weight unless that "
            "is what you mean.",
            UserWarning,
            stacklevel=3,
        )
    return value


def _check_weight(weight: Tensor, dist: Tensor) -> None:
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        kind = weight.dtype if isinstance(weight, Tensor) else type(weight).__name__
        raise TypeError(
            f"AESOPLoss: weight has dtype {kind}; pass a float tensor (e.g. mask.float()); any float "
            "dtype works, it is applied in fp32."
        )
    if weight.ndim != 4 or weight.device != dist.device:
        raise ValueError(
            f"AESOPLoss: weight must be a 4-D tensor on {dist.device}, got shape "
            f"{tuple(weight.shape)} on {weight.device}."
        )
    try:
        torch.broadcast_shapes(weight.shape, dist.shape)
    except RuntimeError:
        raise ValueError(
            f"AESOPLoss: weight shape {tuple(weight.shape)} does not broadcast to the distance map "
            f"{tuple(dist.shape)}."
        ) from None


def _drop_ae_from_state_dict(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "ae.")]:
        del state_dict[key]


def _keep_ae_on_load(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # The AE is fixed at construction: fill its entries with its own tensors so that state dicts
    # saved without it load strictly, and any stale AE tensors in a state dict are ignored.
    assert isinstance(module, AESOPLoss)
    for key, value in module.ae.state_dict(keep_vars=True).items():
        state_dict[f"{prefix}ae.{key}"] = value
