"""rmsprop-lightning: RMSprop for PyTorch Lightning, with a Hydra experiment template.

The main classes are importable from the package; they load on first use, so tools
that need none of them (``rmsprop-report``) do not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FeedForward": "rmsprop_lightning.model",
    "OptimizerStateMonitor": "rmsprop_lightning.callbacks",
    "RMSprop": "rmsprop_lightning.optim",
    "RegressionDataModule": "rmsprop_lightning.data",
    "RegressionModule": "rmsprop_lightning.module",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rmsprop_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
