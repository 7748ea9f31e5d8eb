"""Keep the copies of ``triton_models/lva_model_kit.py`` in the model version directories identical.

Triton's Python backend imports ``model.py`` with its version directory on ``sys.path``, so each
version that uses the kit carries a copy next to its ``model.py``
(``triton_models/<model>/<version>/lva_model_kit.py``). ``triton_models/lva_model_kit.py`` is the
one source: a plain file at the repository's top, which Triton does not take for a model (it
loads directories only). A version directory needs a copy when its ``model.py`` imports
``lva_model_kit``; any copy found elsewhere must match as well.

    python tools/sync_model_kit.py           # write every missing or differing copy
    python tools/sync_model_kit.py --check   # list them and exit 1 instead (CI, tests)
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KIT_MODULE = "lva_model_kit"
KIT_FILE = f"{KIT_MODULE}.py"


def _imports_kit(model_py: Path) -> bool:
    try:
        tree = ast.parse(model_py.read_text(), filename=str(model_py))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name == KIT_MODULE for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == KIT_MODULE and node.level == 0:
            return True
    return False


def version_dirs(repo: Path) -> list[Path]:
    """Every ``<model>/<version>/`` of the repository (versions are the numeric directories)."""
    return sorted(
        version
        for model in repo.iterdir()
        if model.is_dir()
        for version in model.iterdir()
        if version.is_dir() and version.name.isdigit()
    )


def copies(repo: Path) -> list[Path]:
    """Where copies of the kit must be: versions whose model.py imports it, and existing copies."""
    return [
        version / KIT_FILE
        for version in version_dirs(repo)
        if (version / KIT_FILE).exists() or _imports_kit(version / "model.py")
    ]


def stale_copies(repo: Path) -> list[Path]:
    """The copies that are missing or differ from the source ``<repo>/lva_model_kit.py``."""
    source = (repo / KIT_FILE).read_bytes()
    return [copy for copy in copies(repo) if not copy.is_file() or copy.read_bytes() != source]


def sync(repo: Path) -> list[Path]:
    """Write every stale copy (atomically: a loading model never reads half a file); returns them."""
    source = (repo / KIT_FILE).read_bytes()
    stale = stale_copies(repo)
    for copy in stale:
        partial = copy.with_name(f".{KIT_FILE}.partial")
        partial.write_bytes(source)
        os.replace(partial, copy)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=REPO_ROOT / "triton_models", help="model repository")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a copy is stale")
    args = parser.parse_args(argv)
    repo: Path = args.repo
    if not (repo / KIT_FILE).is_file():
        print(f"{repo / KIT_FILE} not found", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_copies(repo)
        for copy in stale:
            problem = "differs from" if copy.exists() else "is missing, a copy of"
            print(f"stale: {copy} {problem} {repo / KIT_FILE}")
        if stale:
            print("run: python tools/sync_model_kit.py", file=sys.stderr)
        return 1 if stale else 0
    for copy in sync(repo):
        print(f"updated {copy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
