"""The frame format a model declares for its ``IMAGE`` input, read from its config.pbtxt.

Three kinds, cheapest for the core last (docs/triton.md, "Frame formats"):

* ``rgb``: uint8 ``[H, W, 3]`` RGB at the frame's own size (the default, and contract v1 as it was).
* ``rgb`` with ``frame_size: WxH``: the core scales the frame with swscale to exactly ``W x H``
  (``frame_resize: stretch``, the default) or to fit within it, aspect kept (``fit``). A network
  that runs at a fixed resolution then gets what it would have resized to itself, in a tenth of
  the bytes.
* ``i420``: uint8 ``[H*3/2, W]``: the decoder's Y, U and V planes packed one after the other
  (BT.601 limited range), at the frame's own size with W and H even. No conversion at all in
  the core, half the bytes of RGB; the model converts and resizes (as DeepStream does on a GPU).

The declaration is a model's, so it is checked against the model's own ``IMAGE`` dims: a
config that asks for a format its input cannot hold is refused with a message naming the
model, the parameter and the file, before a frame is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lva_common.errors import MODEL_ERROR
from lva_core.inference.client import InferenceError
from lva_core.inference.model_info import ModelInfo

Layout = Literal["rgb", "i420"]
Resize = Literal["stretch", "fit"]
IMAGE = "IMAGE"


def _refused(message: str) -> InferenceError:
    """A config.pbtxt whose frame declaration cannot be honoured: the model's error (500)."""
    return InferenceError(MODEL_ERROR, message)


@dataclass(frozen=True)
class FrameFormat:
    layout: Layout = "rgb"
    # (width, height) the core scales to; None: the frame's own size.
    size: tuple[int, int] | None = None
    resize: Resize = "stretch"

    @property
    def name(self) -> str:
        if self.size is None:
            return self.layout
        return f"{self.layout} {self.size[0]}x{self.size[1]} ({self.resize})"

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of what is shipped for a ``width x height`` picture."""
        if self.layout == "i420":
            # Chroma is subsampled by two both ways: an odd last column or row has no plane of
            # its own, so it is left out (see lva_core.pipeline.pixels).
            return max(2, width & ~1), max(2, height & ~1)
        if self.size is None:
            return width, height
        target_w, target_h = self.size
        if self.resize == "stretch":
            return target_w, target_h
        scale = min(target_w / width, target_h / height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def shape(self, width: int, height: int) -> tuple[int, ...]:
        """The per-item ``IMAGE`` shape for a ``width x height`` picture."""
        w, h = self.output_size(width, height)
        return (h * 3 // 2, w) if self.layout == "i420" else (h, w, 3)


RGB = FrameFormat()


def _size(text: str, where: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise _refused(f"{where} is {text!r}; expected WxH, e.g. 300x300") from None
    if width < 1 or height < 1 or width > 16384 or height > 16384:
        raise _refused(f"{where} is {text!r}; both sides must be between 1 and 16384")
    return width, height


def frame_format(model: ModelInfo) -> FrameFormat:
    """The format ``model`` wants its ``IMAGE`` in; RGB at source size when it declares none."""
    params = model.parameters
    where = f"{model.name}/config.pbtxt: parameter"
    layout = params.get("frame_format", "rgb").strip().lower() or "rgb"
    if layout not in ("rgb", "i420"):
        raise _refused(f"{where} frame_format is {layout!r}; expected rgb or i420")
    resize = params.get("frame_resize", "stretch").strip().lower() or "stretch"
    if resize not in ("stretch", "fit"):
        raise _refused(f"{where} frame_resize is {resize!r}; expected stretch or fit")
    size_text = params.get("frame_size", "").strip()
    size = _size(size_text, f"{where} frame_size") if size_text else None
    if layout == "i420" and size is not None:
        raise _refused(f"{where} frame_size cannot be combined with frame_format i420")
    fmt = FrameFormat(layout, size, resize)  # type: ignore[arg-type]
    image = next((t for t in model.inputs if t.name == IMAGE), None)
    if image is not None:
        _check_dims(model.name, fmt, image.datatype, image.dims)
    return fmt


def _check_dims(model: str, fmt: FrameFormat, datatype: str, dims: tuple[int, ...]) -> None:
    where = f"{model}/config.pbtxt: input IMAGE"
    if datatype != "UINT8":
        raise _refused(f"{where} is {datatype}; frames are UINT8")
    if fmt.layout == "i420":
        if len(dims) != 2:
            raise _refused(f"{where} has dims {list(dims)}; frame_format i420 needs [ -1, -1 ]")
        return
    if len(dims) != 3 or dims[2] not in (3, -1):
        raise _refused(f"{where} has dims {list(dims)}; RGB frames need [ -1, -1, 3 ]")
    fixed = dims[0] >= 0 or dims[1] >= 0
    if fixed and (fmt.size is None or fmt.resize != "stretch" or (dims[1], dims[0]) != fmt.size):
        raise _refused(
            f"{where} has fixed dims {list(dims)}; declare frame_size {dims[1]}x{dims[0]} "
            "(frame_resize stretch) so the core ships frames of that size, or make them -1"
        )
