"""BestCheckpoint keeps what Lightning's ModelCheckpoint keeps, but never a validation that is not finite."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from rmsprop_lightning.callbacks import BestCheckpoint


class Scripted(pl.LightningModule):
    """One weight; each validation logs the next of ``losses`` as ``val/loss``."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses = list(losses)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.weight - batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self.losses[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("losses", "kept"),
    [
        ([float("nan"), float("inf")], None),
        ([float("inf"), 0.5, float("nan")], "epoch=1.ckpt"),
        ([0.5, 0.2, 0.3], "epoch=1.ckpt"),
    ],
)
def test_only_a_finite_validation_is_kept(tmp_path: Path, losses: list[float], kept: str | None) -> None:
    best = BestCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="val/loss", save_top_k=1)
    data = torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=2)
    pl.Trainer(
        max_epochs=len(losses),
        callbacks=[best],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(Scripted(losses), data, data)
    assert sorted(path.name for path in tmp_path.iterdir()) == ([kept] if kept else [])
    assert best.best_model_path == (str(tmp_path / kept) if kept else "")


def test_its_state_is_model_checkpoints(tmp_path: Path) -> None:
    # checkpoints a ModelCheckpoint wrote restore into it, and the other way round
    settings = {"dirpath": tmp_path, "monitor": "val/loss", "mode": "min"}
    assert BestCheckpoint(**settings).state_key == pl.callbacks.ModelCheckpoint(**settings).state_key
