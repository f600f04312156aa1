"""The Lightning data module: split, standardise and serve an in-memory regression table."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from rmsprop_lightning.data.loader import InMemoryBatchLoader
from rmsprop_lightning.data.sources import Table, synthetic

DIGEST_KEY = "rows_digest"  # in the state kept in checkpoints


class RegressionDataModule(pl.LightningDataModule):
    """Splits a :class:`Table`, or what the function ``source`` returns on first use, into train/val/test
    by fractions with a fixed seed, standardised with the training split's statistics."""

    def __init__(
        self,
        source: Table | Callable[[], Table] = synthetic,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        standardize_features: bool = True,
        standardize_targets: bool = False,
        drop_last: bool = False,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise ValueError(f"data.{name} must be a positive integer, got {size!r}")
        flags = ("standardize_features", "standardize_targets", "drop_last")
        for name, flag in zip(flags, (standardize_features, standardize_targets, drop_last), strict=True):
            if not isinstance(flag, bool):
                raise ValueError(f"data.{name} must be true or false, got {flag!r}")
        for name, seed in (("split_seed", split_seed), ("shuffle_seed", shuffle_seed)):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise ValueError(f"data.{name} must be an integer in [0, 2**63), got {seed!r}")
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if (
                isinstance(fraction, bool)
                or not isinstance(fraction, int | float)
                or not 0.0 <= fraction < 1.0
            ):
                raise ValueError(f"data.{name} must lie in [0, 1), got {fraction!r}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}"
            )
        if not isinstance(source, Table) and not callable(source):
            raise ValueError(
                f"data.source must be a Table or a function returning one (e.g. partial(from_csv, path, "
                f"target)), got {source!r}"
            )
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 1024)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.standardize_features = standardize_features
        self.standardize_targets = standardize_targets
        self.drop_last = drop_last
        self.shuffle_seed = shuffle_seed
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._digest = ""  # of the table's rows, once read
        self.scaling: dict[str, torch.Tensor] = {}  # the standardisation, once the data is split
        self._loaders: dict[str, InMemoryBatchLoader] = {}
        self._loaders_for: pl.Trainer | None = None  # the trainer whose device and ranks they serve

    @property
    def num_features(self) -> int:
        """Input width, for the model's ``in_features``."""
        return self.splits["train"][0].shape[1]

    @property
    def num_targets(self) -> int:
        """Output width, for the model's ``out_features``."""
        return self.splits["train"][1].shape[1]

    @property
    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"train"|"val"|"test": (features, targets)}``, loaded and split on first access."""
        if self._splits is None:
            table = self.source if isinstance(self.source, Table) else self.source()
            self._digest = rows_digest(table.features, table.targets)
            self._splits = split_and_standardize(
                table,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                seed=self.split_seed,
                standardize_features=self.standardize_features,
                standardize_targets=self.standardize_targets,
                full_batch=self.batch_size if self.drop_last else None,
                scaling=self.scaling,
            )
        return self._splits

    @property
    def digest(self) -> str:
        """A SHA-1 of the table's rows as read (see :func:`rows_digest`)."""
        self.splits  # noqa: B018  (reads the table)
        return self._digest

    def state_dict(self) -> dict[str, Any]:
        """The training split's column means and scales that standardised the data, and the :attr:`digest` of
        its rows, kept in checkpoints: new rows are ``(x - features_mean) / features_scale``, predictions in
        the data's units ``y * targets_scale + targets_mean``."""
        digest = self.digest  # reads and standardises the data
        return {**self.scaling, DIGEST_KEY: digest}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Warns when a checkpoint's data is not this data: its model learnt other data."""
        if changed := self.changes(state_dict):
            warnings.warn(
                f"the checkpoint's data differ from this data set ({', '.join(changed)}): "
                "this data set is not the one its model was trained on",
                stacklevel=2,
            )

    def changes(self, saved: Mapping[str, Any]) -> list[str]:
        """What of a checkpoint's :meth:`state_dict` this data set does not reproduce: its ``rows`` (by the
        digest, where the checkpoint has one), then the standardisation's entries (up to float32 rounding)."""
        saved, digest = dict(saved), self.digest  # reads and standardises the data
        changed = ["rows"] if saved.pop(DIGEST_KEY, digest) != digest else []
        current = {key: value.double() for key, value in self.scaling.items()}
        saved = {key: torch.as_tensor(value).double() for key, value in saved.items()}
        keys = [*saved, *(key for key in current if key not in saved)]  # a scaling one of them lacks too
        return changed + [
            key
            for key in keys
            if key not in current
            or key not in saved
            or saved[key].shape != current[key].shape
            or not current[key].allclose(saved[key], 1e-5)
        ]

    def setup(self, stage: str) -> None:
        """Builds the loaders for the trainer; another trainer gets new ones, from its first epoch."""
        trainer = self.trainer
        if trainer is not self._loaders_for:
            self._loaders, self._loaders_for = {}, trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        overfit = trainer is not None and trainer.overfit_batches > 0  # the same batches every epoch
        limit = trainer.limit_train_batches if trainer is not None else 1.0  # overfit_batches sets it too
        for split, (features, targets) in self.splits.items():
            if split in self._loaders or len(features) == 0:
                continue
            training = split == "train"
            self._loaders[split] = InMemoryBatchLoader(
                features.to(device),
                targets.to(device),
                self.batch_size if training else self.eval_batch_size,
                shuffle=training,
                reshuffle=not overfit,
                batch_limit=limit if training else 1.0,
                drop_last=self.drop_last and training,
                seed=self.shuffle_seed,
                rank=rank,
                world_size=world,
            )

    def train_batches(self, world_size: int = 1) -> int:
        """Training batches per epoch on each of ``world_size`` ranks, by the loader's own count."""
        features, targets = self.splits["train"]
        return len(
            InMemoryBatchLoader(
                features, targets, self.batch_size, drop_last=self.drop_last, world_size=world_size
            )
        )

    def train_dataloader(self) -> InMemoryBatchLoader:
        return self._loaders["train"]

    def val_dataloader(self) -> InMemoryBatchLoader | list:
        return self._loaders.get("val", [])

    def test_dataloader(self) -> InMemoryBatchLoader | list:
        return self._loaders.get("test", [])

    def predict_dataloader(self) -> InMemoryBatchLoader | list:
        """The test split, whose features ``trainer.predict`` gives the model."""
        return self.test_dataloader()


def rows_digest(*tensors: torch.Tensor) -> str:
    """A SHA-1 of tensors' values, shapes and dtypes: any row changed, added, removed or moved changes it."""
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def split_and_standardize(
    table: Table,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    standardize_features: bool,
    standardize_targets: bool,
    full_batch: int | None,
    scaling: dict[str, torch.Tensor],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Splits rows by a seeded permutation and standardises with training-split statistics, which go
    into ``scaling`` (``features_mean``, ``features_scale``, ``targets_…``); with ``drop_last``, the
    training split must fill one batch of ``full_batch`` rows."""
    count = len(table.features)
    num_val, num_test = round(count * val_fraction), round(count * test_fraction)
    num_train = count - num_val - num_test
    empty = (val_fraction > 0 and num_val == 0) or (test_fraction > 0 and num_test == 0)
    if num_train < 2 or empty:
        raise ValueError(
            f"{count} rows are too few for the split (train {num_train}, val {num_val}, test {num_test}); "
            "use more data, or data.val_fraction/test_fraction that give each split a row (0 for none)"
        )
    if full_batch is not None and num_train < full_batch:
        raise ValueError(
            f"data.batch_size={full_batch} is more than the {num_train} training rows with "
            f"data.drop_last=true (no batch would train); allowed: data.batch_size up to {num_train}, or "
            "data.drop_last=false"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    parts = dict(zip(("train", "val", "test"), order.split([num_train, num_val, num_test]), strict=True))
    columns = {
        "features": (table.features, table.feature_names),
        "targets": (table.targets, table.target_names),
    }
    standardized = {"features": standardize_features, "targets": standardize_targets}
    served = {}  # standardised in the table's precision, served in float32
    for kind, (values, names) in columns.items():
        if standardized[kind]:
            values = _standardize(values, values[parts["train"]], kind, scaling)
        served[kind] = values.float()
        check_float32(values, served[kind], names, kind, standardized[kind], scaling)
    return {name: (served["features"][index], served["targets"][index]) for name, index in parts.items()}


def check_float32(
    values: torch.Tensor,
    served: torch.Tensor,
    names: Sequence[str],
    kind: str,
    standardized: bool,
    scaling: dict[str, torch.Tensor],
) -> None:
    """Refuses a column of ``values`` that ``served``, their float32 copy, cannot stand for: beyond its range,
    or (an offset such as a Unix time's, unstandardised) rounded by more than a hundredth of its spread."""
    fits = served.isfinite().all(0)
    for statistic in ("mean", "scale"):  # the mean or std of huge values overflows float64
        fits &= scaling.get(f"{kind}_{statistic}", torch.zeros(())).isfinite()
    flag = f"data.standardize_{kind}"
    if not fits.all():
        limit = "1e154 (rescale it)" if standardized else f"about 3e38 (float32's range), or {flag}=true"
        raise ValueError(
            f"data column {names[int((~fits).nonzero()[0])]!r} is too large to train on in float32 (or to "
            f"standardise in float64); allowed: values below {limit}"
        )
    spread = values.std(0, unbiased=False)
    moved = (served.to(values.dtype) - values).abs().amax(0)
    if (lost := ~constant_columns(values) & (moved > 0.01 * spread)).any():
        column = int(lost.nonzero()[0])
        raise ValueError(
            f"data column {names[column]!r} varies by {spread[column]:.3g} around "
            f"{values[:, column].mean():.3g}, which float32 rounds by up to {moved[column]:.3g}; "
            f"allowed: {flag}=true (or subtract an offset)"
        )


def constant_columns(values: torch.Tensor) -> torch.Tensor:
    """Which columns hold one value up to their dtype's rounding (0.3 and 0.1 + 0.2 alike): scaling their
    spread would turn rounding into a feature."""
    spread = values.amax(0) - values.amin(0)
    return spread <= 4 * torch.finfo(values.dtype).eps * values.abs().amax(0)


def _standardize(
    values: torch.Tensor, reference: torch.Tensor, name: str, scaling: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Centres and scales columns by the reference rows' mean and std; a constant column is only centred, by
    its first value (its computed mean and std are rounded: the std of a constant 0.1 is 1e-17, not 0)."""
    constant = constant_columns(reference)
    mean = scaling[f"{name}_mean"] = torch.where(constant, reference[0], reference.mean(0))
    std = reference.std(0, unbiased=False)
    scale = scaling[f"{name}_scale"] = torch.where(constant, torch.ones_like(std), std)
    return (values - mean) / scale
