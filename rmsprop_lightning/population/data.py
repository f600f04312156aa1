"""The members' batches together: each member's own batch order over one shared table."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.data.loader import InMemoryBatchLoader, epoch_order


class StackedBatchLoader(InMemoryBatchLoader):
    """``loader``'s batches as ``[B, P, ...]``: column ``i`` is the batch member ``i``'s solo loader draws
    with its shuffle seed ``seeds[i]``, so every member sees the batches of its solo run."""

    def __init__(self, loader: InMemoryBatchLoader, seeds: Sequence[int]) -> None:
        super().__init__(loader.features, loader.targets, loader.batch_size, drop_last=loader.drop_last)
        self.seeds = list(seeds)

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """``[N, P]``: the sample order of each member in ``epoch``."""
        count = len(self.features)
        return torch.stack([epoch_order(seed, epoch, count) for seed in self.seeds], 1)


class PopulationDataModule(RegressionDataModule):
    """One member's data module serving every member: stacked training batches, shared evaluation ones."""

    def __init__(self, datamodule: RegressionDataModule, seeds: Sequence[int]) -> None:
        super().__init__(
            datamodule.source,
            batch_size=datamodule.batch_size,
            eval_batch_size=datamodule.eval_batch_size,
            drop_last=datamodule.drop_last,
        )
        self._splits = datamodule.splits
        self.seeds = list(seeds)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        train = self._loaders["train"]
        if not isinstance(train, StackedBatchLoader):  # built for this trainer, not stacked yet
            self._loaders["train"] = StackedBatchLoader(train, self.seeds)
