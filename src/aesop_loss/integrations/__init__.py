"""Adapters for the frameworks SR models are trained with, each following that framework's rules.

| framework | module | applies ``loss_weight`` | option ``type`` |
| --- | --- | --- | --- |
| BasicSR | ``integrations.basicsr`` | the loss | ``AESOPLoss`` |
| neosr | ``integrations.neosr`` | the loss | ``AESOPLoss`` |
| traiNNer-redux | ``integrations.trainner`` | the framework, ``abs(loss_weight)`` | ``AESOPRefLoss`` |

Each module has a ``register(registry=None)`` that puts its loss class into the framework's
``LOSS_REGISTRY`` (imported from the framework when not given), so that the framework's own
``build_loss`` finds it by the option's ``type``. None of the frameworks is a dependency.
"""

from __future__ import annotations

__all__: list[str] = []
