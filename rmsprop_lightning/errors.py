"""Errors reported to the user as one line rather than a traceback, and the entry points' handling of them:
a bad input, a diverged run or a stop on SIGTERM/Ctrl-C is not a bug."""

from __future__ import annotations

import difflib
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# what Hydra writes into a run folder before the job starts, and the job wrapper's summary
HYDRA_RUN_FILES = frozenset({".hydra", "metrics.json"})


def close_match(word: str, allowed: Sequence[str], prefix: str = "") -> str:
    """`` (did you mean <prefix><closest>?)`` for the closest of ``allowed`` to ``word``, or nothing."""
    close = difflib.get_close_matches(word, allowed, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


class RunError(Exception):
    """A run that ended for a reason the user can act on; ``exit_code`` is the process's exit status."""

    exit_code = 1


class InputError(RunError):
    """A bad config value, data file, checkpoint, resume folder or output folder, found before any work."""

    exit_code = 2


class DivergedError(RunError):
    """Training produced a non-finite loss or parameter and stopped at that step."""

    exit_code = 3


class InterruptedRun(BaseException):
    """A job stopped by SIGTERM or SIGINT: within the training steps after saving a checkpoint, else at once.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a multirun's job wrapper, which goes on after
    a failed job, lets it through and Ctrl-C stops the whole sweep.
    """

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


# a signal that a distributed run's first rank took while the ranks started, where none may stop alone
_stop_requested: list[int] = []


def request_stop(signum: int | None) -> None:
    """Has the next fit stop every rank after its first training step, as if ``signum`` came then
    (:class:`~rmsprop_lightning.callbacks.GracefulInterrupt` takes it up); ``None`` withdraws it."""
    _stop_requested[:] = [] if signum is None else [signum]


def requested_stop() -> int | None:
    """Takes up the signal :func:`request_stop` left, if any."""
    return _stop_requested.pop() if _stop_requested else None


# the command that started a run or sweep, for the processes launchers start (joblib's, submitit's)
PROGRAM_ENV = "RMSPROP_LIGHTNING_PROGRAM"


def started_as(script: str) -> str:
    """``python <script as typed>``, or the console command (``rmsprop-train``) that ``script`` is."""
    return f"python {shlex.quote(script)}" if script.endswith(".py") else Path(script).name


def program() -> str:
    """The command that started this run or sweep, for the commands messages suggest (the entry point keeps
    it in the environment for the processes launchers start)."""
    return os.environ.get(PROGRAM_ENV) or started_as(sys.argv[0])


def resume_command(run_dir: str | Path) -> str:
    """The command that resumes the run in ``run_dir``, quoted for a shell."""
    return f"{program()} {shlex.quote(f'resume={run_dir}')}"


def resume_hint(run_dir: str | Path, kept: bool) -> str:
    """How to go on with the run in ``run_dir``: resume it from the ``last.ckpt`` it ``kept``, or start it
    again (a resume without one starts from step 0)."""
    command = resume_command(run_dir)
    return f"resume with: {command}" if kept else f"no last.ckpt to go on from: {command} starts it again"


# the variables launchers (torchrun, SLURM, Lightning's own) set to a process's rank
RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """Whether this process is the first (or only) rank: Lightning's record once it is loaded (it outlives
    the variables a finished DDP job removes), else the launch variables."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if rank_zero is not None:
        return rank_zero.rank_zero_only.rank == 0
    return all(os.environ.get(name, "0") == "0" for name in RANK_ENV_VARS)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library messages often add paragraphs of advice)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turns :class:`RunError` and :class:`InterruptedRun` into one line on stderr and ``sys.exit``."""
    try:
        yield
    except (RunError, InterruptedRun) as error:
        if is_rank_zero():
            if isinstance(error, InputError):
                discard_rejected_run()
            else:
                write_to_log_files(f"{type(error).__name__}: {error}")
        exit_with(error)


def exit_with(error: RunError | InterruptedRun) -> None:
    """Prints ``error`` in one line (first rank only) and exits with its code; HYDRA_FULL_ERROR=1 raises.

    Another rank exits with 0 from a divergence or a stop, which all ranks meet at the same step, so that
    Lightning's watch over the ranks (which kills the first rank when one fails) lets a multirun go on.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    if is_rank_zero():
        print(f"error: {error}", file=sys.stderr, flush=True)
    elif isinstance(error, DivergedError | InterruptedRun):
        sys.exit(0)
    sys.exit(error.exit_code)


def write_to_log_files(message: str) -> None:
    """Appends ``message`` to the run's log files only (the console gets it once, on stderr)."""
    record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def discard_rejected_run() -> None:
    """Removes the folder Hydra created for a single run rejected before any work, if it holds nothing
    but Hydra's files, its log and the job summary (a resumed run's or a multirun job's is kept)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN or hydra_cfg.output_subdir is None:
        return
    folder = Path(hydra_cfg.runtime.output_dir)
    allowed = HYDRA_RUN_FILES | {f"{hydra_cfg.job.name}.log"}
    if folder.is_dir() and {entry.name for entry in folder.iterdir()} <= allowed:
        for logger in [logging.getLogger(), *logging.getLogger().manager.loggerDict.values()]:
            for handler in list(getattr(logger, "handlers", [])):
                if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder:
                    logger.removeHandler(handler)
                    handler.close()
        shutil.rmtree(folder)
