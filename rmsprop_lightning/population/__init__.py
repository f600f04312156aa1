"""A Hydra sweep of same-shaped nets trained as one stacked model (``hydra/launcher=population``)."""
