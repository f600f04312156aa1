"""OmegaConf resolvers used by the configs."""

from __future__ import annotations

import secrets
import sys

from omegaconf import OmegaConf


def on_terminal(on: object, off: object) -> object:
    """``on`` when the error stream (where progress bars draw) is a terminal, else ``off``."""
    return on if sys.stderr.isatty() else off


def folder_name(text: str) -> str:
    """``text`` as one folder's name: ``/`` (in a swept file's path) as ``%2F``, and at most 200 bytes, which
    leaves room for the job number within the 255 that file systems allow."""
    name = str(text).replace("/", "%2F")
    return name.encode()[:200].decode(errors="ignore")


def register_resolvers() -> None:
    """Registers ``${run_id:}``, a random 6-hex-digit token fixed per config so that two runs started in
    the same second never share a folder, ``${on_terminal:a,b}`` and ``${folder_name:text}``."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("on_terminal"):
        OmegaConf.register_new_resolver("on_terminal", on_terminal)
    if not OmegaConf.has_resolver("folder_name"):
        OmegaConf.register_new_resolver("folder_name", folder_name)
