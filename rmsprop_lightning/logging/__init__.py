"""Logging: per-step buffering on the device, the TensorBoard logger and reading events back."""
