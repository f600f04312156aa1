"""Batches sliced from in-memory tensors, reshuffled every epoch and sharded across ranks."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The order of ``count`` rows in ``epoch``, seeded with a checksum of ``"seed/epoch"`` (with
    ``seed + epoch``, seed 1 repeated seed 0 an epoch late; torch's generator reads 32 bits of a seed)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{epoch}".encode()))
    return torch.randperm(count, generator=generator)


def limited_batches(batches: int, limit: int | float) -> int:
    """The batches of an epoch that Lightning's ``limit_train_batches`` (or ``overfit_batches``) leaves: at
    most ``limit`` of them, or that fraction of them."""
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


class InMemoryBatchLoader:
    """Serves ``(features, targets)`` batches as views of tensors already on the device.

    Each epoch draws a permutation from ``(seed, epoch)`` (the same on every rank), takes
    this rank's strided shard of it — padded like ``DistributedSampler`` so every rank
    has as many batches — gathers the shard once and yields contiguous slices. That
    avoids ``DataLoader``'s per-sample collation, which dominates a small net's step.
    Each ``iter()`` starts the next epoch, except right after :meth:`load_state_dict`,
    where it continues the restored epoch from the restored position (unless that epoch
    was finished: a checkpoint taken after an epoch's last batch resumes in the next).
    ``reshuffle=False`` keeps the first epoch's order in every epoch (to overfit the same batches);
    ``batch_limit`` is the trainer's limit of batches an epoch, where a restored epoch ends too.
    """

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        reshuffle: bool = True,
        batch_limit: int | float = 1.0,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be ≥ 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if len(features) != len(targets):
            raise ValueError("features and targets must have the same number of rows")
        self.features = features
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.reshuffle = reshuffle
        self.batch_limit = batch_limit
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._position = 0
        self._restored = False
        padded = -(-len(features) // world_size) * world_size if shuffle else len(features)
        self.shard_size = len(range(rank, padded, world_size))
        if self.shard_size == 0 or (drop_last and self.shard_size < batch_size):
            raise ValueError(
                f"{len(features)} samples over {world_size} rank(s) leave no batch of {batch_size}"
            )

    def __len__(self) -> int:
        full, rest = divmod(self.shard_size, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """The sample indices this rank visits in ``epoch``, in order."""
        count = len(self.features)
        if not self.shuffle:
            return torch.arange(self.rank, count, self.world_size)
        order = epoch_order(self.seed, epoch, count)
        order = torch.cat([order, order[: -count % self.world_size]])  # padded like DistributedSampler
        return order[self.rank :: self.world_size]

    def _batches(self) -> int:
        """The batches an epoch takes: all, or those the trainer's limit leaves."""
        return limited_batches(len(self), self.batch_limit)

    def _end(self) -> int:
        """Where this rank's epoch ends in its shard: after its last batch the limit leaves, before the
        short last batch ``drop_last`` leaves out."""
        return min(self._batches() * self.batch_size, self.shard_size)

    def batches_served(self) -> int:
        """Batches of the epoch its position accounts for (its length less those it has left): what a
        trainer's count in the epoch must read once a restore changed the batch size or world size."""
        left = -(-max(self._end() - self._position, 0) // self.batch_size)  # rounded up
        return self._batches() - left

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        end = self._end()
        continuing = self._restored and self._position < end
        self._restored = False
        if not continuing and self._position > 0:
            self.epoch += int(self.shuffle and self.reshuffle)
            self._position = 0
        indices = self.shard_indices(self.epoch).to(self.features.device)
        features, targets = self.features[indices], self.targets[indices]
        while self._position < end:
            start = self._position
            self._position = min(start + self.batch_size, end)
            yield features[start : self._position], targets[start : self._position]

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position in this rank's shard and the world size, so a resumed run sees the same batches
        and a branch into another number of processes goes on with the rows its epoch has left."""
        return {"epoch": self.epoch, "position": self._position, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved, its position mapped onto this world's shards (a state
        without a world size, written before it was kept, is taken as this world's)."""
        self.epoch = int(state["epoch"])
        saved_world = int(state.get("world_size", self.world_size))
        self._position = self._position_in_world(int(state["position"]), saved_world)
        self._restored = True

    def _position_in_world(self, position: int, world_size: int) -> int:
        """This rank's position once ``world_size`` ranks served ``position`` rows each of their shards.

        Ranks take the epoch's order (padded when shuffled) by stride, so together they served its first
        ``world_size * position`` rows. This world goes on after them: at the next epoch when they
        were all the rows, else at the first multiple of this world's size at or after them, which
        leaves fewer rows than that unseen in this epoch (one warning says how many).
        """
        if world_size == self.world_size:
            return position
        served, count = world_size * position, len(self.features)
        if served >= count:
            return self.shard_size  # the epoch was served: the next iter() starts the next one
        resumed = -(-served // self.world_size)
        if (skipped := resumed * self.world_size - served) and self.rank == 0:
            log.warning(
                "The checkpoint's %d process(es) served %d of the %d rows of epoch %d, which %d process(es) "
                "cannot split evenly: the epoch goes on after its first %d rows, %d row(s) unseen in it",
                world_size,
                served,
                count,
                self.epoch,
                self.world_size,
                served + skipped,
                skipped,
            )
        return resumed
