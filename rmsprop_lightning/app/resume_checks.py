"""What a resume refuses in the run's own records: a run it cannot continue as the run it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmsprop_lightning.errors import InputError

CHECKPOINT_FOLDER = "checkpoints"
# the file name of rmsprop_lightning.callbacks.LastCheckpoint, whose folder the template's config puts here
LAST_CHECKPOINT = "last.ckpt"


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps the checkpoint a resume starts from."""
    return Path(run_dir) / CHECKPOINT_FOLDER / LAST_CHECKPOINT


def check_nothing_trained(summary: dict[str, Any], run_dir: Path) -> None:
    """Refuses to start again from step 0 a run that completed without a checkpoint to continue it from
    (``callbacks=none``, or deleted since): its results would be replaced, not continued. A run killed or
    diverged before its first save starts again."""
    if summary.get("status") == "completed" and summary.get("steps"):
        raise InputError(
            f"resume={run_dir}: it completed {summary['steps']} steps and has no {LAST_CHECKPOINT} to "
            "continue from; allowed: ckpt_path=<a checkpoint of it> for a new run from it, or a new run"
        )


def check_not_moved(state: dict[str, Any], run_dir: Path) -> None:
    """Refuses to resume a run whose checkpoints were written in another folder: Lightning would not take
    up its best checkpoint there, and the run would end tested on another."""
    folders = [
        entry.get("dirpath") for entry in state.get("callbacks", {}).values() if isinstance(entry, dict)
    ]
    for folder in filter(None, folders):
        if not Path(folder).resolve().is_relative_to(run_dir.resolve()):
            raise InputError(
                f"resume={run_dir}: the run was written in {Path(folder).parent} and moved since; allowed: "
                f"resume it there, or start a new run from it with ckpt_path={last_checkpoint(run_dir)}"
            )


def check_test_kept(test: Any, summary: dict[str, Any], run_dir: Path) -> None:
    """Refuses ``test=false`` for a run whose earlier part tested: its test metrics would stay the last in
    TensorBoard, and so in HPARAMS, though they are not the continued run's."""
    tested = sorted(key for key in summary.get("final") or {} if key.startswith("test/"))
    if test is False and tested:
        raise InputError(
            f"resume: test=false would leave the {', '.join(tested)} of the run's earlier part as its last "
            "in TensorBoard and HPARAMS; allowed: test=true, or a new run from it with its settings and "
            f"test=false ckpt_path={last_checkpoint(run_dir)}"
        )


def check_best_kept(state: dict[str, Any], trainer: Any, max_steps: Any, test: Any, checkpoint: Path) -> None:
    """Refuses a resume that ends before its next validation and would test on a best checkpoint deleted after
    ``checkpoint`` was written (a better one replaced it before the run stopped): no validation of the
    resumed part writes a new one. Where a validation comes, it may, and the run goes on."""
    if test is False or isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        return
    best = next(
        (e for e in state.get("callbacks", {}).values() if isinstance(e, dict) and "best_model_path" in e), {}
    )
    path = Path(best.get("best_model_path") or "")
    if not path.name or path.is_file():
        return
    from rmsprop_lightning.app.fit_length import FitStats, batches_before, next_validation

    batches = state["callbacks"].get(FitStats.__qualname__, {}).get("batches")
    if not batches:  # an older run's: its validations cannot be told
        return
    epoch, window = batches
    saved_at = state["global_step"]
    upcoming = next_validation(trainer, epoch, batches_before(saved_at, epoch, window), 2**62)
    step = saved_at + 1  # the first step whose batches reach that validation
    while upcoming is not None and batches_before(step, epoch, window) < upcoming:
        step += 1
    if upcoming is not None and step <= max_steps:
        return
    when = f"its next validation, which step {step} reaches," if upcoming else "any validation"
    allowed = f"trainer.max_steps >= {step}, or test=false" if upcoming else "test=false"
    raise InputError(
        f"resume: trainer.max_steps={max_steps} ends before {when} and would test on {path.name}, the best "
        f"checkpoint {checkpoint.name} names, which is gone; allowed: {allowed}"
    )
