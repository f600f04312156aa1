"""The template's Hydra configs, installed as ``rmsprop_lightning.conf``."""
