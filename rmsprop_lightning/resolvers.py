"""OmegaConf resolvers used by the configs, registered once on import."""

from __future__ import annotations

import secrets
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def register_resolvers() -> None:
    """Registers ``${run_id:}`` and ``${project_root:}`` once.

    ``run_id`` is a random 6-hex-digit token, fixed per config, so two runs started in
    the same second never share a folder; ``project_root`` is the checkout holding
    ``conf/`` and ``experiments/``, for Hydra's search path.
    """
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_resolvers()
