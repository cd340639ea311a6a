"""aesop-loss: the AESOP loss (CVPR 2025) as a drop-in replacement for ``nn.L1Loss`` in SR training.

Examples:
    >>> from aesop_loss import AESOPLoss, AutoEncoder, RRDBNet
    >>> sorted(AutoEncoder().config)
    ['encoder', 'num_block', 'num_feat', 'num_grow_ch', 'num_in_ch', 'scale']
"""

from __future__ import annotations

from ._version import __version__
from .archs import AutoEncoder, RRDBNet
from .checkpoints import CheckpointError
from .loss import AESOPLoss

__all__ = ["AESOPLoss", "AutoEncoder", "CheckpointError", "RRDBNet", "__version__"]
