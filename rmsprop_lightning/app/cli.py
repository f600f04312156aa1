"""Console entry points: ``rmsprop-train`` (and ``python train.py``) run the template's Hydra app."""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings
from importlib.resources import files
from pathlib import Path

import hydra
from hydra_plugins.rmsprop_population.population_launcher import register as register_population_launcher
from omegaconf import DictConfig

from rmsprop_lightning.app.entry import run_app
from rmsprop_lightning.app.extras import exit_if_plugin_missing
from rmsprop_lightning.app.jobs import run_job
from rmsprop_lightning.app.resolvers import register_resolvers
from rmsprop_lightning.errors import PROGRAM_ENV, is_rank_zero, reported_errors, started_as


def config_dir() -> Path:
    """The configs: inside the installed package, or ``conf/`` beside the package in a source tree that
    runs without an editable install (another install then provides the package's data)."""
    try:
        return Path(str(files("rmsprop_lightning.conf")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "conf"


CONFIG_DIR = config_dir()


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_train(cfg: DictConfig) -> float | None:
    with reported_errors():
        return run_job(cfg)


def quiet_dependencies() -> None:
    """Keeps dependencies' advertisements, warnings about their internals, and warnings that do not apply
    here (a short epoch: every step's loss is logged; a resumed run's checkpoints) out of a run's output."""
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addFilter(lambda record: not str(record.msg).startswith("💡 Tip"))  # its cloud service
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its event reader, on resume
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # Lightning's all_gather (the evaluation's sums under DDP) calls one that torch deprecated
    warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")


def leave_out_of_shutdown_collections() -> None:
    """Collects today's garbage, then freezes what is alive, so the collections the interpreter runs as it
    shuts down skip the objects of torch, Lightning and the run (finalizers at exit are not promised)."""
    gc.collect()
    if "triton" not in sys.modules:  # CUDA builds of torch load it: frozen, its objects are reported as leaks
        gc.freeze()


def train_main() -> None:
    """``rmsprop-train [overrides]``: the template's training job."""
    os.environ[PROGRAM_ENV] = started_as(sys.argv[0])  # for the resume commands of jobs in other processes
    exit_if_plugin_missing(sys.argv[1:])
    register_resolvers()
    register_population_launcher()
    quiet_dependencies()
    try:
        try:
            run_app(_hydra_train, CONFIG_DIR)
        finally:
            leave_out_of_shutdown_collections()
    except KeyboardInterrupt:  # a Ctrl-C that no job turned into a stop: while Hydra starts, at the end
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if is_rank_zero():
            print("error: stopped by SIGINT", file=sys.stderr, flush=True)
        sys.exit(130)
