"""What the entry points do around the Hydra app: ``resume=`` and a clearer word on unknown keys."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rmsprop_lightning.app.resume import resume_arguments
from rmsprop_lightning.errors import InputError, exit_with, is_rank_zero


def run_app(hydra_main: Callable[[], Any], config_dir: str | Path, config_name: str = "train") -> None:
    """Runs a ``@hydra.main`` function on ``sys.argv`` with ``resume=<run dir>`` rewritten first.

    When Hydra rejects the command line it prints its own message and exits with 1; for
    an override of a key the config does not have, one more line then lists the keys
    that exist there (Hydra names the key but not the alternatives).
    """
    arguments = sys.argv[1:]
    try:
        sys.argv[1:] = resume_arguments(arguments)
    except InputError as error:
        exit_with(error)
    try:
        hydra_main()
    except SystemExit as exit_:
        if exit_.code == 1 and is_rank_zero() and sys.argv[1:] == arguments:
            explanation = unknown_key_explanation(config_dir, config_name, arguments)
            if explanation:
                print(f"error: {explanation}", file=sys.stderr, flush=True)
        raise


def unknown_key_explanation(config_dir: str | Path, config_name: str, arguments: Sequence[str]) -> str | None:
    """Names the first ``key=value`` override whose key the composed config lacks, and what it has there."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import DictConfig, OmegaConf

    try:
        overrides = OverridesParser.create().parse_overrides(
            get_args_parser().parse_args(arguments).overrides
        )
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(Path(config_dir).absolute()), version_base="1.3"):
            groups = set(compose(config_name, return_hydra_config=True).hydra.runtime.choices)
            selections = [
                o.input_line
                for o in overrides
                if not o.is_sweep_override() and (o.key_or_group in groups or "/" in o.key_or_group)
            ]
            cfg = compose(config_name, overrides=selections)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()
    for override in overrides:
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or override.is_hydra_override() or key in groups:
            continue
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if OmegaConf.select(cfg, path, default=KeyError) is KeyError:
                parent_path = ".".join(parts[: depth - 1])
                parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
                names = parent if isinstance(parent, DictConfig) else []
                allowed = sorted(str(name) for name in names if not str(name).startswith("_"))
                close = difflib.get_close_matches(parts[depth - 1], allowed, n=1)
                hint = f" (did you mean {'.'.join([*parts[: depth - 1], close[0]])}?)" if close else ""
                where = f"{parent_path}" if parent_path else "the config's top level"
                return (
                    f"{path} is not a key of {where}{hint}; allowed: {', '.join(allowed)} "
                    f"(+{key}=... adds a new key)"
                )
    return None
