"""Registering a loss class in a framework's registry under a given name, refusing a taken name."""

from __future__ import annotations

import importlib
import sys
from typing import Any, TypeVar

from ..loss import AESOPLoss

L = TypeVar("L", bound=AESOPLoss)


def _registered(registry: Any, name: str) -> bool:
    """Whether ``registry.get(name)`` finds something (every framework's registry has ``get``)."""
    try:
        registry.get(name)
    except KeyError:
        return False
    return True


def register_as(registry: Any, cls: type[L], name: str, *, framework: str, default_registry: str) -> type[L]:
    """Register ``cls`` (or a subclass of it named ``name``) in ``registry`` and return what was registered.

    The registries of BasicSR, neosr and traiNNer-redux register a class under its ``__name__``
    (traiNNer-redux lower-cased), so another name needs a subclass of that name.

    Args:
        registry: The framework's registry, or None for ``default_registry``'s ``LOSS_REGISTRY``.
        cls: The loss class.
        name: The option ``type`` that builds it.
        framework: The framework's name, for messages.
        default_registry: The module that holds the framework's ``LOSS_REGISTRY``.

    Raises:
        ValueError: The registry already holds something under ``name`` (as its ``get`` sees it).
        ImportError: No ``registry`` given and the framework is not importable.
    """
    if registry is None:
        registry = importlib.import_module(default_registry).LOSS_REGISTRY
    if not name.isidentifier():
        raise ValueError(f"{framework}: {name!r} is not a valid loss type name (letters, digits, '_').")
    if _registered(registry, name):
        raise ValueError(
            f"{framework}'s LOSS_REGISTRY already has a loss named {name!r}; register this one under "
            f"another name (register(name=...)) and use that name as the option's type."
        )
    target = cls
    if name != cls.__name__:
        target = type(name, (cls,), {"__module__": cls.__module__, "__qualname__": name})
        # pickle (torch.save of a model holding the loss) finds a class by module and name
        setattr(sys.modules[cls.__module__], name, target)
    registry.register(target)
    return target
