"""The accuracy benchmark's labelled frames, re-created from the packages the photographs ship in.

    .venv/bin/python -m benchmarks.accuracy_set OUT_DIR   # writes the frames as PNG, with truth

Nothing is downloaded here: the group photograph is insightface's and the beach photographs are
Debian's darknet package's (both fetched by ``make models``, ``tools/models/testdata.py``), the
others ship inside scikit-image and matplotlib. Their hand-labelled boxes are in
``accuracy_data/truth.json`` (in each photograph's own pixels); every frame is made from them by
crops, scales, mirrors and placements, so each frame's truth is the photographs' truth carried
through the same arithmetic. Four scenes, 54 frames:

- ``table`` (7): the group photograph itself, and 16:9 camera views cropped from it at
  1280x720 (people cut by the crop edge count while most of them is in view; the rest are
  "ignored": a detection on them is neither right nor wrong);
- ``crowd`` (9): mosaics of the group photograph, mirrored and shifted, 2x2 to 4x4 on a
  1280x720 frame: 15 to 70 people per frame, the smallest about 90 pixels tall (the detectors
  return at most 100 boxes, so no frame has more people);
- ``launch_pad`` (28): the launch-pad photograph as a fixed outdoor camera's view, with the
  four photographs placed on it at random places and sizes (seeded), never overlapping: one to
  six placements per frame, people from about 40 to 400 pixels tall, mostly distant;
- ``beach`` (10): real photographs of small, distant people, not rearranged: darknet's beach
  with kite-surfers (13 people, 7 to 250 pixels tall, most under 60) itself and six 720p camera
  views of it (the whole width down to the beach's left end magnified 2.8 times), and its
  meadow photograph of one person, itself and two 720p views.

Deterministic: the same packages give the same pixels.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TRUTH_FILE = Path(__file__).resolve().parent / "accuracy_data" / "truth.json"
SIZE = (1280, 720)
SEED = 15
LAUNCH_PAD_FRAMES = 28
# Camera views of the beach photographs: (photograph, 16:9 crop width, left, top), each scaled
# to 1280x720.
BEACH_VIEWS = [("kite", 1352, 0, 100), ("kite", 960, 0, 330), ("kite", 640, 0, 420), ("kite", 480, 0, 440),
               ("kite", 800, 250, 380), ("kite", 560, 300, 400),
               ("person", 640, 0, 40), ("person", 400, 60, 80)]  # fmt: skip
# A person (face) counts when at least this much of its box is in the frame, and it is at least
# this many pixels tall (wide); the others are ignored.
VISIBLE = 0.6
MIN_PERSON_PX = 24
MIN_FACE_PX = 12

Box = tuple[float, float, float, float]


@dataclass
class Face:
    box: Box  # normalised x1, y1, x2, y2
    gender: str | None
    age: float | None


@dataclass
class LabelledFrame:
    name: str
    scene: str
    image: np.ndarray[Any, Any]  # uint8 RGB [H, W, 3]
    people: list[Box] = field(default_factory=list)  # normalised
    faces: list[Face] = field(default_factory=list)
    ignored_people: list[Box] = field(default_factory=list)
    ignored_faces: list[Box] = field(default_factory=list)

    def truth(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scene": self.scene,
            "size": [int(self.image.shape[1]), int(self.image.shape[0])],
            "people": [list(b) for b in self.people],
            "faces": [{"box": list(f.box), "gender": f.gender, "age": f.age} for f in self.faces],
            "ignored_people": [list(b) for b in self.ignored_people],
            "ignored_faces": [list(b) for b in self.ignored_faces],
        }


@dataclass
class Photo:
    name: str
    pixels: np.ndarray[Any, Any]
    people: list[dict[str, Any]]


def _rgb(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _photos() -> dict[str, Photo]:
    import matplotlib.cbook
    from skimage import data

    from tools.models import testdata

    truth = json.loads(TRUTH_FILE.read_text())["photos"]
    with Image.open(testdata.path(testdata.GROUP_PHOTO)) as group:
        group_pixels = np.asarray(group.convert("RGB"))
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        hopper_pixels = np.asarray(hopper.convert("RGB"))
    with Image.open(testdata.path(testdata.BEACH_KITE)) as kite:
        kite_pixels = np.asarray(kite.convert("RGB"))
    with Image.open(testdata.path(testdata.BEACH_PERSON)) as person:
        person_pixels = np.asarray(person.convert("RGB"))
    pixels = {
        "group": group_pixels,
        "astronaut": data.astronaut(),
        "cameraman": _rgb(data.camera()),
        "hopper": hopper_pixels,
        "kite": kite_pixels,
        "person": person_pixels,
    }
    photos = {}
    for name, image in pixels.items():
        width, height = truth[name]["size"]
        if image.shape[:2] != (height, width):
            raise RuntimeError(
                f"{name}: the photograph is {image.shape[1]}x{image.shape[0]}, labelled {width}x{height}"
            )
        photos[name] = Photo(name, np.ascontiguousarray(image), truth[name]["people"])
    return photos


def _resize(image: np.ndarray[Any, Any], width: int, height: int) -> np.ndarray[Any, Any]:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


class _Canvas:
    """A frame being built: pixels plus the truth of whatever is pasted on it."""

    def __init__(self, name: str, scene: str, background: np.ndarray[Any, Any]) -> None:
        self.frame = LabelledFrame(name, scene, background.copy())

    def paste(self, photo: Photo, x: int, y: int, width: int, height: int, mirror: bool = False) -> None:
        """``photo`` scaled to ``width`` x ``height`` with its top-left at (x, y), cut by the frame."""
        scaled = _resize(photo.pixels[:, ::-1] if mirror else photo.pixels, width, height)
        fh, fw = self.frame.image.shape[:2]
        x0, y0, x1, y1 = max(0, x), max(0, y), min(fw, x + width), min(fh, y + height)
        if x1 <= x0 or y1 <= y0:
            return
        self.frame.image[y0:y1, x0:x1] = scaled[y0 - y : y1 - y, x0 - x : x1 - x]
        sx, sy = width / photo.pixels.shape[1], height / photo.pixels.shape[0]
        pw = photo.pixels.shape[1]
        for person in photo.people:
            for key in ("box", "face"):
                if person[key] is None:  # no face in view
                    continue
                bx1, by1, bx2, by2 = person[key]
                if mirror:
                    bx1, bx2 = pw - bx2, pw - bx1
                box = (x + bx1 * sx, y + by1 * sy, x + bx2 * sx, y + by2 * sy)
                self._add(key, box, person, (x0, y0, x1, y1))

    def _add(self, key: str, box: Box, person: dict[str, Any], window: tuple[int, int, int, int]) -> None:
        fh, fw = self.frame.image.shape[:2]
        wx0, wy0, wx1, wy1 = window  # the pasted photograph's visible part
        cx1, cy1 = max(box[0], wx0), max(box[1], wy0)
        cx2, cy2 = min(box[2], wx1), min(box[3], wy1)
        if cx2 <= cx1 or cy2 <= cy1:
            return
        visible = (cx2 - cx1) * (cy2 - cy1) / ((box[2] - box[0]) * (box[3] - box[1]))
        norm = (cx1 / fw, cy1 / fh, cx2 / fw, cy2 / fh)
        norm = tuple(round(v, 5) for v in norm)  # type: ignore[assignment]
        if key == "box":
            counts = visible >= VISIBLE and cy2 - cy1 >= MIN_PERSON_PX
            (self.frame.people if counts else self.frame.ignored_people).append(norm)
        else:
            counts = visible >= VISIBLE and cx2 - cx1 >= MIN_FACE_PX
            if counts:
                self.frame.faces.append(Face(norm, person["gender"], person["age"]))
            else:
                self.frame.ignored_faces.append(norm)


def _whole(photo: Photo, name: str, scene: str) -> LabelledFrame:
    """The photograph itself, at its own size."""
    height, width = photo.pixels.shape[:2]
    whole = _Canvas(name, scene, np.zeros((height, width, 3), np.uint8))
    whole.paste(photo, 0, 0, width, height)
    return whole.frame


def _view(photo: Photo, name: str, scene: str, crop_w: int, left: int, top: int) -> LabelledFrame:
    """A camera view: a 16:9 window of the photograph (crop width, left, top) scaled to 1280x720."""
    height, width = photo.pixels.shape[:2]
    crop_h = crop_w * SIZE[1] // SIZE[0]
    scale = SIZE[0] / crop_w
    assert left + crop_w <= width and top + crop_h <= height, (name, crop_w, left, top)
    canvas = _Canvas(name, scene, np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
    canvas.paste(
        photo, round(-left * scale), round(-top * scale), round(width * scale), round(height * scale)
    )
    return canvas.frame


def _table(photos: dict[str, Photo]) -> list[LabelledFrame]:
    group = photos["group"]
    frames = [_whole(group, "table_whole", "table")]
    views = [(1280, 0, 80), (1280, 0, 166), (1000, 0, 100), (1000, 280, 60), (800, 0, 150), (800, 480, 120)]
    for index, (crop_w, left, top) in enumerate(views):
        frames.append(_view(group, f"table_view{index}", "table", crop_w, left, top))
    return frames


def _crowd(photos: dict[str, Photo]) -> list[LabelledFrame]:
    group = photos["group"]
    height, width = group.pixels.shape[:2]
    frames = []
    # (columns, rows, horizontal shift and vertical shift as fractions of a cell)
    layouts = [(2, 2, 0.0, 0.0), (2, 2, 0.5, 0.3), (3, 3, 0.0, 0.0), (3, 3, 0.3, 0.5), (3, 2, 0.0, 0.1),
               (4, 4, 0.0, 0.0), (4, 4, 0.5, 0.5), (4, 3, 0.2, 0.0), (4, 4, 0.3, 0.2)]  # fmt: skip
    for index, (cols, rows, shift_x, shift_y) in enumerate(layouts):
        cell_w = SIZE[0] / cols
        cell_h = cell_w * height / width
        canvas = _Canvas(f"crowd{index}_{cols}x{rows}", "crowd", np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
        for r in range(-1, rows + 1):
            for c in range(-1, cols + 1):
                x = round((c - shift_x) * cell_w)
                y = round((r - shift_y) * cell_h)
                if x >= SIZE[0] or y >= SIZE[1] or x + cell_w <= 0 or y + cell_h <= 0:
                    continue
                canvas.paste(group, x, y, round(cell_w), round(cell_h), mirror=(r + c) % 2 == 1)
        frames.append(canvas.frame)
    return frames


def _launch_pad(photos: dict[str, Photo]) -> list[LabelledFrame]:
    from skimage import data

    background = _resize(data.rocket(), *SIZE)
    rng = np.random.default_rng(SEED)
    names = ["group", "astronaut", "cameraman", "hopper"]
    frames = []
    for index in range(LAUNCH_PAD_FRAMES):
        canvas = _Canvas(f"launch_pad{index:02d}", "launch_pad", background)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 7))):
            photo = photos[names[int(rng.integers(0, len(names)))]]
            ph, pw = photo.pixels.shape[:2]
            # Distant more often than near: heights spread evenly in log scale.
            target_h = float(np.exp(rng.uniform(np.log(48), np.log(420))))
            if photo.name == "group":
                target_h *= 0.8  # its people are about half its height
            h = round(target_h)
            w = round(h * pw / ph)
            for _attempt in range(30):
                x = int(rng.integers(0, max(1, SIZE[0] - w)))
                y = int(rng.integers(0, max(1, SIZE[1] - h)))
                box = (x, y, x + w, y + h)
                if all(box[2] <= o[0] or box[0] >= o[2] or box[3] <= o[1] or box[1] >= o[3] for o in placed):
                    placed.append(box)
                    canvas.paste(photo, x, y, w, h, mirror=bool(rng.integers(0, 2)))
                    break
        frames.append(canvas.frame)
    return frames


def _beach(photos: dict[str, Photo]) -> list[LabelledFrame]:
    frames = []
    for name in ("kite", "person"):
        frames.append(_whole(photos[name], f"beach_{name}", "beach"))
        views = [view for view in BEACH_VIEWS if view[0] == name]
        for index, (_, crop_w, left, top) in enumerate(views):
            frames.append(_view(photos[name], f"beach_{name}_view{index}", "beach", crop_w, left, top))
    return frames


def frames() -> list[LabelledFrame]:
    """All labelled frames, in a fixed order."""
    photos = _photos()
    return _table(photos) + _crowd(photos) + _launch_pad(photos) + _beach(photos)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    made = frames()
    for frame in made:
        Image.fromarray(frame.image).save(out / f"{frame.name}.png")
    (out / "truth.json").write_text(json.dumps([f.truth() for f in made], indent=1) + "\n")
    people = sum(len(f.people) for f in made)
    faces = sum(len(f.faces) for f in made)
    print(f"{len(made)} frames, {people} people, {faces} faces -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
