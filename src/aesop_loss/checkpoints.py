"""Reading checkpoints safely and canonicalising their layouts.

Every layout in circulation is mapped onto this package's parameter names, and the architecture's
hyperparameters are inferred from tensor shapes (the approach spandrel popularised), so a user never
has to say how wide or deep the network in a file is:

- the authors' AESOP autoencoder (``{"params_ema": sd}``, with its encoder registered twice);
- BasicSR ``RRDBNet`` (``conv_first``, ``body.N.rdbK.convM``, ``conv_body``, ``conv_up1`` ...);
- the original ESRGAN release (``model.0``, ``model.1.sub.N.RDBk.convM.0``, ``model.3`` ...);
- the ESRGAN repository's later layout (``RRDB_trunk``, ``trunk_conv``, ``upconv1``, ``HRconv``);
- Real-ESRGAN's ``SRVGGNetCompact`` (``body.N``, PReLU activations), alone or as an AE decoder;
- traiNNer-redux's AE (spandrel's RRDB blocks in the encoder, an ESRGAN or compact decoder).

``.pth`` files are read with ``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ._compat import load_weights

__all__ = [
    "CheckpointError",
    "canonicalize_autoencoder",
    "canonicalize_compact",
    "canonicalize_rrdbnet",
    "read_state_dict",
    "trainner_autoencoder_state_dict",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]

# Keys under which training frameworks nest the weights; the first present wins (EMA first: "ema"
# is this package's pretraining checkpoint, whose "model" holds the raw, not the exported, weights).
_WRAPPER_KEYS = ("params_ema", "ema", "params", "state_dict", "model_state_dict", "generator", "model")
# More tensors than any supported network has (the paper's AE file: 838): refused before reading them.
_MAX_TENSORS = 20_000
# Prefixes added by DataParallel / DDP and by torch.compile.
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
# The reference AE registers its encoder parts twice: these top-level names alias encoder.N.
_REFERENCE_ENCODER_ALIASES = {"conv_first.": "encoder.0.", "body.": "encoder.2.", "conv_last.": "encoder.3."}
_SCALE_FOR_UNSHUFFLED_CHANNELS = {1: 4, 4: 2, 16: 1}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the architecture."""


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a flat ``{name: tensor}`` dict from a ``.safetensors`` or ``.pth`` file.

    Wrapped checkpoints (``params_ema``, ``params``, ``state_dict`` ...) are unwrapped, preferring
    EMA weights, and ``module.`` / ``_orig_mod.`` prefixes are removed.

    Args:
        path: The checkpoint file.

    Returns:
        The state dict, on CPU.

    Raises:
        CheckpointError: The file is missing, truncated or corrupted, holds arbitrary pickled
            objects, or holds no tensors.

    Examples:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     torch.save({"params_ema": {"module.w": torch.ones(2)}}, f"{d}/x.pth")
        ...     list(read_state_dict(f"{d}/x.pth"))
        ['w']
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as fh:
                _check_count(len(list(fh.keys())), str(path))
            obj: Any = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({exc}); it may be truncated or "
                "corrupted, so download or write it again."
            ) from exc
    else:
        obj = _torch_load(path)
    return _unwrap(obj, path)


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _read_weights_header(path: str | os.PathLike[str]) -> StateDict:
    """The names, shapes and dtypes of a ``.safetensors`` file's tensors, as ``meta`` tensors.

    Reads the header only, so a model's configuration can be checked against its weights before
    anything is allocated.

    Raises:
        CheckpointError: The file is missing or not a readable safetensors file.

    Examples:
        >>> import tempfile
        >>> from aesop_loss._io import save_safetensors
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_safetensors({"w": torch.zeros(2, 3)}, f"{d}/m.safetensors")
        ...     w = _read_weights_header(f"{d}/m.safetensors")["w"]
        >>> w.shape, w.device.type
        (torch.Size([2, 3]), 'meta')
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = list(fh.keys())
            _check_count(len(names), str(path))
            slices = {name: fh.get_slice(name) for name in names}
            header = {name: (sl.get_dtype(), sl.get_shape()) for name, sl in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupted, so "
            "download or write it again."
        ) from exc
    out: StateDict = {}
    for name, (dtype, shape) in header.items():
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, not a float tensor.")
        out[name] = torch.empty(shape, dtype=_SAFETENSORS_DTYPES[dtype], device="meta")
    _check_weights(out, source=str(path))
    return out


def _check_count(count: int, source: str) -> None:
    if count > _MAX_TENSORS:
        raise CheckpointError(
            f"{source}: holds {count:,} tensors, more than any supported network has (the paper's AE "
            f"file: 838); not a checkpoint of one, so it is refused before reading them."
        )


# Tensor data a .pth may declare: far above any checkpoint of a network this package reads (the
# paper's AE: 73 MB; a training checkpoint with optimizer state: about 4x that).
_MAX_PTH_BYTES = 2 << 30
_PTH_STORAGE = re.compile(r"(^|/)data/\d+$")  # a storage record in torch.save's zip format


def _pth_precheck(path: Path) -> bool:
    """Judge a ``torch.save`` zip by its directory, before anything is unpickled or read: the number of
    tensors and the bytes they declare. Returns whether the tensors can be memory-mapped (stored
    uncompressed, as ``torch.save`` writes them), so tensors the caller never uses are never read.

    Raises:
        CheckpointError: More tensors than any supported network has, or more declared data.
    """
    if not zipfile.is_zipfile(path):
        return False  # the legacy (pre-1.6) format: torch.load reads it as it is
    try:
        with zipfile.ZipFile(path) as zf:
            storages = [i for i in zf.infolist() if _PTH_STORAGE.search(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # torch.load gives the precise error
    _check_count(len(storages), str(path))
    declared = sum(i.file_size for i in storages)
    if declared > _MAX_PTH_BYTES:
        raise CheckpointError(
            f"{path}: declares {declared / 2**20:,.0f} MiB of tensor data, more than a checkpoint of any "
            f"network this package reads ({_MAX_PTH_BYTES / 2**20:,.0f} MiB at most); refused before "
            "reading it. "
            "Save just the weights (torch.save({'params_ema': model.state_dict()}, ...))."
        )
    return all(i.compress_type == zipfile.ZIP_STORED for i in storages)


def _torch_load(path: Path) -> Any:
    mmap = _pth_precheck(path)
    try:
        return load_weights(path, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch names the refused callable differently across versions ("Unsupported global:
        # GLOBAL x", "unsupported GLOBAL x whose module ... is blocked", "Unsupported class x");
        # without one the stream is just invalid ("Unsupported operand N").
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported class ([\w.]+)", text)
        if found is None:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (the pickle stream is invalid); it may be "
                "truncated or corrupted, so download it again."
            ) from exc
        raise CheckpointError(
            f"{path}: refused for safety: it holds pickled Python objects ({found.group(1)}), not only "
            "tensors, and loading them could run code (loading is weights_only=True). If you trust the "
            "file, re-save just the state dict (torch.save({'params_ema': model.state_dict()}, ...)) or "
            "convert it to safetensors."
        ) from exc
    except Exception as exc:  # zip, pickle and storage errors of a file that is not a checkpoint
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__}: {detail[:200]}); "
            "it may be truncated, corrupted or another kind of file, so download it again."
        ) from exc


def _check_weights(sd: Mapping[str, Tensor], *, source: str) -> None:
    """Refuse weights that cannot be a trained float network: integer/bool dtypes, NaN or Inf values.

    Raises:
        CheckpointError: Naming the first offending tensor.

    Examples:
        >>> try:
        ...     _check_weights({"w": torch.tensor([1.0, float("nan")])}, source="x.pth")
        ... except CheckpointError as exc:
        ...     print(str(exc)[:41])
        x.pth: tensor 'w' holds NaN or Inf values
    """
    for name, value in sd.items():
        if not value.is_floating_point():
            _refuse_other_architecture(sd, source)
            raise CheckpointError(
                f"{source}: tensor {name!r} is {value.dtype}, not a float tensor; not a network's weights."
            )
    for name, value in sd.items():
        if value.device.type != "meta" and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{source}: tensor {name!r} holds NaN or Inf values; the weights are broken (a diverged "
                "run?), so they are refused."
            )


def _unwrap(obj: Any, source: Path) -> StateDict:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}.")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            logger.debug("%s: using the weights under %r", source, key)
            obj = obj[key]
            break
    _check_count(len(obj), str(source))
    odd = [k for k in obj if not isinstance(k, str)]
    if odd:
        raise CheckpointError(
            f"{source}: key {odd[0]!r} is a {type(odd[0]).__name__}, not a tensor name; not a state dict."
        )
    obj = _from_ema_wrapper(obj, source)
    state: StateDict = {}
    for name, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor; expected a "
                f"state dict (optionally under one of {', '.join(_WRAPPER_KEYS)})."
            )
        for prefix in _STRIPPED_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        state[name] = value
    if not state:
        raise CheckpointError(f"{source}: the checkpoint holds no tensors.")
    _check_weights(state, source=str(source))
    return state


# ema_pytorch's ``EMA`` module, saved whole by traiNNer-redux's AE model as ``net_ae_ema_*``: the
# averaged weights under ``ema_model.``, the raw ones under ``online_model.``, and two counters.
_EMA_PREFIX, _ONLINE_PREFIX = "ema_model.", "online_model."
_EMA_COUNTERS = frozenset({"initted", "step"})


def _from_ema_wrapper(obj: Mapping[str, Any], source: Path) -> Mapping[str, Any]:
    """The averaged weights of an EMA-wrapper state dict (``ema_model.*``); any other dict as it is.

    Strict: besides its two counters the wrapper may hold only the raw copy of the same network
    (``online_model.*``, the same names), which is dropped.

    Examples:
        >>> import torch
        >>> wrapper = {"initted": torch.tensor(True), "step": torch.tensor(7),
        ...            "online_model.w": torch.zeros(1), "ema_model.w": torch.ones(1)}
        >>> _from_ema_wrapper(wrapper, Path("net_ae_ema_latest.pth"))
        {'w': tensor([1.])}
    """
    if not any(k.startswith((_EMA_PREFIX, _ONLINE_PREFIX)) for k in obj):
        return obj
    if not any(k.startswith(_EMA_PREFIX) for k in obj):
        raise CheckpointError(
            f"{source}: an EMA wrapper (online_model.*) without its averaged weights (ema_model.*); "
            "load the EMA file that traiNNer-redux saved whole, or the plain network file (net_ae_*)."
        )
    ema = {k[len(_EMA_PREFIX) :]: v for k, v in obj.items() if k.startswith(_EMA_PREFIX)}
    online = {k[len(_ONLINE_PREFIX) :] for k in obj if k.startswith(_ONLINE_PREFIX)}
    parts = (_EMA_PREFIX, _ONLINE_PREFIX)
    other = sorted(k for k in obj if not k.startswith(parts) and k not in _EMA_COUNTERS)
    if other:
        raise CheckpointError(
            f"{source}: an EMA wrapper (ema_model.*) with unexpected entries {_listing(other)}; "
            "expected only ema_model.*, online_model.*, initted and step (ema_pytorch's EMA, as "
            "traiNNer-redux saves it)."
        )
    if online and online != set(ema):
        raise CheckpointError(
            f"{source}: the EMA wrapper's online_model.* and ema_model.* name different tensors "
            f"(e.g. {_listing(sorted(online ^ set(ema)), 3)}); the file is inconsistent."
        )
    logger.debug("%s: using the EMA weights (ema_model.*) of an EMA wrapper", source)
    return ema


def _infer_rrdbnet_config(sd: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    try:
        first, last = sd["conv_first.weight"], sd["conv_last.weight"]
    except KeyError as exc:
        raise CheckpointError(f"{source}: no {exc.args[0]!r}; not an RRDBNet checkpoint.") from None
    num_out_ch = int(last.shape[0])
    unshuffled = int(first.shape[1])
    ratio, rest = divmod(unshuffled, num_out_ch)
    if rest or ratio not in _SCALE_FOR_UNSHUFFLED_CHANNELS:
        raise CheckpointError(
            f"{source}: conv_first takes {unshuffled} channels and conv_last gives {num_out_ch}; "
            "expected a ratio of 1 (x4), 4 (x2) or 16 (x1)."
        )
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}
    num_block = len(blocks)
    grow = sd.get("body.0.rdb1.conv1.weight")
    return {
        "num_in_ch": num_out_ch,
        "num_out_ch": num_out_ch,
        "num_feat": int(first.shape[0]),
        "num_block": num_block,
        "num_grow_ch": int(grow.shape[0]) if grow is not None else None,  # no RRDB: not in the weights
        "scale": _SCALE_FOR_UNSHUFFLED_CHANNELS[ratio],
    }


def _from_original_esrgan(sd: Mapping[str, Tensor], source: str) -> StateDict:
    out: StateDict = {}
    trunk: StateDict = {}
    tail: dict[int, dict[str, Tensor]] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            block, rdb, conv, kind = m.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.\d+\.(weight|bias)", key):
            trunk[m.group(1)] = value
        elif m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
            tail.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            raise CheckpointError(f"{source}: unexpected key {key!r} in an ESRGAN 'model.N' layout.")
    if 0 not in tail or len(trunk) != 2:
        raise CheckpointError(f"{source}: incomplete ESRGAN 'model.N' layout (no model.0 or trunk conv).")
    after_trunk = sorted(i for i in tail if i >= 2)
    if len(after_trunk) != 4:
        raise CheckpointError(
            f"{source}: this ESRGAN checkpoint has {len(after_trunk) - 2} upsampling convs; only the "
            "two-stage (x4 trunk) design is supported."
        )
    names = ("conv_up1", "conv_up2", "conv_hr", "conv_last")
    for name, index in zip(("conv_first", *names), (0, *after_trunk), strict=True):
        for kind, value in tail[index].items():
            out[f"{name}.{kind}"] = value
    for kind, value in trunk.items():
        out[f"conv_body.{kind}"] = value
    return out


_TRUNK_LAYOUT_RENAMES = (
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\."), r"body.\1.rdb\2."),
    (re.compile(r"^trunk_conv\."), "conv_body."),
    (re.compile(r"^upconv1\."), "conv_up1."),
    (re.compile(r"^upconv2\."), "conv_up2."),
    (re.compile(r"^HRconv\."), "conv_hr."),
)


def _from_trunk_layout(sd: Mapping[str, Tensor]) -> StateDict:
    out: StateDict = {}
    for key, value in sd.items():
        for pattern, repl in _TRUNK_LAYOUT_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def canonicalize_rrdbnet(
    sd: Mapping[str, Tensor], *, source: str = "checkpoint"
) -> tuple[StateDict, dict[str, Any]]:
    """Map an ESRGAN-family generator state dict onto ``RRDBNet``'s names and infer its config.

    Args:
        sd: A flat state dict in BasicSR, original-ESRGAN or ``RRDB_trunk`` layout.
        source: Name of the file, for error messages.

    Returns:
        The state dict in BasicSR layout and the ``RRDBNet`` constructor arguments.

    Raises:
        CheckpointError: The layout is not recognised.

    Examples:
        >>> from aesop_loss import RRDBNet
        >>> net = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4, scale=2)
        >>> canonicalize_rrdbnet(net.state_dict())[1] == net.config
        True
    """
    if "model.0.weight" in sd:
        sd = _from_original_esrgan(sd, source)
    elif "trunk_conv.weight" in sd or any(k.startswith("RRDB_trunk.") for k in sd):
        sd = _from_trunk_layout(sd)
    elif any(k.startswith("decoder.") for k in sd):
        raise CheckpointError(
            f"{source}: this is an autoencoder checkpoint (it has 'decoder.*' keys); load it with "
            "AutoEncoder.from_pretrained."
        )
    elif "conv_first.weight" not in sd:
        raise CheckpointError(
            f"{source}: not an ESRGAN-family generator; expected BasicSR keys (conv_first, body.N), "
            f"'model.N' keys or 'RRDB_trunk' keys, found e.g. {sorted(sd)[:3]}."
        )
    return dict(sd), _infer_rrdbnet_config(sd, source)


def _is_compact(sd: Mapping[str, Tensor]) -> bool:
    """``body.0`` a conv and ``body.1`` a PReLU: Real-ESRGAN's ``SRVGGNetCompact``."""
    first, act = sd.get("body.0.weight"), sd.get("body.1.weight")
    return first is not None and first.ndim == 4 and act is not None and act.ndim == 1


def canonicalize_compact(
    sd: Mapping[str, Tensor], *, source: str = "checkpoint"
) -> tuple[StateDict, dict[str, Any]]:
    """Check an ``SRVGGNetCompact`` state dict (Real-ESRGAN / BasicSR names) and infer its config.

    The convs sit at the even ``body`` indices, each followed by a PReLU (its per-channel slopes are
    weights); the last conv's width gives the scale (``num_out_ch * scale**2``, with
    ``num_out_ch = num_in_ch``, as every public compact model has).

    Args:
        sd: A flat state dict with ``body.N.weight`` / ``body.N.bias`` keys.
        source: Name of the file, for error messages.

    Returns:
        The state dict and the ``SRVGGNetCompact`` constructor arguments.

    Raises:
        CheckpointError: Not a compact network, activations without weights (ReLU / LeakyReLU,
            which the weights cannot tell apart), or an inconsistent layout.

    Examples:
        >>> from aesop_loss import SRVGGNetCompact
        >>> net = SRVGGNetCompact(num_feat=8, num_conv=3, scale=2)
        >>> canonicalize_compact(net.state_dict())[1] == net.config
        True
    """
    convs = sorted(
        int(m.group(1)) for k in sd if (m := re.fullmatch(r"body\.(\d+)\.weight", k)) and sd[k].ndim == 4
    )
    if not convs or convs[0] != 0:
        raise CheckpointError(f"{source}: not an SRVGGNetCompact checkpoint (no conv 'body.0.weight').")
    if convs != list(range(0, 2 * len(convs), 2)):
        raise CheckpointError(
            f"{source}: the compact network's convs are at body indices {convs[:6]}..., not at every "
            "second one (conv, activation, conv ...); not an SRVGGNetCompact."
        )
    if any(f"body.{i + 1}.weight" not in sd for i in convs[:-1]):
        raise CheckpointError(
            f"{source}: the compact network's activations have no weights (ReLU or LeakyReLU), which "
            "the file cannot tell apart; only PReLU compact networks (Real-ESRGAN's) are read."
        )
    first, last = sd["body.0.weight"], sd[f"body.{convs[-1]}.weight"]
    num_in_ch, num_feat = int(first.shape[1]), int(first.shape[0])
    ratio, rest = divmod(int(last.shape[0]), num_in_ch)
    scale = math.isqrt(ratio)
    if rest or scale * scale != ratio or not 1 <= scale <= 8:
        raise CheckpointError(
            f"{source}: the last conv gives {last.shape[0]} channels for {num_in_ch} input channels; "
            "expected num_in_ch * scale**2 with a scale of 1 to 8."
        )
    expected = {f"body.{i}.{kind}" for i in convs for kind in ("weight", "bias")}
    expected |= {f"body.{i + 1}.weight" for i in convs[:-1]}
    unexpected = sorted(set(sd) - expected)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {_listing(unexpected)} in an SRVGGNetCompact.")
    config = {"num_in_ch": num_in_ch, "num_out_ch": num_in_ch, "num_feat": num_feat,
              "num_conv": len(convs) - 2, "scale": scale}  # fmt: skip
    return dict(sd), config


def canonicalize_autoencoder(
    sd: Mapping[str, Tensor], *, source: str = "checkpoint"
) -> tuple[StateDict, dict[str, Any]]:
    """Map a reference AESOP autoencoder state dict onto ``AutoEncoder``'s names and infer its config.

    The reference registers its encoder twice (``conv_first`` / ``body`` / ``conv_last`` are the
    same tensors as ``encoder.0`` / ``encoder.2`` / ``encoder.3``); the aliases are checked to be
    equal and dropped. A checkpoint without ``encoder.*`` keys is the reference's bicubic-encoder
    ablation, whose unused ``conv_first`` / ``body`` / ``conv_last`` weights are dropped.

    Args:
        sd: A flat state dict of the reference AE or of this package's ``AutoEncoder``.
        source: Name of the file, for error messages.

    Returns:
        The de-duplicated state dict and the ``AutoEncoder`` constructor arguments.

    Raises:
        CheckpointError: Not an autoencoder, or its aliased tensors disagree.

    Examples:
        >>> from aesop_loss import AutoEncoder
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
        >>> canonicalize_autoencoder(ae.state_dict())[1] == ae.config
        True
    """
    if not any(k.startswith("decoder.") for k in sd):
        hint = (
            " It looks like an RRDBNet generator: load it with RRDBNet.from_pretrained, or build an "
            "AE around it with AutoEncoder.from_decoder."
            if "conv_first.weight" in sd or "model.0.weight" in sd
            else ""
        )
        raise CheckpointError(f"{source}: not an AESOP autoencoder checkpoint (no 'decoder.*' keys).{hint}")
    has_encoder = any(k.startswith("encoder.") for k in sd)
    out: StateDict = {}
    dropped = 0
    for key, value in sd.items():
        alias = next((a for a in _REFERENCE_ENCODER_ALIASES if key.startswith(a)), None)
        if alias is None:
            out[key] = value
            continue
        dropped += 1
        if has_encoder:
            twin = _REFERENCE_ENCODER_ALIASES[alias] + key[len(alias) :]
            if twin not in sd:
                raise CheckpointError(f"{source}: {key!r} has no counterpart {twin!r}.")
            if value.device.type != "meta" and not torch.equal(sd[twin], value):
                raise CheckpointError(
                    f"{source}: {key!r} and {twin!r} must hold the same tensor in a reference AE "
                    "checkpoint, but they differ; the file is inconsistent."
                )
    if dropped and not has_encoder:
        logger.info("%s: bicubic-encoder AE; dropped %d unused encoder tensors", source, dropped)
    if any(_TRAINNER_RDB.match(k) for k in out):
        out = _from_trainner_autoencoder(out, source)
    decoder = {k[len("decoder.") :]: v for k, v in out.items() if k.startswith("decoder.")}
    label = f"{source} (decoder)"
    if _is_compact(decoder):
        compact = canonicalize_compact(decoder, source=label)[1]
        cfg = {**compact, "num_block": compact["num_conv"], "decoder": "compact", "num_grow_ch": None}
    else:
        cfg = {**_infer_rrdbnet_config(decoder, label), "decoder": "rrdb"}
    grow = out.get("encoder.2.0.rdb1.conv1.weight")  # the learned encoder's RRDBs
    if cfg["num_grow_ch"] is None and grow is not None:
        cfg["num_grow_ch"] = int(grow.shape[0])
    if cfg["scale"] not in (2, 4):
        raise CheckpointError(f"{source}: decoder scale {cfg['scale']} is not an AE scale (4 or 2).")
    stem = out.get("encoder.3.0.weight")
    if stem is not None and int(stem.shape[0]) != cfg["num_feat"]:
        raise CheckpointError(
            f"{source}: the encoder is {stem.shape[0]} channels wide and the decoder {cfg['num_feat']}; "
            "an AutoEncoder has one width (num_feat) for both."
        )
    config = {
        "num_in_ch": cfg["num_out_ch"],
        "num_feat": cfg["num_feat"],
        "num_block": cfg["num_block"],
        "num_grow_ch": cfg["num_grow_ch"],
        "scale": cfg["scale"],
        "encoder": "learned" if has_encoder else "bicubic",
        "decoder": cfg["decoder"],
    }
    return out, config


# traiNNer-redux's AE (traiNNer/archs/autoencoder_arch.py) has the reference's module layout with
# spandrel's RRDB blocks in the encoder (``RDBk.convM.0``) and any registered generator as decoder.
_TRAINNER_RDB = re.compile(r"^encoder\.2\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OUR_ENCODER_RDB = re.compile(r"^encoder\.2\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)$")
_ESRGAN_GROWTH = 32  # spandrel's RRDB blocks (both of traiNNer-redux's AE parts) fix the growth at 32


# Architectures traiNNer-redux can build as an AE decoder and aesop-loss does not implement, each by a
# key only it has (spandrel's detection keys); the more specific first (HAT's blocks are SwinIR's too).
_OTHER_ARCHITECTURES = (
    ("SPANPlus", "feats.1.block_1.c1_r.sk.weight"),
    ("SPAN", "block_1.c1_r.sk.weight"),
    ("ArtCNN", "depth_to_space.upscale.0.weight"),
    ("HAT", "layers.0.residual_group.blocks.0.conv_block.cab.0.weight"),
    ("ATD", "layers.0.residual_group.td"),
    ("SwinIR", "layers.0.residual_group.blocks.0.attn.relative_position_index"),
    ("DRCT", "layers.0.swin1.attn.qkv.weight"),
    ("RGT", "layers.0.blocks.0.gamma"),
    ("DAT", "layers.0.blocks.0.ffn.sg.conv.weight"),
    ("OmniSR", "residual_layer.0.residual_layer.0.layer.0.fn.0.weight"),
    ("PLKSR / RealPLKSR", "feats.1.refine.weight"),
    ("MoSR", "gblocks.1.fc1.weight"),
)


def _has(sd: Mapping[str, Tensor], key: str) -> bool:
    """Whether ``sd`` holds ``key``, or tensors under ``key`` as a module prefix."""
    return key in sd or any(k.startswith(key + ".") for k in sd)


def _refuse_other_architecture(sd: Mapping[str, Tensor], source: str) -> None:
    """Refuse, by name, a network (or an AE whose decoder is one) that this package does not implement.

    Transformers keep integer index buffers (``relative_position_index``) that no float check should
    be the first to complain about.
    """
    for part, prefix in (("", ""), ("an AE whose decoder is ", "decoder.")):
        inner = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        for name, key in _OTHER_ARCHITECTURES:
            if _has(inner, key):
                raise CheckpointError(
                    f"{source}: {part}{name}, an architecture aesop-loss does not implement; it reads "
                    "AEs with an RRDB (ESRGAN) or SRVGGNetCompact (PReLU) decoder only."
                )


def _name_generator(sd: Mapping[str, Tensor]) -> str:
    """A readable name for the generator a state dict holds, for error messages."""
    for name, key in _OTHER_ARCHITECTURES:
        if _has(sd, key):
            return f"{name}, an architecture aesop-loss does not implement"
    if "model.0.weight" in sd or "conv_first.weight" in sd:
        return "an RRDB (ESRGAN) generator"
    if _is_compact(sd):
        return "SRVGGNetCompact"
    if "body.0.weight" in sd:
        return (
            "SRVGGNetCompact without PReLU weights (ReLU or LeakyReLU, which the weights cannot tell apart)"
        )
    return f"an architecture aesop-loss does not implement (keys {_listing(sorted(sd), 3)})"


def _unshuffle_order(channels: int) -> Tensor:
    """Channel order of the trunk after ``pixel_unshuffle(2)`` twice, in terms of ``pixel_unshuffle(4)``.

    Both give the same values in another channel order: channel ``k`` of the first (the authors'
    encoder, this package's) is channel ``order[k]`` of the second (traiNNer-redux's encoder).

    Examples:
        >>> import torch.nn.functional as F
        >>> x = torch.rand(1, 2, 8, 8)
        >>> once, twice = F.pixel_unshuffle(x, 4), F.pixel_unshuffle(F.pixel_unshuffle(x, 2), 2)
        >>> torch.equal(twice, once[:, _unshuffle_order(2)])
        True
    """
    x = torch.arange(channels * 16).reshape(1, channels, 4, 4)
    once = torch.nn.functional.pixel_unshuffle(x, 4).flatten()
    twice = torch.nn.functional.pixel_unshuffle(torch.nn.functional.pixel_unshuffle(x, 2), 2).flatten()
    return torch.argsort(once)[twice]


def _reorder_encoder_trunk(sd: Mapping[str, Tensor], order: Tensor) -> StateDict:
    """Re-express the encoder's trunk (its RRDBs and the first head conv) in another channel order.

    Every conv that reads trunk features gets its first ``num_feat`` input channels reordered and
    every conv that writes them (each dense block's ``conv5``) its output channels, so the network
    computes the same function on inputs whose trunk channels are reordered by ``order``.
    """
    feat = len(order)
    out = dict(sd)
    for key, value in sd.items():
        m = _OUR_ENCODER_RDB.match(key)
        if m is None and key != "encoder.3.0.weight":
            continue
        if value.ndim == 4:  # reads the trunk in its first `feat` input channels
            value = torch.cat([value[:, :feat].index_select(1, order), value[:, feat:]], 1)
        if m is not None and m.group(3) == "5":  # writes the trunk
            value = value.index_select(0, order)
        out[key] = value.contiguous()
    return out


def _from_trainner_autoencoder(sd: Mapping[str, Tensor], source: str) -> StateDict:
    """traiNNer-redux AE (aliases already dropped) -> this package's names, decoder canonicalised."""
    encoder: StateDict = {}
    decoder: StateDict = {}
    for key, value in sd.items():
        if key.startswith("decoder."):
            decoder[key[len("decoder.") :]] = value
        elif m := _TRAINNER_RDB.match(key):
            block, rdb, conv, kind = m.groups()
            encoder[f"encoder.2.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        else:
            encoder[key] = value
    kind = _name_generator(decoder)
    if kind == "SRVGGNetCompact":
        config = canonicalize_compact(decoder, source=f"{source} (decoder)")[1]
        _refuse_compact_without_residual(decoder, config["scale"], source)
    elif kind.startswith("an RRDB"):
        decoder, config = canonicalize_rrdbnet(decoder, source=f"{source} (decoder)")
    else:
        raise CheckpointError(
            f"{source}: a traiNNer-redux AE whose decoder is {kind}; aesop-loss reads AEs with an "
            "RRDB (ESRGAN) or SRVGGNetCompact (PReLU) decoder only."
        )
    if config["scale"] == 4:  # traiNNer-redux unshuffles by 4 at once, the authors by 2 twice
        encoder = _reorder_encoder_trunk(encoder, _unshuffle_order(config["num_feat"] // 16))
    return {**encoder, **{f"decoder.{k}": v for k, v in decoder.items()}}


def _refuse_compact_without_residual(decoder: Mapping[str, Tensor], scale: int, source: str) -> None:
    """Refuse a compact decoder trained with traiNNer-redux's ``learn_residual: false``.

    That option drops the nearest-upsampled input from the output and leaves no trace in the
    weights, so it is told from what the decoder does: on a smooth image's LR version the body
    alone reconstructs the image when the option was off, and needs the added input when it was on
    (the default, and the only form this package implements). Random or untrained weights do
    neither and pass, as before.
    """
    if any(v.device.type == "meta" for v in decoder.values()):
        return  # a header-only look: the weights are checked when they are read
    n = 8 * scale
    ramp = torch.linspace(0, 1, n)
    hr = torch.stack([
        0.5 + 0.3 * torch.outer(torch.sin(3 * ramp), torch.cos(2 * ramp)),
        0.4 + 0.3 * torch.outer(ramp, ramp),
        0.6 - 0.2 * torch.outer(torch.cos(ramp), ramp),
    ]).unsqueeze(0)  # fmt: skip
    lr = torch.nn.functional.avg_pool2d(hr, scale)
    convs = sorted(int(k.split(".")[1]) for k in decoder if k.endswith(".weight") and decoder[k].ndim == 4)
    x = lr
    with torch.no_grad():
        for i in convs:
            x = torch.nn.functional.conv2d(
                x, decoder[f"body.{i}.weight"].float(), decoder[f"body.{i}.bias"].float(), padding=1
            )
            if i != convs[-1]:
                x = torch.nn.functional.prelu(x, decoder[f"body.{i + 1}.weight"].float())
        body = torch.nn.functional.pixel_shuffle(x, scale)
        residual = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="nearest")
    without, with_residual = (body - hr).abs().mean(), (body + residual - hr).abs().mean()
    if without < 0.5 * with_residual:
        raise CheckpointError(
            f"{source}: a traiNNer-redux AE whose compact decoder was trained with learn_residual: false "
            f"(it reconstructs without the upsampled input: error {without:.3f} vs {with_residual:.3f} "
            "with it), which aesop-loss does not implement; train the AE with learn_residual: true "
            "(traiNNer-redux's default)."
        )


def _to_original_esrgan(sd: Mapping[str, Tensor], num_block: int) -> StateDict:
    """BasicSR ``RRDBNet`` names -> the original ESRGAN ``model.N`` names (spandrel's ESRGAN)."""
    tail = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
            "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}  # fmt: skip
    out: StateDict = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            block, rdb, conv, kind = m.groups()
            out[f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0.{kind}"] = value
        else:
            name, _, kind = key.rpartition(".")
            out[f"{tail[name]}.{kind}"] = value
    return out


def trainner_autoencoder_state_dict(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """An ``AutoEncoder`` state dict in traiNNer-redux's AE layout (``pretrain_network_ae``).

    traiNNer-redux's ``AutoEncoder`` registers its encoder parts twice (``conv_first`` / ``body`` /
    ``conv_last`` and ``encoder.0`` / ``.2`` / ``.3``, so both are written, as separate tensors),
    uses spandrel's RRDB blocks, unshuffles by 4 at once (the trunk's channels are reordered to
    match), and builds an RRDB decoder as spandrel's ESRGAN (``model.N`` names; a compact decoder
    keeps its ``body.N`` names). Reading the result
    back with ``canonicalize_autoencoder`` gives ``sd`` exactly.

    Args:
        sd: An ``AutoEncoder`` state dict (this package's names).
        config: Its ``AutoEncoder.config``.

    Returns:
        The state dict in traiNNer-redux's layout.

    Raises:
        CheckpointError: The AE has no traiNNer-redux equivalent (bicubic encoder, growth other
            than 32, not 3 channels).

    Examples:
        >>> from aesop_loss import AutoEncoder
        >>> ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=32)
        >>> sd = trainner_autoencoder_state_dict(ae.state_dict(), ae.config)
        >>> back, config = canonicalize_autoencoder(sd)
        >>> config == ae.config, all(torch.equal(back[k], v) for k, v in ae.state_dict().items())
        (True, True)
    """
    problems = []
    if config["encoder"] != "learned":
        problems.append("its encoder is the bicubic ablation (traiNNer-redux's AE has a learned one)")
    if config["num_grow_ch"] != _ESRGAN_GROWTH:
        problems.append(f"num_grow_ch={config['num_grow_ch']} (traiNNer-redux's RRDB blocks fix it at 32)")
    if config["num_in_ch"] != 3:
        problems.append(f"num_in_ch={config['num_in_ch']} (traiNNer-redux's AE is RGB)")
    if problems:
        raise CheckpointError("this AE has no traiNNer-redux equivalent: " + "; ".join(problems) + ".")
    ours = dict(sd)
    if config["scale"] == 4:
        ours = _reorder_encoder_trunk(ours, torch.argsort(_unshuffle_order(config["num_feat"] // 16)))
    out: StateDict = {}
    decoder: StateDict = {}
    for key, value in ours.items():
        if key.startswith("decoder."):
            decoder[key[len("decoder.") :]] = value
            continue
        if m := _OUR_ENCODER_RDB.match(key):
            block, rdb, conv, kind = m.groups()
            key = f"encoder.2.{block}.RDB{rdb}.conv{conv}.0.{kind}"
        out[key] = value.contiguous()
        alias = next(a for a, twin in _REFERENCE_ENCODER_ALIASES.items() if key.startswith(twin))
        out[alias + key[len(_REFERENCE_ENCODER_ALIASES[alias]) :]] = value.clone().contiguous()
    if config.get("decoder", "rrdb") == "rrdb":
        decoder = _to_original_esrgan(decoder, config["num_block"])
    for key, value in decoder.items():  # spandrel's ESRGAN names, or the compact's own
        out[f"decoder.{key}"] = value.contiguous()
    return out


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def _load_state_dict_strict(model: nn.Module, sd: Mapping[str, Tensor], *, source: str) -> None:
    """Load ``sd`` into ``model`` with ``strict=True``, failing with a message that names every problem.

    Args:
        model: The module to fill.
        sd: State dict whose keys and shapes must match ``model``'s exactly.
        source: Name of the file, for the error message.

    Raises:
        CheckpointError: Missing keys, unexpected keys, or shape mismatches, each listed by name.
    """
    _check_fit(model, sd, source=source)
    model.load_state_dict(sd, strict=True)


def _check_fit(model: nn.Module, sd: Mapping[str, Tensor], *, source: str) -> None:
    """Refuse ``sd`` unless its names and shapes are exactly ``model``'s; ``sd`` may be ``meta``
    tensors (a safetensors header), so a file is judged before its tensors are read.

    Raises:
        CheckpointError: Missing keys, unexpected keys, or shape mismatches, each listed by name.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        config = getattr(model, "config", {})
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}({config}): " + "; ".join(problems)
        )
