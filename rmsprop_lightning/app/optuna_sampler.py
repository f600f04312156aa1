"""An Optuna TPE sampler whose draws are seeded per trial, so a resumed study samples as if never stopped.

Optuna's seeded samplers hold one random stream for the process: a study continued
from its storage in a new process restarts that stream and repeats the first trials'
draws. Here every parameter of every trial is drawn by a TPE sampler seeded with
``(seed, trial number, parameter name)``; the TPE model still learns from all trials
in the storage. Used by ``hparams_search`` configs (extra ``sweeps``).
"""

from __future__ import annotations

import zlib
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial


def trial_seed(seed: int, number: int, name: str) -> int:
    """A 32-bit seed for parameter ``name`` of trial ``number``."""
    return zlib.crc32(f"{seed}/{number}/{name}".encode())


class TrialSeededTPESampler(TPESampler):
    """Optuna's ``TPESampler`` with a sampler per (trial, parameter) when ``seed`` is set."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.base_seed = seed
        self.options = kwargs

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self.base_seed is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        drawer = TPESampler(seed=trial_seed(self.base_seed, trial.number, param_name), **self.options)
        return drawer.sample_independent(study, trial, param_name, param_distribution)
