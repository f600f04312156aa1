"""rmsprop-lightning: RMSprop for PyTorch Lightning, with a Hydra experiment template.

The main classes load on first use, so tools that need none of them do not pay for importing torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports each of ``exports`` (name → module) on first use."""

    def load(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return load


_EXPORTS = {
    "FeedForward": "rmsprop_lightning.model",
    "OptimizerStateMonitor": "rmsprop_lightning.callbacks",
    "RMSprop": "rmsprop_lightning.optim",
    "RegressionDataModule": "rmsprop_lightning.data",
    "RegressionModule": "rmsprop_lightning.module",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
