"""RMSprop (a torch-compatible superset with an optional compiled step) and its parameter groups.

The names load on first use, so the option checks in :mod:`~rmsprop_lightning.optim.validation` answer
before torch loads."""

from rmsprop_lightning import lazy_exports

_EXPORTS = {
    "RMSprop": "rmsprop_lightning.optim.rmsprop",
    "apply_lr_multipliers": "rmsprop_lightning.optim.param_groups",
    "build_param_groups": "rmsprop_lightning.optim.param_groups",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
