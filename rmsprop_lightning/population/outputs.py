"""Each member's outputs, as its solo run leaves them: scalars, TensorBoard events, checkpoints, summary."""

from __future__ import annotations

import collections
import math
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torch.utils.tensorboard.summary import custom_scalars

from rmsprop_lightning.app.job_hparams import job_hparams
from rmsprop_lightning.app.run import instantiate_entries
from rmsprop_lightning.callbacks.divergence import diverged_message
from rmsprop_lightning.callbacks.fit_stats import best_values
from rmsprop_lightning.callbacks.optimizer_state import custom_scalars_layout
from rmsprop_lightning.errors import DivergedError, resume_command
from rmsprop_lightning.logging.event_file import EventFile, scalars_summary
from rmsprop_lightning.logging.tensorboard import TensorBoardRunLogger
from rmsprop_lightning.population.checkpoints import write_checkpoints
from rmsprop_lightning.population.members import Member
from rmsprop_lightning.population.train import PopulationResult
from rmsprop_lightning.summary import nonfinite, objective, write_summary

Scalars = dict[int, dict[str, float]]  # step -> {tag: value}


def lr_tags(optimizer: torch.optim.Optimizer) -> list[str]:
    """The learning-rate keys ``LearningRateMonitor`` gives ``optimizer``'s groups."""
    name = f"lr-{type(optimizer).__name__}"
    groups = optimizer.param_groups
    if len(groups) == 1:
        return [f"{name}/{groups[0]['name']}" if groups[0].get("name") else name]
    return [f"{name}/{group.get('name', f'pg{index + 1}')}" for index, group in enumerate(groups)]


class PopulationRecord:
    """The population's recorded values on the host, read once for all members."""

    def __init__(self, result: PopulationResult) -> None:
        module = result.module
        self.result = result
        self.id = uuid.uuid4().hex[:12]  # tells the report which jobs shared this fit
        self.losses = torch.stack(module.step_losses).T.tolist() if module.step_losses else []
        self.frozen_at = module.optimizer.frozen_at.tolist()
        self.norm_names = module.norms.names if module.norms else []
        self.norm_applies = module.norms.applies.tolist() if module.norms else []
        self.norms = [(step, values.tolist()) for step, values in module.norm_records]
        self.validations = [
            (s, {tag: v.tolist() for tag, v in scores.items()}) for s, scores in module.validations
        ]
        self.tests = {tag: value.tolist() for tag, value in module.tests.items()}
        self.best_step = module.best_step.tolist() if module.best_step is not None else None
        checkpoint = result.checkpoint or {}
        self.global_step = checkpoint.get("global_step", len(self.losses[0]) if self.losses else 0)

    def scalars(self, index: int, member: Member) -> Scalars:
        """Every value the member's solo run would log, by step."""
        frozen = self.frozen_at[index]
        end = self.global_step if frozen < 0 else frozen  # a diverged member's last step is where it diverged
        scalars: Scalars = collections.defaultdict(dict)
        for step, loss in enumerate(self.losses[index][:end]):  # a diverged run logs no loss at its end
            scalars[step]["train/loss"] = loss
        tags = lr_tags(member.optimizer)
        for step, lrs in self.result.module.lr_records:
            if step <= end:  # logged as its step began: also that of a diverged member's last step
                scalars[step].update(zip(tags, lrs[index], strict=True))
        applies = self.norm_applies[index] if self.norm_applies else []
        for step, rows in self.norms:
            if step < end:
                row = zip(self.norm_names, rows[index], applies, strict=True)
                scalars[step].update({name: value for name, value, used in row if used})
        for step, scores in self.validations:
            if step <= end:
                scalars[step].update({tag: values[index] for tag, values in scores.items()})
        if self.tests and frozen < 0:
            scalars[end].update({tag: values[index] for tag, values in self.tests.items()})
            scalars[end]["epoch"] = float(self.result.test_epoch)
        return scalars


def summary_fields(record: PopulationRecord, index: int, scalars: Scalars) -> dict[str, Any]:
    """The ``metrics.json`` fields a solo run's ``FitStats`` gives (steps, final and best values) and the
    population the member trained in, whose ``fit_seconds`` all its members share."""
    final: dict[str, float] = {}
    for step in sorted(scalars):
        for tag, value in scalars[step].items():
            if tag.startswith(("val/", "test/")):
                final[tag] = value
            elif tag.startswith("lr-"):
                final[tag] = torch.tensor(value, dtype=torch.float32).item()  # as the trainer keeps it
    best, best_step = best_values(scalars)
    return {
        "fit_seconds": record.result.fit_seconds,
        # a diverged solo run counts the step it stopped at, as Lightning had started it
        "steps": record.global_step if record.frozen_at[index] < 0 else record.frozen_at[index] + 1,
        "final": final,
        "best": best,
        "best_step": best_step,
        "population": {"id": record.id, "members": len(record.frozen_at), "member": index},
    }


def write_tensorboard(
    logger: TensorBoardRunLogger, scalars: Scalars, params: dict[str, Any], layout: bool, status: str | None
) -> None:
    """The member's event file, as :class:`TensorBoardRunLogger` writes a solo run's, in one pass: with the
    optimizer-state charts' ``layout``, and the best values and HPARAMS that a fit that ended adds (with
    Lightning's ``status``: ``success``, or ``failed`` when it diverged; ``None``: interrupted)."""
    events = EventFile(logger.log_dir)
    for step, metrics in sorted(scalars.items()):
        logger.keep_best(metrics)
        events.summary(scalars_summary(metrics, logger.tag_prefix), step)
    last = max(scalars, default=0)
    optim = [tag for metrics in scalars.values() for tag in metrics if tag.startswith("optim/")]
    if optim and layout:
        events.summary(custom_scalars(custom_scalars_layout(dict.fromkeys(optim))), last)
    for summary in logger.closing_summaries(params, status) if status else ():
        events.summary(summary, last)
    events.close()


def write_loggers(cfg: DictConfig, member: Member, scalars: Scalars, status: str | None) -> None:
    """Hands the member's scalars and hyper-parameters to the loggers its config names; ``status`` as
    :func:`write_tensorboard`'s."""
    monitor = (cfg.get("callbacks") or {}).get("optimizer_state_monitor") or {}
    layout = bool(monitor.get("tensorboard_layout", True))
    for logger in instantiate_entries(cfg, "logger"):
        logger.log_hyperparams(member.module.hparams)
        if isinstance(logger, TensorBoardRunLogger):  # its writer stays closed: the file is written here
            write_tensorboard(logger, scalars, job_hparams(cfg), layout, status)
            save_hparams_to_yaml(Path(logger.log_dir) / TensorBoardLogger.NAME_HPARAMS_FILE, logger.hparams)
            continue
        for step in sorted(scalars):
            logger.log_metrics(scalars[step], step)
        logger.finalize(status or "success")  # which saves (Lightning's CSV and TensorBoard loggers)


def divergence(record: PopulationRecord, index: int, member: Member, last: Path | None) -> DivergedError:
    """The error a solo run's :class:`DivergenceGuard` raises at the member's step; ``last``: its
    ``last.ckpt`` from before, if any."""
    frozen = record.frozen_at[index]
    loss = record.losses[index][frozen] if frozen < len(record.losses[index]) else float("nan")
    dtype = record.result.module.dtype  # the population's precision; the member's optimizer holds float32
    return DivergedError(
        diverged_message(frozen, f"{loss:.6g}", math.isfinite(loss), member.optimizer, last, dtype)
    )


def write_member(
    cfg: DictConfig, member: Member, record: PopulationRecord, index: int, fields: dict[str, Any]
) -> float | None:
    """Writes the member's outputs into its job folder; returns its optimized metric (``None`` when
    interrupted), or raises the :class:`DivergedError` of a member that diverged, as its solo run would."""
    scalars = record.scalars(index, member)
    fields.update(summary_fields(record, index, scalars))
    frozen = record.frozen_at[index]
    interrupted = record.result.interrupted is not None and frozen < 0
    if interrupted:
        message = f"{record.result.interrupted}; resume with: {resume_command(cfg.paths.output_dir)}"
        write_summary(cfg.paths.output_dir, status="interrupted", error=message)
    ended_nonfinite = nonfinite(fields["final"].get("val/loss"))  # a failed run, as its solo run's
    status = None if interrupted else "failed" if frozen >= 0 or ended_nonfinite else "success"
    write_loggers(cfg, member, scalars, status)  # a diverged run has its HPARAMS row
    last = write_checkpoints(cfg, member, record, index, scalars)
    if frozen >= 0:
        error = divergence(record, index, member, last)
        write_summary(cfg.paths.output_dir, status="diverged", error=str(error), diverged_at_step=frozen)
        raise error
    return None if interrupted else objective(fields, cfg.get("optimized_metric"))
