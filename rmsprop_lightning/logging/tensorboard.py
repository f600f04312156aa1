"""TensorBoard for the template's runs: one event file per run and HPARAMS with real final metrics.

Lightning's ``TensorBoardLogger`` closes its writer at the end of ``fit``; ``test`` and
anything logged afterwards then open a second event file. :class:`TensorBoardRunLogger`
keeps one writer for the whole run and, in :meth:`~TensorBoardRunLogger.write_hparams`,
records the run's hyper-parameters with the metrics the HPARAMS tab should compare
(the best ``val/loss``, ``test/loss``, ``test/rmse``) — the same metric names in every
run, since TensorBoard takes the column list of one run for the whole folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from lightning.fabric.utilities.logger import _add_prefix
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from rmsprop_lightning import event_crc
from rmsprop_lightning.logging.step_metrics import StepRows
from rmsprop_lightning.scalar_events import ScalarSummaryTemplate

HParamValue = bool | int | float | str
MODES = ("last", "min", "max")
# summary templates kept for reuse, one per set of tags logged together
MAX_TEMPLATES = 32
# scalar events held by the logger before they are written together
MAX_PENDING = 100
DEFAULT_HPARAMS_METRICS = {"val/loss": "min", "test/loss": "last", "test/rmse": "last"}
# config entries besides the optimizer and scheduler shown on the HPARAMS tab
RUN_HPARAM_KEYS = ("seed", "data.batch_size", "model.hidden", "trainer.max_steps")


def flatten_hparams(config: Any, prefix: str) -> dict[str, HParamValue]:
    """``{"optimizer/lr": 0.01, "optimizer/class": "torch.optim.RMSprop", ...}`` from a (nested) config entry.

    ``_target_`` becomes ``class``, ``_partial_`` is dropped, ``None`` and lists become
    strings (TensorBoard's HPARAMS tab takes booleans, numbers and strings).
    """
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping):
        return {prefix: _hparam_value(config)}
    flat: dict[str, HParamValue] = {}
    for key, value in config.items():
        if key == "_partial_":
            continue
        name = "class" if key == "_target_" else str(key)
        flat.update(flatten_hparams(value, f"{prefix}/{name}"))
    return flat


def _hparam_value(value: Any) -> HParamValue:
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)


def run_hparams(cfg: DictConfig) -> dict[str, HParamValue]:
    """A template run's hyper-parameters: optimizer and scheduler flattened, seed, batch, model, steps."""
    params = flatten_hparams(cfg.optimizer, "optimizer")
    scheduler = OmegaConf.select(cfg, "scheduler.scheduler")
    params.update(
        flatten_hparams(scheduler, "scheduler") if scheduler is not None else {"scheduler/class": "none"}
    )
    for key in RUN_HPARAM_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            params.update(flatten_hparams(value, key.replace(".", "/")))
    return params


def hparams_summaries(params: Mapping[str, HParamValue], metric_tags: Iterable[str]) -> list[Summary]:
    """The experiment, session-start and session-end summaries of the HPARAMS plugin for one run."""
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
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
    )
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [
        _plugin_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        _plugin_summary(
            metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)
        ),
        _plugin_summary(
            metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)
        ),
    ]


def _plugin_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` improves on ``best`` under ``mode`` (``min`` or ``max``); NaN never does."""
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


class TensorBoardRunLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger with one event file per run and HPARAMS that carry real metrics.

    ``hparams_metrics`` maps a logged tag to ``last`` (the HPARAMS column shows its last
    value) or ``min``/``max`` (the column ``<tag>_best`` shows its best value over the
    run). The writer stays open across ``fit`` and ``test``; :meth:`write_hparams`
    finishes the run and closes it. Each ``log_metrics`` call is one event; scalar events
    are encoded straight to bytes (:mod:`rmsprop_lightning.scalar_events`), written in
    batches (see :meth:`log_metrics` and :meth:`log_metrics_rows`) and checksummed with
    :mod:`rmsprop_lightning.event_crc`, bit-identical to TensorBoard's own writer and many
    times faster. Other keyword arguments are ``TensorBoardLogger``'s.
    """

    def __init__(self, *args: Any, hparams_metrics: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        event_crc.install()
        metrics = dict(DEFAULT_HPARAMS_METRICS if hparams_metrics is None else hparams_metrics)
        for tag, mode in metrics.items():
            if mode not in MODES:
                raise ValueError(f"hparams_metrics[{tag!r}]={mode!r} is unknown; allowed: {', '.join(MODES)}")
        self.hparams_metrics = metrics
        self.best: dict[str, float] = {}
        self._last_step = 0
        self._pending: list[bytes] = []  # framed records of events not yet in the event file
        self._unframed: list[bytes] = []  # single events held after those, not yet framed
        # per tag set: its summary template and (index, tag, mode) of the tags whose best is kept
        self._templates: dict[tuple[str, ...], tuple[ScalarSummaryTemplate, list[tuple[int, str, str]]]] = {}

    @property
    def metric_tags(self) -> list[str]:
        """The HPARAMS columns: ``<tag>`` for ``last``, ``<tag>_best`` for ``min``/``max``."""
        return [tag if mode == "last" else f"{tag}_best" for tag, mode in self.hparams_metrics.items()]

    @property
    def experiment(self) -> Any:
        """TensorBoard's ``SummaryWriter``; the events this logger still holds are written first.

        So whatever is written through it directly (layouts, HPARAMS, images) keeps its
        place after the scalars logged before it.
        """
        writer = super().experiment
        self._write_pending()
        return writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Logs ``metrics`` as one event (Lightning writes one per value).

        The event is held with others and written with them (see :meth:`log_metrics_rows`)
        once :data:`MAX_PENDING` are held, and before anything else reaches the event file:
        at every ``save`` (Lightning calls it after its own logging and at checkpoints),
        ``finalize`` and ``close``, and before any use of :attr:`experiment`.
        """
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if any(isinstance(value, Mapping) for value in metrics.values()):
            super().log_metrics(metrics, step)
            return
        self._hold(tuple(metrics), [step], [[float(value) for value in metrics.values()]], time.time())
        if len(self._unframed) >= MAX_PENDING:
            self._write_pending()

    @rank_zero_only
    def log_metrics_rows(self, groups: Sequence[StepRows]) -> None:
        """Writes every step of ``groups`` as one event, all of them in one write to the event file.

        TensorBoard's writer hands each event to a background thread through a short queue
        and reopens the file for each record: ~100 µs an event. Here the events of a group
        are encoded together (:mod:`rmsprop_lightning.scalar_events`), framed together and
        appended after the events still queued, so the file keeps its order; the events
        carry the time of this call.
        """
        wall_time = time.time()
        for group in groups:
            tags = tuple(_add_prefix(dict.fromkeys(group.names), self._prefix, self.LOGGER_JOIN_CHAR))
            self._hold(tags, group.steps, group.values, wall_time)
        self._write_pending()

    def _hold(
        self,
        tags: tuple[str, ...],
        steps: Sequence[int | None],
        values: np.ndarray | list[list[float]],
        wall_time: float,
    ) -> None:
        """Encodes the events of ``steps`` (a row of ``values`` each) and keeps them until the next write.

        Tracks the best values and the last step. A TensorBoard whose ``event_writer`` lacks
        the file object appended to here gets the events through its own queue at once.
        """
        if not steps:
            return
        cached = self._templates.get(tags)
        if cached is None:
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            best = [
                (tag, mode) for tag, mode in self.hparams_metrics.items() if mode != "last" and tag in tags
            ]
            cached = self._templates[tags] = (
                ScalarSummaryTemplate(tags),
                [(tags.index(tag), tag, mode) for tag, mode in best],
            )
        template, tracked = cached
        for index, tag, mode in tracked:
            for value in (float(row[index]) for row in values):
                if is_better(value, self.best.get(tag), mode):
                    self.best[tag] = value
        numbered = [step for step in steps if step is not None]
        if numbered:
            self._last_step = max(self._last_step, *numbered)
        event_writer = self._event_writer()
        direct = getattr(event_writer, "_general_file_writer", None) is not None
        if len(steps) == 1:  # one event: plain bytes are quicker than arrays; framed with the next write
            payload = template.payload(steps[0] or 0, values[0], wall_time)
            if direct:
                self._unframed.append(payload)
            else:
                event_writer.add_event(Event.FromString(payload))
            return
        self._frame_held()
        for payloads, variable in template.payloads([step or 0 for step in steps], values, wall_time):
            if direct:
                self._pending.append(event_crc.frame_rows(payloads, variable))
            else:
                for payload in payloads:
                    event_writer.add_event(Event.FromString(payload.tobytes()))

    def _event_writer(self) -> Any:
        """TensorBoard's ``EventFileWriter`` of this run (created on first use), reached without a write."""
        return super().experiment._get_file_writer().event_writer

    def _frame_held(self) -> None:
        """Frames the events held one by one, together, so that they keep their place before what follows."""
        if self._unframed:
            self._pending.append(event_crc.frame_payloads(self._unframed))
            self._unframed = []

    def _write_pending(self) -> None:
        """Appends the held events to the event file in one write, after the events TensorBoard queued."""
        self._frame_held()
        if not self._pending or self._experiment is None:
            return
        records, self._pending = self._pending, []
        event_writer = self._experiment._get_file_writer().event_writer
        event_writer.flush()
        event_writer._general_file_writer.write(b"".join(records))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """After a successful ``fit`` or ``test``: flush and keep writing to the same file; else close."""
        if status != "success":
            super().finalize(status)
            return
        self.save()

    @rank_zero_only
    def write_hparams(self, params: Mapping[str, HParamValue]) -> None:
        """Writes the best values, then the HPARAMS summaries of ``params``; closes the event file."""
        best = {f"{tag}_best": value for tag, value in self.best.items()}
        if best:
            self.log_metrics(best, self._last_step)
        writer = self.experiment._get_file_writer()
        for summary in hparams_summaries(params, self.metric_tags):
            writer.add_summary(summary, self._last_step)
        self.close()

    @rank_zero_only
    def close(self) -> None:
        """Flushes and closes the event file; logging after this starts a new one."""
        self._write_pending()
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None


def finish_tensorboard(loggers: Iterable[Logger], params: Mapping[str, HParamValue]) -> None:
    """Writes the HPARAMS summary of every :class:`TensorBoardRunLogger` among ``loggers`` and closes it."""
    for logger in loggers:
        if isinstance(logger, TensorBoardRunLogger):
            logger.write_hparams(params)
