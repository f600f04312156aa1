"""The user's own config folders (``hydra.searchpath``, ``--config-dir``) beside ``conf/``, as the checks
before Hydra starts see them: the groups and options they add, and the options Hydra would not read there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rmsprop_lightning.app.override_checks import hydra_on
from rmsprop_lightning.app.resume import quote
from rmsprop_lightning.errors import InputError

# where Hydra looks for configs besides conf/: a user's own options of the groups
SEARCH_PATH = "hydra.searchpath"


def search_path_overrides(typed: Sequence[Any], config_dir: str | None) -> list[str]:
    """The override that sets the search path as the command line does: its last typed ``hydra.searchpath``,
    then a ``--config-dir``, whose options Hydra reads after ``conf/``'s, as it reads the search path's."""
    if not config_dir:
        return [override.input_line for override in typed]
    folders = [*(typed[-1].value() if typed else []), f"file://{Path(config_dir).absolute()}"]
    return [f"{SEARCH_PATH}=[{','.join(quote(folder) for folder in folders)}]"]


def group_options(
    config_dir: Path, config_name: str = "train", searchpath: Sequence[str] = ()
) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for every config group (Hydra's own ``hydra/`` groups aside): the folders of
    ``config_dir``, or with a typed ``hydra.searchpath`` every group Hydra finds on that path, two levels
    deep (a path naming a large folder would have every folder below it walked)."""
    if not searchpath:
        groups = {}
        for folder in sorted(path for path in config_dir.rglob("*") if path.is_dir()):
            group = folder.relative_to(config_dir).as_posix()
            if not group.startswith("hydra") and not folder.name.startswith("__"):
                groups[group] = sorted(path.stem for path in folder.glob("*.yaml"))
        return groups
    from hydra.core.object_type import ObjectType

    groups = {}
    with hydra_on(config_dir) as hydra:
        loader = hydra.config_loader()

        def listed(group: str, kind: ObjectType) -> list[str]:
            return sorted(loader.get_group_options(group, kind, config_name, list(searchpath)))

        pending = [name for name in listed("", ObjectType.GROUP) if name != "hydra"]
        while pending:
            group = pending.pop()
            if options := listed(group, ObjectType.CONFIG):
                groups[group] = options
            if "/" not in group:
                pending += [f"{group}/{name}" for name in listed(group, ObjectType.GROUP)]
    return dict(sorted(groups.items()))


def check_no_glob(
    searched: Sequence[Any], groups: Mapping[str, Sequence[str]], config_dir: Path, typed: str
) -> None:
    """Refuses a config's sweep by ``glob()`` of a group to which ``hydra.searchpath`` adds options: Hydra's
    ``glob()`` reads ``config_dir``'s alone."""
    from hydra.core.override_parser.types import Glob

    for override in searched:
        group = override.key_or_group
        if isinstance(override.value(), Glob) and adds_options(groups, config_dir, group):
            raise InputError(
                f"{typed} sweeps {override.input_line}, and glob() does not see the options of "
                f"{SEARCH_PATH}; allowed: --config-dir=<folder> for your options, which glob() sees"
            )


def adds_options(groups: Mapping[str, Sequence[str]], config_dir: Path, group: str) -> bool:
    """Whether ``groups`` (listed along the search path) holds options of ``group`` that ``config_dir``
    lacks, which Hydra's ``glob()`` would not see."""
    return bool(set(groups.get(group, [])) - {path.stem for path in (config_dir / group).glob("*.yaml")})


def check_not_hidden(choices: Mapping[str, Any], config_dir: Path, searchpath: Sequence[str]) -> None:
    """Refuses an option chosen from a folder of ``searchpath`` that ``config_dir`` also has: Hydra reads the
    latter's, and the user's file would go unread."""
    for group, option in choices.items():
        ours = config_dir / group / f"{option}.yaml"
        if option is None or group.split("/")[0] == "hydra" or not ours.is_file():
            continue
        for entry in searchpath:
            mine = Path(entry.removeprefix("file://")) / group / f"{option}.yaml"
            if mine.is_file() and mine.resolve() != ours.resolve():
                raise InputError(
                    f"{group}={option} is also an option of this project, which Hydra reads, not {mine}; "
                    f"allowed: another name for your option, such as my_{option}"
                )
