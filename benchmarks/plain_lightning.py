"""The anchor: the plain Lightning script a user would write for the job of ``python train.py``'s defaults.

    python benchmarks/plain_lightning.py

The net ``Linear(10,5) → ReLU → Linear(5,1)`` with MSE and ``torch.optim.RMSprop(lr=0.01)`` on
the template's synthetic data (4096 samples, 10 features; 80/10/10 split; batches of 32,
evaluation batches of 1024 as the template's data module uses), ``train/loss`` logged to
TensorBoard at every step, validation every epoch, the best checkpoint on ``val/loss``, 2000
steps, then a test of the best checkpoint. It writes below the current folder.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from rmsprop_lightning.data.sources import synthetic


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
        self.loss = nn.MSELoss()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, targets = batch
        loss = self.loss(self.net(features), targets)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        features, targets = batch
        self.log("val/loss", self.loss(self.net(features), targets), prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        features, targets = batch
        self.log("test/loss", self.loss(self.net(features), targets))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=0.01)


def main() -> None:
    pl.seed_everything(0)
    table = synthetic(seed=1234)  # conf/data/synthetic.yaml's seed
    train, val, test = random_split(
        TensorDataset(table.features, table.targets), [0.8, 0.1, 0.1], torch.Generator().manual_seed(0)
    )
    trainer = pl.Trainer(
        max_steps=2000,
        logger=TensorBoardLogger("logs"),
        callbacks=[ModelCheckpoint(monitor="val/loss", mode="min")],
        log_every_n_steps=1,
    )
    model = Regressor()
    trainer.fit(
        model,
        DataLoader(train, batch_size=32, shuffle=True),
        DataLoader(val, batch_size=1024),
    )
    trainer.test(model, DataLoader(test, batch_size=1024), ckpt_path="best")


if __name__ == "__main__":
    main()
