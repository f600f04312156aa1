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


def check_best_kept(state: dict[str, Any], max_steps: Any, test: Any, checkpoint: Path) -> None:
    """Refuses a resume that would test on a best checkpoint deleted after ``checkpoint`` was written: a
    better one replaced it, which a run ending before that one's step does not write again."""
    if test is False or isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        return
    from rmsprop_lightning.app.validation import load_checkpoint

    for entry in state.get("callbacks", {}).values():
        best = Path(entry.get("best_model_path") or "") if isinstance(entry, dict) else Path()
        if not best.name or best.is_file():
            continue
        saved = {load_checkpoint(path)["global_step"]: path.name for path in best.parent.glob("*.ckpt")}
        later = sorted(step for step in saved if step > state["global_step"])
        if later and max_steps >= later[0]:
            continue  # its validation comes again, and keeps the same checkpoint
        replaced = (
            f"; {saved[later[0]]} replaced it, which a run ending before step {later[0]}" if later else ""
        )
        raise InputError(
            f"resume: trainer.max_steps={max_steps} would test on {best.name}, which {checkpoint.name} names "
            f"but is gone{replaced} does not write again; allowed: "
            + (f"trainer.max_steps >= {later[0]}, or test=false" if later else "test=false")
        )
