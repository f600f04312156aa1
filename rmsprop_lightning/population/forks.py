"""Composing the jobs' configs and writing their folders in forked workers, the slow part of a large sweep,
with SIGTERM and Ctrl-C waiting until they are done.

The workers inherit what they need when they fork (:data:`shared`): only items and results cross.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.utils import configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, open_dict

from rmsprop_lightning.app.jobs import available_cores

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
# fewer items than this per worker run here: starting workers would cost more than it saves
ITEMS_PER_WORKER = 8
shared: dict[str, Any] = {}  # what the workers need, set before they fork


def fork_map(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    meanwhile: Callable[[], Any] = lambda: None,
    initializer: Callable[[], Any] | None = None,
    fork: bool = True,
) -> list[Result]:
    """``[function(item) for item in items]`` in forked workers (one per core, each first running
    ``initializer``) unless ``fork`` is false; ``meanwhile()`` runs here."""
    workers = min(available_cores(), len(items) // ITEMS_PER_WORKER) if fork else 0
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        meanwhile()
        return [function(item) for item in items]
    shared["task"], shared["initializer"] = function, initializer
    with multiprocessing.get_context("fork").Pool(workers, initializer=start_worker) as pool:
        try:
            pending = pool.map_async(run_task, items, chunksize=-(-len(items) // (4 * workers)))
            meanwhile()
            results = pending.get()
            pool.close()  # the workers end once they have read the pool's end: its SIGTERM reaches none
            pool.join()
            return results
        except BaseException:  # an error or a second Ctrl-C: the workers ignore the pool's SIGTERM
            for worker in multiprocessing.active_children():
                worker.kill()
            raise


def start_worker() -> None:
    """A forked worker leaves SIGTERM and Ctrl-C to the parent, which decides the stop, then runs the
    ``initializer``: a worker ended as it waits for an item would hold the pool's queue lock for good, and
    one ended amid an item would lose it; either way the pool would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if shared.get("initializer") is not None:
        shared["initializer"]()


def run_task(item: Item) -> Result:
    """A worker's item: the shared ``function`` (a worker has it from the fork, so nothing is pickled)."""
    return shared["task"](item)


def compose(job: tuple[int, Sequence[str]]) -> DictConfig:
    """Job ``(number, overrides)``'s config, as the basic launcher composes and numbers it."""
    number, overrides = job
    launcher = shared["launcher"]
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = config.hydra.job.num = number
    return config


def compose_jobs(
    launcher: Any, job_overrides: Sequence[Sequence[str]], first: int, meanwhile: str
) -> list[DictConfig]:
    """Sets up the sweep's logging and folder; composes every job while this process imports ``meanwhile``."""
    setup_globals()
    hydra = launcher.config.hydra
    configure_log(hydra.hydra_logging, hydra.verbose)
    Path(str(hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs as populations", len(job_overrides))
    jobs = list(enumerate(job_overrides, start=first))
    for number, overrides in jobs:
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
    shared["launcher"] = launcher
    return fork_map(compose, jobs, lambda: importlib.import_module(meanwhile))


@contextlib.contextmanager
def deferred_signals(doing: str) -> Iterator[list[int]]:
    """SIGTERM and Ctrl-C wait while the sweep's jobs are set up, or its population is tested and written
    (its members live only in memory until then); yields the signals received.

    A second Ctrl-C stops at once.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            restore()
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("Received %s: %s (Ctrl-C again stops at once)", signal.Signals(signum).name, doing)

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    try:
        yield received
    finally:
        restore()
