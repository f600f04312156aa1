"""OmegaConf resolvers used by the configs."""

from __future__ import annotations

import secrets
import sys

from omegaconf import OmegaConf


def on_terminal(on: object, off: object) -> object:
    """``on`` when the error stream (where progress bars draw) is a terminal, else ``off``."""
    return on if sys.stderr.isatty() else off


def register_resolvers() -> None:
    """Registers ``${run_id:}``, a random 6-hex-digit token fixed per config so that two runs started in
    the same second never share a folder, and ``${on_terminal:a,b}``."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("on_terminal"):
        OmegaConf.register_new_resolver("on_terminal", on_terminal)
