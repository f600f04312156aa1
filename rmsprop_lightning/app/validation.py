"""Checks before training that need torch or the built objects: the accelerator, the data, the checkpoint;
errors the objects raise about their own arguments get the same one-line form (:func:`input_errors`)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmsprop_lightning.app.config_checks import counts_processes
from rmsprop_lightning.app.rules import BACKENDS, FLOAT16_MIXED, select
from rmsprop_lightning.errors import InputError, first_line
from rmsprop_lightning.internals import epochs_done, saved_loader_states

# errors that, raised while objects are built from the config and the data is read, mean bad input
INPUT_ERRORS = (
    ValueError,
    TypeError,
    OSError,
    EOFError,
    ImportError,
    zipfile.BadZipFile,
    MisconfigurationException,
    OmegaConfBaseException,
)


def check_accelerator(accelerator: Any, precision: Any, devices: Any, backend: Any = None) -> None:
    """``trainer.accelerator`` names one this machine has (Lightning's error names no setting), a run on the
    CPU asks for a number of processes and no float16 mixed precision, which Lightning there replaces with
    bfloat16, and DDP's ``process_group_backend`` is one this build of torch has."""
    import torch.distributed
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    built = [name for name in BACKENDS if getattr(torch.distributed, f"is_{name}_available", bool)()]
    if backend is not None and backend not in built:
        raise InputError(
            f"trainer.strategy.process_group_backend={backend}: this build of torch has no {backend}; "
            f"allowed: {', '.join(built) or 'none'}"
        )

    cuda, mps = CUDAAccelerator.is_available(), MPSAccelerator.is_available()
    available = {"gpu": cuda or mps, "cuda": cuda, "mps": mps, "tpu": XLAAccelerator.is_available()}
    if not available.get(str(accelerator), True):
        raise InputError(
            f"trainer.accelerator={accelerator}: this machine has none; allowed: trainer=cpu, or "
            "trainer.accelerator=auto (a GPU where there is one)"
        )
    on_cpu = str(accelerator) == "cpu" or (str(accelerator) == "auto" and not (cuda or mps))
    if on_cpu and not counts_processes(devices):
        raise InputError(
            f"trainer.devices={devices} names devices of a GPU; allowed: a number of processes on the CPU ≥ 1"
        )
    if on_cpu and str(precision) in FLOAT16_MIXED:
        raise InputError(
            f"trainer.precision={precision}: float16 mixed precision runs on a GPU only; allowed: "
            "trainer.precision=bf16-mixed on the CPU"
        )


@contextmanager
def input_errors() -> Iterator[None]:
    """Turns the errors objects raise about their own arguments while being built into :class:`InputError`."""
    try:
        yield
    except InstantiationException as error:
        cause = error.__cause__ if error.__cause__ is not None else error
        raise InputError(first_line(cause)) from error
    except INPUT_ERRORS as error:
        raise InputError(first_line(error)) from error


def read_data(cfg: DictConfig, datamodule: Any) -> None:
    """Reads and splits the data, once; a reader's error is prefixed with ``data.source.path``."""
    path = select(cfg, "data.source.path")
    try:
        datamodule.splits  # noqa: B018  (loads, checks and splits the table)
    except INPUT_ERRORS as error:
        message = first_line(error)
        if path is not None and not message.startswith("data."):
            key = "data.source.path" if str(path) in message else f"data.source.path={path}"
            message = f"{key}: {message}"
        raise InputError(message) from error


def check_data(cfg: DictConfig, datamodule: Any) -> None:
    """Reads the data (if the model did not need it yet); checks explicit model sizes against it, and that
    with ``drop_last`` each process's share of the training split fills a batch."""
    read_data(cfg, datamodule)
    world, rows = processes(cfg.trainer), len(datamodule.splits["train"][0])
    share = -(-rows // world)  # the loader pads the shares to one size
    if datamodule.drop_last and world > 1 and share < datamodule.batch_size:
        raise InputError(
            f"data.batch_size={datamodule.batch_size} is more than the {share} training rows each of the "
            f"{world} processes gets with data.drop_last=true; allowed: data.batch_size up to {share}, or "
            "data.drop_last=false"
        )
    for key, size, what in (
        ("in_features", datamodule.num_features, "feature columns"),
        ("out_features", datamodule.num_targets, "target columns"),
    ):
        wanted = select(cfg, f"model.{key}")
        if wanted is not None and wanted != size:
            raise InputError(
                f"model.{key}={wanted} but the data has {size} {what}; "
                f"allowed: {size}, or null to take it from the data"
            )


def processes(trainer: DictConfig) -> int:
    """How many processes the ``trainer`` config runs: its nodes times its devices, as Lightning counts them
    (``gpu`` and ``auto`` pick MPS, then CUDA; ``-1`` and ``auto`` devices are all of the machine's)."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

    accelerator, devices = str(trainer.get("accelerator", "auto")), trainer.get("devices", "auto")
    if accelerator in ("gpu", "auto"):
        cuda = "cuda" if accelerator == "gpu" or CUDAAccelerator.is_available() else "cpu"
        accelerator = "mps" if MPSAccelerator.is_available() else cuda
    kind = {"cuda": CUDAAccelerator, "mps": MPSAccelerator}.get(accelerator, CPUAccelerator)
    if devices == "auto":
        return kind.auto_device_count() * trainer.get("num_nodes", 1)
    parsed = kind.parse_devices(OmegaConf.to_object(devices) if OmegaConf.is_config(devices) else devices)
    return (len(parsed) if isinstance(parsed, list) else parsed) * trainer.get("num_nodes", 1)


def check_rows_per_process(cfg: DictConfig, datamodule: Any) -> None:
    """Each process evaluates its share of the validation and test rows, so each needs one."""
    world = processes(cfg.trainer)
    for split, key in (("val", "data.val_fraction"), ("test", "data.test_fraction")):
        rows = len(datamodule.splits[split][0])
        if 0 < rows < world:
            raise InputError(
                f"{key}={select(cfg, key)} leaves {rows} {split} row(s) for {world} processes; allowed: "
                f"at least one row per process (a larger {key} or more data), {key}=0, or fewer processes"
            )


def check_same_processes(cfg: DictConfig) -> None:
    """A resumed run goes on with as many processes as it trained with: only then does it continue exactly
    as if it had never stopped (a branch, ``ckpt_path=``, may change them)."""
    states = saved_loader_states(load_checkpoint(cfg.ckpt_path))
    saved, now = states[0].get("world_size") if states else None, processes(cfg.trainer)
    if saved is not None and saved != now:
        raise InputError(
            f"resume: the run trained with {saved} process(es), and its trainer's devices and num_nodes "
            f"give {now} here; allowed: {saved} process(es), or a new run from the checkpoint with "
            f"ckpt_path={cfg.ckpt_path}"
        )


def check_same_data(cfg: DictConfig, datamodule: Any) -> None:
    """A resumed run goes on with the data it was trained on: a data file changed since is refused."""
    saved = load_checkpoint(cfg.ckpt_path).get(type(datamodule).__qualname__) or {}
    changed = datamodule.changes(saved)
    if changed:
        source = select(cfg, "data.source.path")
        what = f"data.source.path={source}" if source is not None else "data"
        raise InputError(
            f"resume: {what} no longer holds the data the run was trained on (its {', '.join(changed)} "
            f"differ from its checkpoint's); allowed: the run's own data, or a new run from the checkpoint "
            f"with ckpt_path={cfg.ckpt_path}"
        )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded weights-only and memory-mapped (tensors are read on demand)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ckpt_path={path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"ckpt_path={path} holds objects a weights-only load refuses; "
            "allowed: checkpoints written by this project"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise InputError(
            f"ckpt_path={path} is not a checkpoint torch can read: another kind of file, or one truncated or "
            f"corrupt ({first_line(error)})"
        ) from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise InputError(f"ckpt_path={path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def check_intact(path: str | Path) -> None:
    """Refuses a checkpoint whose bytes changed since torch wrote them: torch's load does not read the
    checksums its zip archive keeps, and damaged tensors or random states load without an error."""
    if not zipfile.is_zipfile(path):  # torch's legacy format, which keeps none
        return
    with zipfile.ZipFile(path) as archive:
        if any(entry.CRC == 0 and entry.file_size for entry in archive.infolist()):
            return  # saved without checksums (torch's serialization config, save.compute_crc32=False)
        damaged = archive.testzip()
    if damaged is not None:
        raise InputError(
            f"ckpt_path={path} is corrupt: its entry {damaged} does not match the checksum written with it; "
            "allowed: a checkpoint as it was saved"
        )


def check_checkpoint(path: str | Path, module: Any, optimizer: Any, limits: Mapping[str, Any]) -> None:
    """The checkpoint to start from is intact, fits this model (and ``optimizer``, unless ``None``) and
    leaves steps under the trainer's ``limits`` (``max_steps``, ``max_epochs``)."""
    checkpoint = load_checkpoint(path)
    check_intact(path)
    saved, current = checkpoint["state_dict"], module.state_dict()
    for name in [*current, *(name for name in saved if name not in current)]:
        if name not in current or name not in saved:
            where = "the checkpoint only" if name in saved else "this model only"
            raise InputError(f"ckpt_path={path} was saved from a different model: {name} is in {where}")
        if saved[name].shape != current[name].shape:
            raise InputError(
                f"ckpt_path={path} was saved from a different model: {name} has shape "
                f"{list(saved[name].shape)} there but {list(current[name].shape)} here "
                "(model.in_features, model.hidden and model.out_features must match)"
            )
    if optimizer is None:
        return
    if not checkpoint.get("optimizer_states"):
        raise InputError(
            f"ckpt_path={path} holds weights only (no optimizer state); it cannot resume training "
            "(ckpt_restore=weights starts from its weights)"
        )
    saved_sizes = [len(group["params"]) for group in checkpoint["optimizer_states"][0]["param_groups"]]
    optimizer = optimizer["optimizer"] if isinstance(optimizer, Mapping) else optimizer
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise InputError(
            f"ckpt_path={path} has optimizer parameter groups of sizes {saved_sizes}, this run {sizes}; "
            "module.no_weight_decay_on_bias and module.lr_multipliers must match the checkpoint's run"
        )
    check_steps_left(checkpoint, limits, f"ckpt_path={path}")


def check_steps_left(checkpoint: Mapping[str, Any], limits: Mapping[str, Any], what: str) -> None:
    """Refuses to start from a checkpoint that already reached ``trainer.max_steps`` or ``max_epochs``
    (limits of another type are the config check's to report)."""
    step, max_steps = checkpoint.get("global_step", 0), limits.get("max_steps", -1)
    if isinstance(max_steps, int) and max_steps != -1 and step >= max_steps:
        raise InputError(
            f"{what} is at step {step} and trainer.max_steps={max_steps}: nothing left to train; "
            f"allowed: trainer.max_steps > {step}"
        )
    epochs, max_epochs = epochs_done(checkpoint), limits.get("max_epochs")
    if isinstance(max_epochs, int) and max_epochs != -1 and epochs >= max_epochs:
        raise InputError(
            f"{what} has run {epochs} epoch(s) and trainer.max_epochs={max_epochs}: nothing left to train; "
            f"allowed: trainer.max_epochs > {epochs}, or -1 with trainer.max_steps"
        )
