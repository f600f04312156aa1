"""TensorBoard for the template's runs: one event file per run and HPARAMS with real final metrics."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from rmsprop_lightning.logging.event_file import scalars_summary

HParamValue = bool | int | float | str
MODES = ("last", "min", "max")
DEFAULT_HPARAMS_METRICS = {"val/loss": "min", "test/loss": "last", "test/rmse": "last"}
# config entries besides the optimizer and scheduler shown on the HPARAMS tab: none a resume may change,
# since TensorBoard shows a run's first HPARAMS record
RUN_HPARAM_KEYS = (
    "seed",
    "data.batch_size",
    "model.hidden",
    "module.loss",
    "module.no_weight_decay_on_bias",
    "module.lr_multipliers",
)


def flatten_hparams(config: Any, prefix: str) -> dict[str, HParamValue]:
    """``{"optimizer/lr": 0.01, "optimizer/class": "torch.optim.RMSprop", ...}`` from a (nested) config entry,
    with ``None`` and lists as strings: TensorBoard's HPARAMS tab takes booleans, numbers and strings."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if config is None:
        return {prefix: "null"}
    if not isinstance(config, Mapping):
        return {prefix: config if isinstance(config, bool | int | float | str) else str(config)}
    flat: dict[str, HParamValue] = {}
    for key, value in config.items():
        if key != "_partial_":
            name = "class" if key == "_target_" else str(key)
            flat.update(flatten_hparams(value, f"{prefix}/{name}"))
    return flat


def run_hparams(
    cfg: DictConfig, choices: Mapping[str, str] | None = None, keys: Iterable[str] = ()
) -> dict[str, HParamValue]:
    """A template run's hyper-parameters: its config groups' ``choices`` (group: option), optimizer and
    scheduler (with when it steps) flattened, seed, batch size, widths, the module's loss and parameter
    groups, and the other config ``keys`` flattened, as text: TensorBoard fails to sort or filter a column
    whose runs hold numbers and text."""
    params: dict[str, HParamValue] = dict(choices or {})
    params.update(flatten_hparams(cfg.optimizer, "optimizer"))
    scheduler = OmegaConf.select(cfg, "scheduler.scheduler")
    if scheduler is None:
        params["scheduler/class"] = "none"
    else:
        params.update(flatten_hparams(scheduler, "scheduler"))
        params.update({f"scheduler/{key}": cfg.scheduler.get(key) for key in ("interval", "frequency")})
    for key in RUN_HPARAM_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            params.update(flatten_hparams(value, key.replace(".", "/")))
    if "model/hidden" in params:  # a width or a list of them: as text, one type in every run
        params["model/hidden"] = str(params["model/hidden"])
    for key in keys:  # as text: one type for a key that is a number in one run and null or a list in another
        for name, value in flatten_hparams(OmegaConf.select(cfg, key), key.replace(".", "/")).items():
            params.setdefault(name, json.dumps(value) if isinstance(value, bool) else str(value))
    return params


def hparams_summaries(
    params: Mapping[str, HParamValue], metric_tags: Iterable[str], status: str = "success"
) -> list[Summary]:
    """The HPARAMS plugin's experiment, session-start and session-end summaries for one run, which ended
    with Lightning's ``status`` (``success``; ``failed``: the run diverged).

    Built from TensorBoard's protos rather than torch's ``hparams`` (which types booleans as
    numbers) or ``summary_v2.hparams_pb`` (which names the session by a hash, not the run).
    """
    infos = []
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in params.items():
        if isinstance(value, bool):
            kind = api_pb2.DATA_TYPE_BOOL
            start.hparams[name].bool_value = value
        elif isinstance(value, int | float):
            kind = api_pb2.DATA_TYPE_FLOAT64
            start.hparams[name].number_value = value
        else:
            kind = api_pb2.DATA_TYPE_STRING
            start.hparams[name].string_value = str(value)
        infos.append(api_pb2.HParamInfo(name=name, type=kind))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags]
    ended = api_pb2.STATUS_SUCCESS if status == "success" else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=ended, end_time_secs=time.time())
    plugin_data = {
        metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(
            experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
        ),
        metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_start_info=start),
        metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_end_info=end),
    }
    return [
        Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
        for tag, data in plugin_data.items()
    ]


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` improves on ``best`` under ``mode`` (``min`` or ``max``); NaN and inf never do, as
    the best checkpoint keeps none of them."""
    return math.isfinite(value) and (best is None or (value < best if mode == "min" else value > best))


class TensorBoardRunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger with one event file per run and HPARAMS that carry real metrics.

    ``hparams_metrics`` maps a logged tag to ``last`` (the HPARAMS column shows its last
    value) or ``min``/``max`` (the column ``<tag>_best`` shows its best value over the run).
    ``finalize`` (end of ``fit`` and ``test``) only flushes, where Lightning's closes the file and ``test``
    opens a second one; :meth:`write_hparams` ends the run and closes the file; :meth:`continue_run`
    purges the steps a resumed run redoes and takes up its earlier part's best values. The scalars of
    one ``log_metrics`` call go into one event (Lightning writes one per value). Other arguments are
    ``TensorBoardLogger``'s.
    """

    def __init__(
        self, *args: Any, hparams_metrics: Mapping[str, str] | None = None, prefix: str = "", **kwargs: Any
    ) -> None:
        # TensorBoard shows a run's first HPARAMS record, which must be ours; a queue of 1000 (torch's: 10)
        # takes a flush of buffered steps without waiting on the writer thread
        super().__init__(*args, prefix=prefix, **{"default_hp_metric": False, "max_queue": 1000, **kwargs})
        self.tag_prefix = f"{prefix}{self.LOGGER_JOIN_CHAR}" if prefix else ""
        metrics = dict(DEFAULT_HPARAMS_METRICS if hparams_metrics is None else hparams_metrics)
        for tag, mode in metrics.items():
            if mode not in MODES:
                raise ValueError(f"hparams_metrics[{tag!r}]={mode!r} is unknown; allowed: {', '.join(MODES)}")
        self.hparams_metrics = metrics
        self.best: dict[str, float] = {}
        self._tracked = [(tag, mode) for tag, mode in metrics.items() if mode != "last"]
        self._last_step = 0

    def continue_run(self, resumed_step: int | None) -> None:
        """Continues this folder's run from its checkpoint of ``resumed_step`` (``None``: step 0): purges the
        later steps and takes up the best values of the earlier ones."""
        from rmsprop_lightning.logging.events import read_scalars

        # the validation at resumed_step came before the checkpoint, and its values are written back after the
        # purge; the batch of that step (train/loss, lr-*, optim/*) came after it, and is logged again
        kept = -1 if resumed_step is None else resumed_step
        earlier = read_scalars(self.log_dir)
        for tag, _ in self._tracked:
            for step, value in earlier.get(self.tag_prefix + tag, []):
                if step <= kept:
                    self.keep_best({tag: value})
        closing = {
            f"{self.tag_prefix}{tag}_best" for tag, _ in self._tracked
        }  # the run's end writes them anew
        validation = {
            tag: value
            for tag, points in earlier.items()
            if tag.startswith(f"{self.tag_prefix}val/") and tag not in closing
            for step, value in points
            if step == kept
        }
        self._purge(max(kept, 0), validation)

    @rank_zero_only
    def _purge(self, step: int, kept: Mapping[str, float]) -> None:
        """Writes a SessionLog START at ``step``, as ``SummaryWriter(purge_step=step)`` does, then the
        ``kept`` scalars at ``step``."""
        # twice: the server's Python loader takes a run's first START for its first session and purges at
        # later ones only (RustBoard drops a series' points from a step that is logged again)
        start = Event(session_log=SessionLog(status=SessionLog.START))
        for _ in range(2):
            self.experiment.file_writer.add_event(start, step)
        if kept:
            self.experiment.file_writer.add_summary(scalars_summary(kept), step)
        self.experiment.flush()

    def keep_best(self, metrics: Mapping[str, Any]) -> None:
        """Keeps the best value of each ``min``/``max`` tag among ``metrics``, which the run closes with."""
        for tag, mode in self._tracked:
            if tag in metrics and not isinstance(metrics[tag], Mapping):
                value = float(metrics[tag])
                if is_better(value, self.best.get(tag), mode):
                    self.best[tag] = value

    def closing_summaries(self, params: Mapping[str, HParamValue], status: str = "success") -> list[Summary]:
        """The summaries that close a run: its best values as ``<tag>_best`` scalars, then its HPARAMS."""
        best = {f"{tag}_best": value for tag, value in self.best.items()}
        closing = [scalars_summary(best, self.tag_prefix)] if best else []
        return closing + hparams_summaries(params, self.metric_tags, status)

    @property
    def metric_tags(self) -> list[str]:
        """The HPARAMS columns, as written: ``<tag>`` for ``last``, ``<tag>_best`` for ``min``/``max``."""
        metrics = self.hparams_metrics.items()
        return [self.tag_prefix + (tag if mode == "last" else f"{tag}_best") for tag, mode in metrics]

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Logs ``metrics`` like Lightning does, keeping the best value of each ``min``/``max`` tag."""
        self.keep_best(metrics)
        if step is not None:
            self._last_step = max(self._last_step, step)
        if any(isinstance(value, Mapping) for value in metrics.values()):
            super().log_metrics(metrics, step)
            return
        self.experiment.file_writer.add_summary(scalars_summary(metrics, self.tag_prefix), step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End of ``fit`` or ``test``: flushes and saves ``hparams.yaml`` but, unlike Lightning's, stays open
        (``test`` would open a second file)."""
        self.save()

    @rank_zero_only
    def write_hparams(self, params: Mapping[str, HParamValue], status: str = "success") -> None:
        """Logs the best values, then the HPARAMS summaries of ``params``, and closes the event file."""
        for summary in self.closing_summaries(params, status):
            self.experiment.file_writer.add_summary(summary, self._last_step)
        self.close(status)

    @rank_zero_only
    def close(self, status: str = "success") -> None:
        """Flushes and closes the event file; logging after this starts a new one."""
        super().finalize(status)


def continue_tensorboard(loggers: Iterable[Logger], resumed_step: int | None) -> None:
    """Has every :class:`TensorBoardRunLogger` among ``loggers`` continue its run; see ``continue_run``."""
    for logger in loggers:
        if isinstance(logger, TensorBoardRunLogger):
            logger.continue_run(resumed_step)


def finish_tensorboard(
    loggers: Iterable[Logger], params: Mapping[str, HParamValue], status: str = "success"
) -> None:
    """Writes the HPARAMS summary of every :class:`TensorBoardRunLogger` among ``loggers`` and closes it."""
    for logger in loggers:
        if isinstance(logger, TensorBoardRunLogger):
            logger.write_hparams(params, status)
