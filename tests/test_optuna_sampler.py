"""The trial-seeded TPE sampler: a study resumed from storage samples as if it had never stopped."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

from rmsprop_lightning.app.optuna_sampler import TrialSeededTPESampler  # noqa: E402


def objective(trial) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    momentum = trial.suggest_float("momentum", 0.0, 0.95)
    return (lr - 0.01) ** 2 + (momentum - 0.5) ** 2


def trials_of(storage: str, runs: list[int], sampler_type=TrialSeededTPESampler) -> list[dict]:
    """Runs the study once per entry of ``runs`` with a new sampler each time, as a new process would."""
    for count in runs:
        study = optuna.create_study(
            study_name="s",
            storage=storage,
            sampler=sampler_type(seed=7, n_startup_trials=3),
            load_if_exists=True,
        )
        study.optimize(objective, n_trials=count)
    return [trial.params for trial in study.trials]


def test_resumed_study_samples_exactly_as_an_uninterrupted_one(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resumed = trials_of(f"sqlite:///{tmp_path / 'resumed.db'}", [2, 4])
    straight = trials_of(f"sqlite:///{tmp_path / 'straight.db'}", [6])
    assert len(resumed) == 6 and resumed == straight
    assert len({params["lr"] for params in resumed}) == 6


def test_plain_seeded_tpe_repeats_its_first_draws_when_resumed(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resumed = trials_of(f"sqlite:///{tmp_path / 'plain.db'}", [2, 2], optuna.samplers.TPESampler)
    assert resumed[2] == resumed[0]
