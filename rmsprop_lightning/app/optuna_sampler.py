"""An Optuna TPE sampler whose draws are seeded per trial, so a resumed study samples as if never stopped
(Optuna's seeded samplers restart one random stream per process); used by ``hparams_search`` configs."""

from __future__ import annotations

import zlib
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial


class TrialSeededTPESampler(TPESampler):
    """Optuna's ``TPESampler`` with a sampler per (trial, parameter) when ``seed`` is set: TPE still learns
    from all trials."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.base_seed = seed
        self.options = kwargs

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self.base_seed is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        seed = zlib.crc32(f"{self.base_seed}/{trial.number}/{param_name}".encode())
        drawer = TPESampler(seed=seed, **self.options)
        return drawer.sample_independent(study, trial, param_name, param_distribution)
