"""Small C and C++ sources built into shared libraries with the system compiler, once per machine.

A build is cached on disk (``$RMSPROP_LIGHTNING_CACHE``, else ``~/.cache/rmsprop_lightning``)
under a hash of its source, compiler, flags, CPU and what else it was built against, so later
processes only load it, and it is moved into place atomically, so processes building at once
never load a partial file.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any


class KernelUnavailable(RuntimeError):
    """A C or C++ library cannot be built or loaded here (e.g. no compiler)."""


def compiler(cplusplus: bool = False) -> str:
    """The compiler to use: ``$CC``, else gcc, else cc; for C++ ``$CXX``, else g++, else c++."""
    language, variable, names = ("C++", "CXX", ("g++", "c++")) if cplusplus else ("C", "CC", ("gcc", "cc"))
    found = os.environ.get(variable) or next(filter(None, map(shutil.which, names)), None)
    if not found:
        raise KernelUnavailable(f"no {language} compiler found (set {variable} or install {names[0]})")
    return found


def cache_dir() -> Path:
    """Where built libraries are kept across processes."""
    root = os.environ.get("RMSPROP_LIGHTNING_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rmsprop_lightning"


def machine() -> str:
    """Describes the CPU, so that a shared cache never serves a build for another CPU (-march=native)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def build(
    name: str,
    source: str,
    flags: Sequence[str],
    *,
    cplusplus: bool = False,
    libraries: Sequence[str] = (),
    depends_on: Sequence[str] = (),
) -> Path:
    """Compiles ``source`` with ``flags`` into ``<name>_<hash>.so`` unless a cached build exists; its path.

    ``libraries`` (``-l``/``-L`` options) follow the source, as linkers want them;
    ``depends_on`` names what else the build must match (e.g. the version of the headers).
    """
    cc = compiler(cplusplus)
    parts = [source, cc, *flags, *libraries, *depends_on, machine()]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    directory = cache_dir()
    library = directory / f"{name}_{key}.so"
    if library.exists():
        return library
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as work:
            source_file = Path(work) / f"{name}.{'cpp' if cplusplus else 'c'}"
            source_file.write_text(source)
            output = Path(work) / f"{name}.so"
            result = subprocess.run(
                [cc, *flags, str(source_file), "-o", str(output), *libraries, "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                raise KernelUnavailable(f"{cc} failed:\n{result.stderr.strip()}")
            os.replace(output, library)  # atomic: concurrent builders never see a partial file
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KernelUnavailable(f"building with {cc} in {directory} failed: {error}") from error
    return library


def load_function(library: Path, name: str, argtypes: Sequence[Any]) -> Any:
    """The C function ``name`` of ``library`` as a ctypes function of ``argtypes`` returning nothing."""
    try:
        function = getattr(ctypes.CDLL(str(library)), name)
    except (OSError, AttributeError) as error:
        raise KernelUnavailable(f"loading {name} from {library} failed: {error}") from error
    function.restype = None
    function.argtypes = list(argtypes)
    return function


def load_module(library: Path, name: str) -> ModuleType:
    """The Python extension module ``name`` (its ``PyInit_<name>``) built into ``library``."""
    try:
        loader = importlib.machinery.ExtensionFileLoader(name, str(library))
        spec = importlib.util.spec_from_file_location(name, library, loader=loader)
        if spec is None:
            raise ImportError(f"no module spec for {library}")
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError as error:
        raise KernelUnavailable(f"loading the module {name} from {library} failed: {error}") from error
    return module
