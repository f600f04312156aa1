"""The random number generators' states, saved in every checkpoint and restored on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RandomState(Callback):
    """Puts the torch (CPU and CUDA), NumPy and Python generator states into checkpoints.

    Lightning restores weights, optimizer, schedulers and loops but not these, so dropout
    masks or anything else drawn from the global generators would differ after a resume.
    States are stored as tensors, ints and strings only, so checkpoints still load
    weights-only. Under DDP the first rank's states are saved and restored on every rank.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        version, python_state, python_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": [version, list(python_state), python_gauss],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        version, python_state, python_gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), python_gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
