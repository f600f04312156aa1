"""The Hydra application: entry points, job wrapper, config checks, resume and the DDP launcher fix."""
