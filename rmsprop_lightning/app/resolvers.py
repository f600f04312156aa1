"""OmegaConf resolvers used by the configs, registered once on import."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Registers ``${run_id:}``: a random 6-hex-digit token, fixed per config.

    Two runs started in the same second then never share a folder.
    """
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)


register_resolvers()
