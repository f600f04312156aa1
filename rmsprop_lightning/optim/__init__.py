"""RMSprop (a torch-compatible superset with an optional compiled step) and its parameter groups."""

from rmsprop_lightning.optim import functional
from rmsprop_lightning.optim.functional import init_state
from rmsprop_lightning.optim.param_groups import apply_lr_multipliers, build_param_groups
from rmsprop_lightning.optim.rmsprop import RMSprop

# the functional core is ``rmsprop_lightning.optim.functional.rmsprop``; the name ``rmsprop`` here
# stays the submodule defining the class, so ``rmsprop_lightning.optim.rmsprop.RMSprop`` resolves
__all__ = ["RMSprop", "apply_lr_multipliers", "build_param_groups", "functional", "init_state"]
