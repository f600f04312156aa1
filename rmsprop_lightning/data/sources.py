"""Tabular regression data sources: each returns features ``X`` (n, d) and targets ``y`` (n, k).

A CSV or NumPy file is read in float64, which keeps columns such as Unix timestamps; the data module
standardises in the table's precision and serves float32.
"""

from __future__ import annotations

import csv
import math
import zipfile
import zlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Table:
    """Features and targets of one data set, with the names of their columns."""

    features: torch.Tensor
    targets: torch.Tensor
    feature_names: tuple[str, ...]
    target_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.targets.ndim != 2:
            raise ValueError("features and targets must be 2-D (samples × columns)")
        if not (self.features.is_floating_point() and self.targets.is_floating_point()):
            raise ValueError("features and targets must be floating-point tensors (e.g. tensor.double())")
        if len(self.features) != len(self.targets):
            raise ValueError(f"features have {len(self.features)} rows but targets have {len(self.targets)}")
        for kind, values, names in (
            ("features", self.features, self.feature_names),
            ("targets", self.targets, self.target_names),
        ):
            bad = ~torch.isfinite(values)
            if bad.any():
                row, col = (int(i) for i in bad.nonzero()[0])
                value = (
                    "a NaN" if values[row, col].isnan() else "an inf (or a value beyond float64's ±1.8e308)"
                )
                raise ValueError(
                    f"{kind} hold {value}, first in data row {row + 1}, column {names[col]!r}; allowed: "
                    "finite numbers (fill or drop the rows missing one)"
                )

    @classmethod
    def numbered(cls, features: torch.Tensor, targets: torch.Tensor) -> Table:
        """A table whose columns are named ``x0, x1, …`` and ``y0, y1, …``."""

        def names(prefix: str, columns: torch.Tensor) -> tuple[str, ...]:  # none where not 2-D: refused then
            return tuple(f"{prefix}{i}" for i in range(columns.shape[1] if columns.ndim == 2 else 0))

        return cls(features, targets, names("x", features), names("y", targets))


def synthetic(
    num_samples: int = 4096,
    num_features: int = 10,
    num_targets: int = 1,
    teacher_hidden: int = 16,
    noise_std: float = 0.1,
    seed: int = 1234,
) -> Table:
    """Inputs ``randn(n, d)``; targets from a fixed random tanh teacher network, plus half of input
    ``k mod d`` for target ``k``, plus Gaussian noise (by default the data ``train.py`` trains on, whose
    checkpoints then test and predict on their own rows)."""
    if num_samples < 1 or num_features < 1 or num_targets < 1 or teacher_hidden < 1:
        raise ValueError("data.source.num_samples, num_features, num_targets and teacher_hidden must be ≥ 1")
    if noise_std < 0:
        raise ValueError(f"data.source.noise_std must be ≥ 0, got {noise_std}")
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, num_features, generator=generator)
    w1 = torch.randn(num_features, teacher_hidden, generator=generator) / math.sqrt(num_features)
    w2 = torch.randn(teacher_hidden, num_targets, generator=generator) / math.sqrt(teacher_hidden)
    targets = torch.tanh(inputs @ w1) @ w2 + inputs[:, torch.arange(num_targets) % num_features] * 0.5
    targets = targets + noise_std * torch.randn(num_samples, num_targets, generator=generator)
    return Table.numbered(inputs, targets)


def column_names(names: str | int | float | Sequence[str | int | float]) -> list[str]:
    """One column name or a list of them, as text: Hydra reads a column named 2025 as a number."""
    return [str(names)] if isinstance(names, str | int | float) else [str(name) for name in names]


def from_csv(
    path: str | Path,
    target: str | list[str] = "target",
    features: list[str] | None = None,
    delimiter: str = ",",
) -> Table:
    """Reads a CSV with a header row; ``features`` default to every column that is not a target.

    ``delimiter`` is one character; ``\\t`` (a backslash and a t, as a command line gives it) is a tab."""
    path = existing_file(path)
    delimiter = "\t" if delimiter == "\\t" else delimiter
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(
            f"data.source.delimiter={delimiter!r} is not one character; allowed: one character, e.g. ';', "
            "or '\\t' for a tab"
        )
    targets = [] if target is None else column_names(target)
    if not targets:
        raise ValueError("data.source.target is empty; allowed: a column name or a list of them")
    if features is not None and not column_names(features):
        raise ValueError("data.source.features is empty; allowed: a list of column names, or null for all")
    with path.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark dropped
        lines = csv.reader(handle, delimiter=delimiter)
        rows = ((number, row) for number, row in enumerate(lines, start=1) if not blank(row))
        try:
            header = [name.strip() for name in next(rows, (0, []))[1]]
            if not header:
                raise ValueError(f"{path} is empty (a header row and data rows are required)")
            feature_names = (
                [c for c in header if c not in targets] if features is None else column_names(features)
            )
            check_columns(path, header, targets, feature_names)
            values = read_rows(path, rows, header, [header.index(name) for name in feature_names + targets])
        except csv.Error as error:  # e.g. a quote left open, which makes the rest of the file one field
            raise ValueError(f"{path}, line {lines.line_num}: {error}") from None
        except UnicodeDecodeError as error:  # Latin-1, UTF-16, or not text
            raise ValueError(
                f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); "
                "allowed: a CSV file saved as UTF-8"
            ) from None
    if not len(values):
        raise ValueError(
            f"{path} has a header but no data rows; allowed: a header row, then a row per sample"
        )
    columns = torch.from_numpy(values).split([len(feature_names), len(targets)], dim=1)
    return Table(*columns, tuple(feature_names), tuple(targets))


def blank(row: list[str]) -> bool:
    """Whether a CSV row is an empty line (or one of spaces only); ``,,`` is a row of empty cells."""
    return not row or (len(row) == 1 and not row[0].strip())


def existing_file(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, refused unless it is a file."""
    if path is None or not str(path).strip():
        raise ValueError(f"data.source.path={path!r} names no file; allowed: the path of a data file")
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; allowed: a data file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def check_columns(path: Path, header: list[str], targets: list[str], feature_names: list[str]) -> None:
    """Every chosen column has a name, is in the header and is chosen once; features are left."""
    if "" in header and "" in targets + feature_names:
        raise ValueError(
            f"{path}: header column {header.index('') + 1} has no name; allowed: a name, or "
            "data.source.features listing the columns to use"
        )
    for name in dict.fromkeys(header + targets + feature_names):
        if (header + targets + feature_names).count(name) > 1 + (name in header):
            raise ValueError(
                f"{path}: column {name!r} is named twice (in the header, or as target and feature); "
                "allowed: distinct header names, each column chosen once"
            )
        if name not in header:
            key = "target" if name in targets else "features"
            # a header of one column holding another separator: a file that is not comma-separated
            other = [repr(sep)[1:-1] for sep in ";|\t" if len(header) == 1 and sep in header[0]]
            hint = f"; allowed: \"data.source.delimiter='{other[0]}'\"" if other else ""
            raise ValueError(
                f"data.source.{key}: column {name!r} not found in {path}; columns found: {', '.join(header)}"
                + hint
            )
    if not feature_names:
        raise ValueError(f"{path} has no feature columns besides the target(s) {targets}")


def read_rows(
    path: Path, rows: Iterable[tuple[int, list[str]]], header: list[str], used: list[int]
) -> np.ndarray:
    """The ``used`` cells of each numbered row, parsed as they are read, as a float64 (rows × used) array."""
    values = array("d")
    for number, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"{path} line {number}: {len(row)} cells, the header has {len(header)}; "
                "allowed: one cell per header column"
            )
        for index in used:
            try:
                values.append(float(row[index]))
            except ValueError:
                raise ValueError(
                    f"{path} line {number}, column {header[index]!r}: {row[index]!r} is not a number; "
                    "allowed: a number in each column used (data.source.features lists the feature columns)"
                ) from None
    return np.frombuffer(values, dtype=np.float64).reshape(-1, len(used))


def not_numpy(path: Path) -> ValueError:
    """The refusal of a file NumPy cannot read as numbers (its own reason suggests unpickling it)."""
    return ValueError(
        f"{path} is not a numeric NumPy file; allowed: an .npy array or .npz archive of numbers, no objects"
    )


def from_numpy(path: str | Path, features_key: str = "X", targets_key: str = "y") -> Table:
    """Reads ``X`` and ``y`` from an ``.npz`` archive, or an ``.npy`` array whose last column is ``y``;
    pickled objects are refused."""
    path = existing_file(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError):
        raise not_numpy(path) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if features_key == targets_key:
                raise ValueError(
                    f"data.source.targets_key={targets_key!r} is data.source.features_key too (y would be a "
                    f"copy of X); allowed: two different arrays of {path}: {', '.join(loaded.files)}"
                )
            if missing := [key for key in (features_key, targets_key) if key not in loaded.files]:
                raise ValueError(
                    f"{path} lacks array(s) {missing}; allowed: data.source.features_key and "
                    f"data.source.targets_key naming two of its arrays: {', '.join(loaded.files)}"
                )
            try:  # a compressed archive's arrays are read here
                arrays = {features_key: loaded[features_key], targets_key: loaded[targets_key]}
            except (ValueError, EOFError, zlib.error, zipfile.BadZipFile):
                raise not_numpy(path) from None
    else:
        if loaded.ndim != 2 or loaded.shape[1] < 2:
            raise ValueError(f"{path}: an .npy file must be 2-D with the target in the last column")
        arrays = {"X": loaded[:, :-1], "y": loaded[:, -1]}
    for key, values in arrays.items():
        if values.dtype.kind not in "iuf":
            raise ValueError(f"{path}: array {key!r} holds {values.dtype}; allowed: integers or reals")
        if values.ndim not in (1, 2) or values.size == 0:
            raise ValueError(
                f"{path}: array {key!r} has shape {values.shape}; "
                "allowed: one row per sample, (n,) or (n, columns)"
            )
    return Table.numbered(*(float64_rows(values) for values in arrays.values()))


def float64_rows(values: np.ndarray) -> torch.Tensor:
    """``values`` (1-D: one column) as a float64 tensor of one row per sample."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).reshape(len(values), -1))


def random_normal(num_samples: int = 2, num_features: int = 10, num_targets: int = 1) -> Table:
    """``randn(n, d)`` inputs and ``randn(n, k)`` targets from the global RNG (the seed snippet's batch)."""
    return Table.numbered(torch.randn(num_samples, num_features), torch.randn(num_samples, num_targets))


def diabetes() -> Table:
    """scikit-learn's diabetes data (442 patients × 10 raw features, disease progression after a year),
    read from the files shipped inside scikit-learn (extra ``datasets``): nothing is downloaded."""
    from rmsprop_lightning.app.extras import require

    bunch = require("sklearn.datasets", "datasets", "data=diabetes").load_diabetes(scaled=False)
    return Table(
        torch.as_tensor(bunch.data, dtype=torch.float32),
        torch.as_tensor(bunch.target, dtype=torch.float32).reshape(-1, 1),
        tuple(bunch.feature_names),
        ("progression",),
    )
