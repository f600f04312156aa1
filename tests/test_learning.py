"""Training with the template's defaults actually learns the synthetic task."""

from __future__ import annotations

from hydra.utils import instantiate

from rmsprop_lightning.app.run import run
from rmsprop_lightning.callbacks.fit_stats import FitStats


def test_validation_loss_falls_well_below_target_variance(compose_cfg):
    cfg = compose_cfg(
        "trainer.max_steps=1500",
        "trainer.accelerator=cpu",
        "callbacks=none",
        "logger=none",
        "trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false",
    )
    targets = instantiate(cfg.data).splits["val"][1]
    variance = targets.var(unbiased=False).item()
    stats = FitStats()
    run(cfg, extra_callbacks=[stats])
    val_loss = stats.final["val/loss"]
    assert val_loss < 0.1 * variance, (val_loss, variance)
