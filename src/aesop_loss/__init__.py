"""aesop-loss: the AESOP loss (CVPR 2025) as a drop-in replacement for ``nn.L1Loss`` in SR training.

Examples:
    >>> from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
    >>> sorted(AutoEncoder().config)
    ['decoder', 'encoder', 'num_block', 'num_feat', 'num_grow_ch', 'num_in_ch', 'scale']
"""

from __future__ import annotations

import warnings

# torch warns at import when NumPy is missing ("Failed to initialize NumPy"); this package never
# needs NumPy (its dependencies are torch, safetensors and huggingface-hub), so the warning is noise.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

from ._version import __version__  # noqa: E402 - after the filter, which must precede torch
from .archs import AutoEncoder, RRDBNet, SRVGGNetCompact  # noqa: E402
from .checkpoints import CheckpointError  # noqa: E402
from .loss import AESOPLoss  # noqa: E402

__all__ = ["AESOPLoss", "AutoEncoder", "CheckpointError", "RRDBNet", "SRVGGNetCompact", "__version__"]
