"""A callback for tests: the training process sends itself a signal at a chosen hook and step.

``SELF_KILL=<hook>:<step>[:<signal>]`` picks the moment and the signal (``KILL`` by
default; ``TERM``, ``INT``): hooks are ``train_batch_start``, ``before_optimizer_step``,
``train_batch_end`` and ``validation_batch_end``, and ``step`` is ``trainer.global_step``.
With ``SELF_KILL_GROUP=1`` the signal goes to the whole process group (every DDP rank).
Without ``SELF_KILL`` it does nothing, so a resumed run with the same config goes on.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch.callbacks import Callback


class SelfKill(Callback):
    """Signals its own process (or process group) once, at ``SELF_KILL=<hook>:<step>[:<signal>]``."""

    def __init__(self) -> None:
        hook, step, name = (os.environ.get("SELF_KILL", "") + "::").split(":")[:3]
        self.hook = hook
        self.step = int(step) if step else None
        self.signal = signal.Signals[f"SIG{name or 'KILL'}"]
        self.group = os.environ.get("SELF_KILL_GROUP") == "1"
        self.sent = False

    def _maybe_signal(self, hook: str, trainer: Any) -> None:
        if self.sent or hook != self.hook or trainer.global_step != self.step:
            return
        self.sent = True
        if self.group:
            os.killpg(os.getpgid(0), self.signal)
        else:
            os.kill(os.getpid(), self.signal)

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        self._maybe_signal("train_batch_start", trainer)

    def on_before_optimizer_step(self, trainer: Any, *args: Any) -> None:
        self._maybe_signal("before_optimizer_step", trainer)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self._maybe_signal("train_batch_end", trainer)

    def on_validation_batch_end(self, trainer: Any, *args: Any) -> None:
        self._maybe_signal("validation_batch_end", trainer)
