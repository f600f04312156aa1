"""Data: tabular sources, the in-memory batch loader and the Lightning data module."""

from rmsprop_lightning.data.datamodule import RegressionDataModule
from rmsprop_lightning.data.loader import InMemoryBatchLoader
from rmsprop_lightning.data.sources import Table, from_csv, from_numpy, random_normal, synthetic

__all__ = [
    "InMemoryBatchLoader",
    "RegressionDataModule",
    "Table",
    "from_csv",
    "from_numpy",
    "random_normal",
    "synthetic",
]
