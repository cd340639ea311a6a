"""The training tool beside the loss library: AE pretraining and what the examples share.

Needs the training extra (``pip install "aesop-loss[train]"``: Pillow, tqdm). The loss library
(``aesop_loss``) never imports this package.

- ``config``: ``PretrainConfig``, the run's settings, flags, checks and resume rule in one place;
  ``amp_dtype``, ``check_amp``; ``autocast`` and ``grad_scaler`` for every torch the package supports.
- ``loop``: ``train(cfg)``, the pretraining loop (DDP, AMP, exact resume); ``PretrainRun``.
- ``data``: datasets (DIV2K, Flickr2K, DF2K, folders, HR:LR pairs) and aligned random crops.
- ``runs``: ``RunFolder``, an output folder claimed by one run, never a user's folder.
- ``signals``: ``StopRequest``, Ctrl-C / SIGTERM as a stop at the next step boundary.
- ``ema``: ``ema_update``.
- ``pictures``: ``save_labelled``, the examples' labelled side-by-side PNGs.
"""

from __future__ import annotations

from .._compat import autocast, grad_scaler
from .._io import WriteError, atomic_path
from .config import AMP_DTYPES, PretrainConfig, amp_dtype, check_amp, check_device
from .ema import ema_update
from .runs import RunFolder, RunFolderError, files_fingerprint, weights_fingerprint
from .signals import StopRequest, ignore_stop_signals

try:  # the data pipeline and the loop need Pillow and tqdm: the [train] extra
    from .data import (
        CropDataset,
        DataError,
        ImageSet,
        SampleStream,
        check_out_outside_data,
        collate_crops,
        list_images,
        load_image,
        prepare_data,
    )
    from .loop import Distributed, PretrainRun, train
    from .pictures import save_labelled
except ModuleNotFoundError as exc:  # without them, the flags and their checks still work
    if exc.name not in ("PIL", "tqdm"):
        raise

__all__ = [
    "AMP_DTYPES",
    "CropDataset",
    "DataError",
    "Distributed",
    "ImageSet",
    "PretrainConfig",
    "PretrainRun",
    "RunFolder",
    "RunFolderError",
    "SampleStream",
    "StopRequest",
    "WriteError",
    "amp_dtype",
    "atomic_path",
    "autocast",
    "check_amp",
    "check_device",
    "check_out_outside_data",
    "collate_crops",
    "ema_update",
    "files_fingerprint",
    "grad_scaler",
    "ignore_stop_signals",
    "list_images",
    "load_image",
    "prepare_data",
    "save_labelled",
    "train",
    "weights_fingerprint",
]
