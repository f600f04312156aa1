"""A template run's HPARAMS: its settings, its config groups' options, every key its command line set."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.resume import HYDRA_FOLDER, RESUME_KEY, SAFE_KEYS
from rmsprop_lightning.logging.tensorboard import HParamValue, run_hparams

# the config groups whose chosen option the HPARAMS tab shows (a sweep of presets, of data sets)
CHOSEN_GROUPS = ("experiment", "debug", "data", "model", "optimizer", "scheduler", "trainer")
# sections of the config that say where and how a run records, not what it trains
UNRECORDED = ("hydra", "paths", "callbacks", "logger", RESUME_KEY)


def run_configs(cfg: DictConfig) -> tuple[DictConfig, DictConfig | None]:
    """The run's config as it started and its Hydra settings: a resumed run's saved ones (a resume points
    ``ckpt_path`` at the run's own checkpoint, makes input paths absolute), else the job's."""
    if cfg.get(RESUME_KEY):
        folder = Path(cfg[RESUME_KEY]) / HYDRA_FOLDER
        saved = (
            OmegaConf.load(folder / "hydra.yaml").get("hydra") if (folder / "hydra.yaml").is_file() else None
        )
        return OmegaConf.load(folder / "config.yaml"), saved
    from hydra.core.hydra_config import HydraConfig

    return cfg, HydraConfig.get() if HydraConfig.initialized() else None


def job_hparams(cfg: DictConfig, fast_fell_back: bool | None = None) -> dict[str, HParamValue]:
    """:func:`run_hparams`, the option each of :data:`CHOSEN_GROUPS` chose, and each other key of the run's
    command line: what a sweep varies, but what a resume may change (TensorBoard keeps the first record).
    ``optimizer/fast`` is false where the fast step fell back to the eager one, as the run's log says."""
    started, hydra_cfg = run_configs(cfg)
    chosen, keys = {}, []
    if hydra_cfg is not None:
        choices = hydra_cfg.runtime.choices
        for override in OverridesParser.create().parse_overrides(
            OmegaConf.to_container(hydra_cfg.overrides.task)
        ):
            key = override.key_or_group
            skipped = override.is_delete() or override.package or key in choices or key in SAFE_KEYS
            if not skipped and key.split(".")[0] not in UNRECORDED:
                keys.append(key)
        chosen = {group: choices[group] for group in CHOSEN_GROUPS if choices.get(group) is not None}
    params = run_hparams(started, chosen, keys)
    if fast_fell_back and "optimizer/fast" in params:
        params["optimizer/fast"] = False
    return params
