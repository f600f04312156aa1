"""SIGTERM and Ctrl-C outside a job's training steps: they stop the job at once, or once an import is done
(inside the steps :class:`~rmsprop_lightning.callbacks.GracefulInterrupt` takes over); no rank of a
distributed run stops alone: while they start, every rank stops after its first training step."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rmsprop_lightning.app.resume_checks import last_checkpoint
from rmsprop_lightning.errors import InterruptedRun, is_rank_zero, request_stop, resume_hint

log = logging.getLogger(__name__)


class SignalsStop:
    """What :func:`signals_stop` does with a signal: stops at once, or, while :meth:`held`, once that ends."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.holding = False
        self.received: int | None = None
        self.at_first_step = False  # a distributed run's: its ranks stop after their first training step

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received and signum == signal.SIGINT:  # Ctrl-C again
            raise stopped_outside_steps(signum, self.run_dir)
        self.received = self.received or signum
        if is_one_of_several_ranks():
            # one rank stopping alone would hang the others: in their collectives, or waiting for it to join
            request_stop(self.received)
            self.at_first_step = True
            if is_rank_zero():
                log.warning(
                    "Received %s while the ranks of a distributed run start: every rank stops after its "
                    "first training step (Ctrl-C again stops at once)",
                    name,
                )
            return
        if self.holding:
            log.warning("Received %s: importing first (Ctrl-C again stops at once)", name)
            return
        raise stopped_outside_steps(signum, self.run_dir)

    @contextmanager
    def held(self) -> Iterator[None]:
        """A signal stops the job once the block is done, a second Ctrl-C at once: an import a signal cut
        short would leave its module broken for the sweep's next jobs."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.received is not None and not self.at_first_step:
            raise stopped_outside_steps(self.received, self.run_dir)


@contextmanager
def signals_stop(run_dir: str) -> Iterator[SignalsStop]:
    """SIGTERM and Ctrl-C stop the block at once (or at the end of :meth:`SignalsStop.held`) with an
    :class:`InterruptedRun` (during the training steps :class:`~rmsprop_lightning.callbacks.GracefulInterrupt`
    takes over); a handler set by others stays."""
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    stop = SignalsStop(run_dir)
    request_stop(None)  # one an earlier job's ranks took, whose fit never started
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default in defaults.items():
            if signal.getsignal(signum) == default:
                previous[signum] = signal.signal(signum, stop.handle)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def is_one_of_several_ranks() -> bool:
    """Whether this process is a rank of a distributed run: one whose process group is up, or, while the
    ranks start, one a launcher started or is starting others for (it sets ``WORLD_SIZE``)."""
    dist = sys.modules.get("torch.distributed")  # not imported by this check
    if dist and dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE") or 1) > 1


def stopped_outside_steps(signum: int, run_dir: str) -> InterruptedRun:
    """The stop of a job by a signal outside its training steps, which takes no checkpoint."""
    hint = resume_hint(run_dir, last_checkpoint(run_dir).is_file())
    return InterruptedRun(
        f"stopped by {signal.Signals(signum).name} outside the training steps; {hint}", signum
    )
