"""Optional integrations: a clear message naming the pyproject extra when one is missing."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from rmsprop_lightning.errors import InputError, exit_with

# the launchers that submit a sweep's jobs to a SLURM cluster
SLURM, SUBMITIT_SLURM = "hydra/launcher=slurm", "hydra/launcher=submitit_slurm"
# command-line overrides that select a Hydra plugin, and the (module, extra) each needs
PLUGIN_OVERRIDES: dict[str, tuple[str, str]] = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "sweeps"),
    "hydra/launcher=submitit": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    SLURM: ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "sweeps"),
    "hparams_search=": ("hydra_plugins.hydra_optuna_sweeper", "sweeps"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra``, from any folder: into the source tree this package runs from,
    or from the package index for an installed package."""
    source = Path(__file__).resolve().parents[2]
    if (source / "pyproject.toml").is_file():
        return f"pip install -e '{source}[{extra}]'"
    return f"pip install 'rmsprop-lightning[{extra}]'"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Imports ``module`` or raises :class:`MissingExtraError` naming ``extra`` and what needs it."""
    if not is_installed(module):
        raise MissingExtraError(f"{feature} needs the optional package {module!r}: {install_hint(extra)}")
    return importlib.import_module(module)


def check_plugin_overrides(arguments: Sequence[str]) -> None:
    """Fails before Hydra starts when an override selects a launcher or sweeper whose extra is missing."""
    for argument in arguments:
        for prefix, (module, extra) in PLUGIN_OVERRIDES.items():
            if argument.lstrip("+~").startswith(prefix) and not is_installed(module):
                raise MissingExtraError(
                    f"{argument} needs the optional package {module!r}: {install_hint(extra)}"
                )


def exit_if_plugin_missing(arguments: Sequence[str]) -> None:
    """For entry points: :func:`check_plugin_overrides`, ending the program with its message; a sweep
    submitted to SLURM from a machine without its ``sbatch`` ends too (submitit would fail once under way)."""
    try:
        check_plugin_overrides(arguments)
    except MissingExtraError as error:
        exit_with(InputError(str(error)))
    sweep = any(argument in ("-m", "--multirun") for argument in arguments)
    submits = [argument for argument in arguments if argument in (SLURM, SUBMITIT_SLURM)]
    if sweep and submits and shutil.which("sbatch") is None:
        exit_with(
            InputError(
                f"{submits[0]} submits the jobs to a SLURM cluster, but this machine has no sbatch; "
                "allowed: hydra/launcher=basic, joblib_local or population here, or a SLURM login node"
            )
        )
