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
# Silenced for this import only: the process's warning filters stay as they were.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch  # noqa: F401

from ._version import __version__
from .archs import AutoEncoder, RRDBNet, SRVGGNetCompact
from .checkpoints import CheckpointError
from .loss import AESOPLoss

__all__ = ["AESOPLoss", "AutoEncoder", "CheckpointError", "RRDBNet", "SRVGGNetCompact", "__version__"]
