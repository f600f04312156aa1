"""The members' batches together: each member's own batch order over one shared table."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.data.loader import InMemoryBatchLoader, epoch_order


class StackedBatchLoader(InMemoryBatchLoader):
    """Yields ``[B, P, ...]`` batches: column ``i`` is the batch member ``i`` draws with its own ``seeds[i]``.

    The members' solo loaders would shuffle with their ``epoch_order``; here each epoch stacks those
    permutations, so every member sees the batches of its solo run.
    """

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        *,
        seeds: Sequence[int],
        drop_last: bool = False,
    ) -> None:
        super().__init__(features, targets, batch_size, shuffle=True, drop_last=drop_last)
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
        features, targets = self._loaders["train"].features, self._loaders["train"].targets
        self._loaders["train"] = StackedBatchLoader(
            features, targets, self.batch_size, seeds=self.seeds, drop_last=self.drop_last
        )
