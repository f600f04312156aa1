"""A template run's HPARAMS: its settings, its config groups' options, every key its command line set."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.resume import HYDRA_FOLDER, RESUME_KEY, SAFE_KEYS
from rmsprop_lightning.logging.tensorboard import HParamValue, run_hparams

# the config groups whose chosen option the HPARAMS tab shows (a sweep of presets, of data sets)
CHOSEN_GROUPS = ("experiment", "debug", "data", "model", "optimizer", "scheduler")
# sections of the config that say where and how a run records, not what it trains
UNRECORDED = ("hydra", "paths", "callbacks", "logger", RESUME_KEY)


def run_hydra_config(cfg: DictConfig) -> DictConfig | None:
    """The run's Hydra settings: a resumed run's saved ones (its command line and choices), else the job's."""
    if cfg.get(RESUME_KEY):
        saved = Path(cfg[RESUME_KEY]) / HYDRA_FOLDER / "hydra.yaml"
        return OmegaConf.load(saved).get("hydra") if saved.is_file() else None
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def job_hparams(cfg: DictConfig) -> dict[str, HParamValue]:
    """:func:`run_hparams`, the option each of :data:`CHOSEN_GROUPS` chose, and each other key of the run's
    command line: what a sweep varies, but what a resume may change (TensorBoard keeps the first record)."""
    hydra_cfg = run_hydra_config(cfg)
    if hydra_cfg is None:
        return run_hparams(cfg)
    choices = hydra_cfg.runtime.choices
    keys = []
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        skipped = override.is_delete() or override.package or key in choices or key in SAFE_KEYS
        if not skipped and key.split(".")[0] not in UNRECORDED:
            keys.append(key)
    chosen = {group: choices[group] for group in CHOSEN_GROUPS if choices.get(group) is not None}
    return run_hparams(cfg, chosen, keys)
