"""Reference architectures: the ESRGAN generator (``RRDBNet``) and the AESOP autoencoder.

Both use the parameter names of BasicSR and of the authors' AESOP code, so that their checkpoints
load strictly, key for key. This module defines the networks only: reading files and layouts is
``checkpoints``'s job, and ``from_pretrained`` / ``save_pretrained`` come from ``hub.HubMixin``.
``AutoEncoder`` is the paper's design: a learned encoder that squeezes an
HR image into a 3-channel LR-sized bottleneck, followed by a PSNR-oriented ``RRDBNet`` decoder, or
(``decoder="compact"``) by ``SRVGGNetCompact``, Real-ESRGAN's compact design, for a cheaper loss.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .hub import HubMixin

__all__ = ["AutoEncoder", "DecoderKind", "EncoderKind", "RRDBNet", "SRVGGNetCompact"]

EncoderKind = Literal["learned", "bicubic"]
"""An AE's encoder: ``"learned"`` (the paper's) or ``"bicubic"`` (the reference's fixed ablation)."""
DecoderKind = Literal["rrdb", "compact"]
"""An AE's decoder: ``"rrdb"`` (the paper's ``RRDBNet``) or ``"compact"`` (``SRVGGNetCompact``)."""

# RRDBNet scale -> pixel-unshuffle factor applied to its input (BasicSR convention).
_UNSHUFFLE_FOR_SCALE = {4: 1, 2: 2, 1: 4}
_LRELU_SLOPE = 0.2


def _scaled_kaiming_(modules: list[nn.Module], scale: float) -> None:
    """BasicSR's ``default_init_weights``: Kaiming-normal convs scaled down, zero biases."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                m.weight.data.mul_(scale)
                if m.bias is not None:
                    m.bias.data.zero_()


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1)


class _ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs with a scaled residual (ESRGAN's RDB).

    Args:
        num_feat: Channels in and out.
        num_grow_ch: Channels each of the first four convs adds to the dense concatenation.

    Examples:
        >>> block = _ResidualDenseBlock(num_feat=8, num_grow_ch=4)
        >>> block(torch.zeros(1, 8, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """

    def __init__(self, *, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)
        _scaled_kaiming_([self], 0.1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            # in place on the fresh conv output: one allocation less per conv, same numbers
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), _LRELU_SLOPE, inplace=True))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    """Residual-in-residual dense block: three ``_ResidualDenseBlock`` and a scaled skip.

    Args:
        num_feat: Channels in and out.
        num_grow_ch: Growth channels of the inner dense blocks.

    Examples:
        >>> _RRDB(num_feat=8, num_grow_ch=4)(torch.zeros(1, 8, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """

    def __init__(self, *, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = _ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.rdb2 = _ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.rdb3 = _ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class _RRDBStack(nn.Sequential):
    """A chain of RRDBs that can trade compute for memory with activation checkpointing."""

    def __init__(self, *, num_block: int, num_feat: int, num_grow_ch: int) -> None:
        super().__init__(*(_RRDB(num_feat=num_feat, num_grow_ch=num_grow_ch) for _ in range(num_block)))
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return super().forward(x)
        for block in self:
            x = checkpoint(block, x, use_reentrant=False)
        return x


class _Model(HubMixin, nn.Module):
    """What the architectures share: Hub I/O (``from_pretrained``, ``save_pretrained``,
    ``push_to_hub``), a ``config`` read from the constructor's arguments, and activation
    checkpointing of their RRDB trunks."""

    # constructor arguments stored under another attribute name
    _config_attrs: ClassVar[dict[str, str]] = {}

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (``type(m)(**m.config)``)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, self._config_attrs.get(name, name)) for name in names}

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether RRDB trunks recompute activations in backward (less memory, ~1/3 more compute)."""
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, _RRDBStack))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, _RRDBStack):
                module.gradient_checkpointing = enabled


class RRDBNet(_Model):
    """The ESRGAN generator with BasicSR's parameter layout.

    Scale 2 and 1 pixel-unshuffle the input by 2 and 4 first (as BasicSR and Real-ESRGAN do), so
    the trunk always upsamples x4 and every BasicSR ``RRDBNet`` checkpoint of these scales loads
    with ``strict=True``.

    Args:
        num_in_ch: Input image channels.
        num_out_ch: Output image channels.
        num_feat: Trunk width.
        num_block: Number of RRDB blocks in the trunk.
        num_grow_ch: Growth channels of the dense blocks.
        scale: Upscaling factor, 4, 2 or 1.

    Examples:
        >>> net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
        >>> net(torch.zeros(1, 3, 6, 7)).shape
        torch.Size([1, 3, 24, 28])
        >>> RRDBNet(**net.config).config == net.config
        True
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if scale not in _UNSHUFFLE_FOR_SCALE:
            raise ValueError(f"RRDBNet supports scale 4, 2 or 1; got scale={scale}.")
        for name, value in (
            ("num_in_ch", num_in_ch),
            ("num_out_ch", num_out_ch),
            ("num_feat", num_feat),
            ("num_grow_ch", num_grow_ch),
        ):
            if value < 1:
                raise ValueError(f"RRDBNet: {name} must be >= 1, got {value}.")
        if num_block < 0:
            raise ValueError(f"RRDBNet: num_block must be >= 0, got {num_block}.")
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.num_feat = num_feat
        self.num_block = num_block
        self.num_grow_ch = num_grow_ch
        self.scale = scale
        self._unshuffle = _UNSHUFFLE_FOR_SCALE[scale]

        self.conv_first = _conv3x3(num_in_ch * self._unshuffle**2, num_feat)
        self.body = _RRDBStack(num_block=num_block, num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.conv_body = _conv3x3(num_feat, num_feat)
        self.conv_up1 = _conv3x3(num_feat, num_feat)
        self.conv_up2 = _conv3x3(num_feat, num_feat)
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)

    def forward(self, x: Tensor) -> Tensor:
        if self._unshuffle > 1:
            x = F.pixel_unshuffle(x, self._unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        up = F.interpolate
        feat = F.leaky_relu(
            self.conv_up1(up(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE, inplace=True
        )
        feat = F.leaky_relu(
            self.conv_up2(up(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE, inplace=True
        )
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), _LRELU_SLOPE, inplace=True))


class SRVGGNetCompact(_Model):
    """Real-ESRGAN's compact SR network, with its parameter names (``body.N``).

    A plain stack at LR size: conv(in -> F), PReLU, then ``num_conv`` times conv(F -> F), PReLU,
    then conv(F -> out * s^2), pixel shuffle by ``s``, plus the nearest-upsampled input. It costs
    ``9 F (in + num_conv F + out s^2)`` multiply-adds per LR pixel, a few percent of ``RRDBNet``'s;
    its public checkpoints (PReLU activations) load strictly.

    Args:
        num_in_ch: Input image channels.
        num_out_ch: Output image channels.
        num_feat: Width of every hidden conv.
        num_conv: Hidden convs between the first and the last.
        scale: Upscaling factor (pixel shuffle), 1 to 8.

    Examples:
        >>> net = SRVGGNetCompact(num_feat=8, num_conv=2, scale=4)
        >>> net(torch.zeros(1, 3, 6, 7)).shape
        torch.Size([1, 3, 24, 28])
        >>> sorted(net.state_dict())[:3]
        ['body.0.bias', 'body.0.weight', 'body.1.weight']
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        scale: int = 4,
    ) -> None:
        super().__init__()
        for name, value in (("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch), ("num_feat", num_feat)):
            if value < 1:
                raise ValueError(f"SRVGGNetCompact: {name} must be >= 1, got {value}.")
        if num_conv < 0:
            raise ValueError(f"SRVGGNetCompact: num_conv must be >= 0, got {num_conv}.")
        if not 1 <= scale <= 8:
            raise ValueError(f"SRVGGNetCompact supports scale 1 to 8; got scale={scale}.")
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.num_feat = num_feat
        self.num_conv = num_conv
        self.scale = scale
        layers: list[nn.Module] = [_conv3x3(num_in_ch, num_feat), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [_conv3x3(num_feat, num_feat), nn.PReLU(num_feat)]
        layers.append(_conv3x3(num_feat, num_out_ch * scale * scale))
        self.body = nn.Sequential(*layers)
        # Variance-preserving init for the PReLU stack (PyTorch's default shrinks the signal ~6x per
        # layer, so a fresh 16-conv body outputs a constant and barely trains); the last conv starts
        # small, so a fresh network is close to its nearest-neighbour base.
        for conv in [m for m in self.body if isinstance(m, nn.Conv2d)][:-1]:
            nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # 3x3 convs here have biases
        _scaled_kaiming_([self.body[-1]], 0.1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


class _BicubicDownsample(nn.Module):
    """Antialiased bicubic downsampling by ``scale``; the reference ablation's fixed encoder.

    Args:
        scale: Downsampling factor.

    Examples:
        >>> _BicubicDownsample(scale=4)(torch.rand(1, 3, 16, 8)).shape
        torch.Size([1, 3, 4, 2])
    """

    def __init__(self, *, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        # in fp32 whatever x's dtype: antialiased bicubic has no bf16/fp16 kernel on CPUs, and the
        # downsample is a sliver of an AE's cost
        y = F.interpolate(
            x.float(), scale_factor=1.0 / self.scale, mode="bicubic", align_corners=False, antialias=True
        )
        return y.to(x.dtype)


class AutoEncoder(_Model):
    """The AESOP autoencoder: learned (or bicubic) encoder to an LR bottleneck, RRDBNet decoder.

    The learned encoder is the authors' design: conv(3 -> C/s^2), conv(C/s^2 -> C/s^2),
    ``PixelUnshuffle(2)`` applied log2(s) times, two RRDB blocks, conv(C -> C), conv(C -> 3), with
    no activations between those convs (C = ``num_feat``, s = ``scale``). ``forward(x)`` is
    ``decode(encode(x))``: "AE space", where ``AESOPLoss`` measures distances.

    The decoder is the paper's ``RRDBNet`` (``num_block`` RRDB blocks), or with
    ``decoder="compact"`` an ``SRVGGNetCompact`` of ``num_block`` hidden convs: a compact AE whose
    loss costs a small fraction of the paper AE's (``benchmarks/bench_compact.py``).

    Args:
        num_in_ch: Image channels (also the bottleneck's channels).
        num_feat: Width of the decoder and of the encoder's RRDB blocks.
        num_block: Decoder depth: RRDB blocks (``"rrdb"``) or hidden convs (``"compact"``).
        num_grow_ch: Growth channels of every dense block (the encoder's, and an RRDB decoder's).
        scale: Bottleneck downscaling factor (= decoder upscaling), 4 (the paper) or 2.
        encoder: ``"learned"`` (the paper) or ``"bicubic"`` (the reference ablation: fixed
            antialiased bicubic downsampling, no parameters).
        decoder: ``"rrdb"`` (the paper) or ``"compact"``.

    Examples:
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8, scale=4)
        >>> x = torch.rand(1, 3, 32, 48)
        >>> ae.encode(x).shape
        torch.Size([1, 3, 8, 12])
        >>> ae(x).shape
        torch.Size([1, 3, 32, 48])
    """

    # self.encoder and self.decoder are the modules
    _config_attrs: ClassVar[dict[str, str]] = {"encoder": "encoder_kind", "decoder": "decoder_kind"}

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        scale: int = 4,
        encoder: EncoderKind = "learned",
        decoder: DecoderKind = "rrdb",
    ) -> None:
        super().__init__()
        if scale not in (2, 4):
            raise ValueError(f"AutoEncoder supports scale 4 or 2; got scale={scale}.")
        if encoder not in get_args(EncoderKind):
            raise ValueError(f"encoder must be one of {get_args(EncoderKind)}, got {encoder!r}.")
        if decoder not in get_args(DecoderKind):
            raise ValueError(f"decoder must be one of {get_args(DecoderKind)}, got {decoder!r}.")
        self.num_in_ch = num_in_ch
        self.num_feat = num_feat
        self.num_block = num_block
        self.num_grow_ch = num_grow_ch
        self.scale = scale
        self.encoder_kind: EncoderKind = encoder
        self.decoder_kind: DecoderKind = decoder
        self.encoder: nn.Module
        if encoder == "learned":
            if num_feat % (scale * scale):
                raise ValueError(
                    f"AutoEncoder: num_feat={num_feat} must be divisible by scale**2={scale**2} "
                    "(the encoder pixel-unshuffles num_feat/scale**2 channels up to num_feat)."
                )
            hidden = num_feat // (scale * scale)
            stem = nn.Sequential(_conv3x3(num_in_ch, hidden), _conv3x3(hidden, hidden))
            head = nn.Sequential(_conv3x3(num_feat, num_feat), _conv3x3(num_feat, num_in_ch))
            _scaled_kaiming_([stem, head], 0.1)
            self.encoder = nn.Sequential(
                stem,
                nn.Sequential(*(nn.PixelUnshuffle(2) for _ in range(int(math.log2(scale))))),
                _RRDBStack(num_block=2, num_feat=num_feat, num_grow_ch=num_grow_ch),
                head,
            )
        else:
            self.encoder = _BicubicDownsample(scale=scale)
        self.decoder: RRDBNet | SRVGGNetCompact
        if decoder == "rrdb":
            self.decoder = RRDBNet(
                num_in_ch=num_in_ch,
                num_out_ch=num_in_ch,
                num_feat=num_feat,
                num_block=num_block,
                num_grow_ch=num_grow_ch,
                scale=scale,
            )
        else:
            self.decoder = SRVGGNetCompact(
                num_in_ch=num_in_ch, num_out_ch=num_in_ch, num_feat=num_feat, num_conv=num_block, scale=scale
            )
        # Set once weights arrive through load_state_dict (from_pretrained, resume) or by the
        # pretraining routine; AESOPLoss warns about an AE that was never trained.
        self.is_pretrained = False
        self.register_load_state_dict_post_hook(_mark_pretrained)

    @classmethod
    def from_decoder(
        cls,
        decoder: RRDBNet | SRVGGNetCompact | str | os.PathLike[str],
        *,
        encoder: EncoderKind = "learned",
        num_grow_ch: int = 32,
        revision: str | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> AutoEncoder:
        """Build an AE around a PSNR-oriented generator, as the paper initialises its decoder.

        Args:
            decoder: An ``RRDBNet`` or ``SRVGGNetCompact``, or anything ``RRDBNet.from_pretrained``
                reads (BasicSR, original-ESRGAN or ``RRDB_trunk`` checkpoints, folders, Hub ids).
                For a compact generator, pass the ``SRVGGNetCompact`` (e.g. from its
                ``from_pretrained``).
            encoder: ``"learned"`` (freshly initialised, to be pretrained) or ``"bicubic"``.
            num_grow_ch: The encoder's growth channels when the decoder is compact (an RRDB
                decoder sets them).
            revision: Hub revision when ``decoder`` is a repo id.
            local_files_only: Use the Hub cache only.
            token: Hub token.

        Returns:
            An AE whose decoder holds the generator's weights; the learned encoder still needs
            pretraining (``python -m aesop_loss.pretrain --decoder-init ...``).

        Examples:
            >>> gen = RRDBNet(num_feat=16, num_block=1, num_grow_ch=8, scale=4)
            >>> ae = AutoEncoder.from_decoder(gen)
            >>> ae.config["num_feat"], ae.config["scale"]
            (16, 4)
        """
        if not isinstance(decoder, (RRDBNet, SRVGGNetCompact)):
            decoder = RRDBNet.from_pretrained(
                decoder, revision=revision, local_files_only=local_files_only, token=token
            )
        if decoder.num_in_ch != decoder.num_out_ch:
            raise ValueError(
                f"decoder maps {decoder.num_in_ch} to {decoder.num_out_ch} channels; an AE decoder "
                "must keep the channel count (its input is the 3-channel bottleneck)."
            )
        if isinstance(decoder, SRVGGNetCompact):
            depth, kind, grow = decoder.num_conv, "compact", num_grow_ch
        else:
            depth, kind, grow = decoder.num_block, "rrdb", decoder.num_grow_ch
        ae = cls(
            num_in_ch=decoder.num_in_ch,
            num_feat=decoder.num_feat,
            num_block=depth,
            num_grow_ch=grow,
            scale=decoder.scale,
            encoder=encoder,
            decoder=kind,  # type: ignore[arg-type]
        )
        ae.decoder.load_state_dict(decoder.state_dict())
        ae.is_pretrained = False  # the encoder is untrained
        return ae

    def encode(self, x: Tensor) -> Tensor:
        """Squeeze an HR image ``(N, C, H, W)`` to its bottleneck ``(N, C, H/s, W/s)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruct an HR image from a bottleneck with the PSNR-oriented decoder."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def _mark_pretrained(module: nn.Module, incompatible_keys: Any) -> None:
    clean = not incompatible_keys.missing_keys and not incompatible_keys.unexpected_keys
    if clean and isinstance(module, AutoEncoder):
        module.is_pretrained = True
