"""Reading scalars back from TensorBoard event files with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

Series = list[tuple[int, float]]


def read_scalars(log_dir: str | Path) -> dict[str, Series]:
    """``{tag: [(step, value), ...]}`` over every event file below ``log_dir``, steps ascending.

    Each folder holding event files is read as one TensorBoard run; a tag that appears
    in several runs below ``log_dir`` has their points merged.
    """
    scalars: dict[str, Series] = {}
    folders = sorted({path.parent for path in Path(log_dir).rglob("events.out.tfevents.*")})
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            points = scalars.setdefault(tag, [])
            points.extend((event.step, event.value) for event in accumulator.Scalars(tag))
    for points in scalars.values():
        points.sort(key=lambda point: point[0])
    return scalars
