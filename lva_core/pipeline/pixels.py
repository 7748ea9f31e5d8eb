"""One analysed picture, in whichever formats its models ask for, each made once.

A decoded frame stays a decoder frame (YUV, usually yuv420p) until a model says what it wants
(``lva_core.inference.frame_format``): full-size RGB, RGB scaled to the network's input by
swscale, or the I420 planes themselves, which are copied straight from the decoder's buffers
into the request's shared memory, with no array in between. The stream's decoding thread makes
the RGB formats its models asked for on earlier frames (``FormatLearner``), so conversion stays
off the event loop; a format asked for the first time is made where it is asked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from lva_core.inference.frame_format import RGB, FrameFormat
from lva_core.pipeline.geometry import Rect

# Scaling down: swscale's AREA (and BILINEAR) filters are as wide as the ratio, so every source
# pixel counts; FAST_BILINEAR reads two taps whatever the ratio and aliases a 1280 -> 300
# downscale. AREA was the cheapest of the three here (0.6 ms to 300x300 RGB, with the two steps
# of Pixels._rgb). Same-size conversions do not scale: the flag only picks chroma upsampling,
# where AREA and BILINEAR give PyAV's default pixels.
INTERPOLATION = Interpolation.AREA
# A format not asked for on this many sampled frames is no longer made ahead (a model swap).
_FORGET_AFTER = 25
_I420_FORMATS = frozenset({"yuv420p"})


class Converter:
    """A stream's swscale contexts, one per output format, used by one thread at a time.

    A reformatter rebuilds its context whenever it is asked for another size or pixel format,
    so formats do not share one. One slice thread: each stream already converts in its own
    decoding thread, and more slices only add wake-ups.
    """

    def __init__(self) -> None:
        self._reformatters: dict[tuple[str, int, int], VideoReformatter] = {}
        self._lock = threading.Lock()

    def reformat(self, frame: Any, pix_fmt: str, width: int, height: int) -> Any:
        key = (pix_fmt, width, height)
        with self._lock:
            reformatter = self._reformatters.get(key)
            if reformatter is None:
                reformatter = self._reformatters[key] = VideoReformatter()
            return reformatter.reformat(
                frame, width=width, height=height, format=pix_fmt, interpolation=INTERPOLATION, threads=1
            )

    @property
    def contexts(self) -> int:
        """How many swscale contexts this stream holds (one per format it converted to)."""
        return len(self._reformatters)


class FormatLearner:
    """The formats a stream's models asked for lately: what the decoding thread makes ahead."""

    def __init__(self) -> None:
        self._last_asked: dict[FrameFormat, int] = {}
        self._frames = 0

    def asked(self, fmt: FrameFormat) -> None:
        self._last_asked[fmt] = self._frames

    def next_frame(self) -> list[FrameFormat]:
        """Called once per sampled frame by the decoding thread: the formats to make for it."""
        self._frames += 1
        # list() copies in one step under the GIL, while the loop may add a format.
        recent = list(self._last_asked.items())
        return [fmt for fmt, frame in recent if self._frames - frame <= _FORGET_AFTER]


class ImageInput:
    """``IMAGE`` for one request item, in one format: its shape, and how to write it in place."""

    __slots__ = ("fmt", "pixels", "shape")

    def __init__(self, pixels: Pixels, fmt: FrameFormat) -> None:
        self.pixels, self.fmt = pixels, fmt
        self.shape = pixels.shape(fmt)

    def write(self, out: np.ndarray[Any, Any]) -> None:
        self.pixels.write(self.fmt, out)


class Pixels:
    """The picture of one analysed frame: ``rect`` of a decoder frame, in any frame format.

    ``rect`` is (x, y, w, h) inside ``frame``: the ROI, or what rotation left of a widened ROI.
    RGB at the picture's own size is exact to the pixel. I420 and the scaled formats need
    chroma-aligned (even) coordinates: with an odd ROI edge they take the rectangle widened to
    even coordinates, at most one pixel more on a side, and an odd last column or row of a whole
    frame is left out of I420.
    """

    def __init__(
        self,
        frame: Any,
        rect: Rect,
        converter: Converter,
        learner: FormatLearner | None = None,
    ) -> None:
        self._frame = frame
        self.rect = rect
        self._converter = converter
        self._learner = learner
        self._made: dict[FrameFormat, np.ndarray[Any, Any]] = {}
        self._yuv: Any = None

    @classmethod
    def of_rgb(cls, image: np.ndarray[Any, Any]) -> Pixels:
        """Pixels of an RGB array (a photograph, a test's frame): the array is the RGB format."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an RGB picture is uint8 [H, W, 3], not {image.dtype} {list(image.shape)}")
        height, width = int(image.shape[0]), int(image.shape[1])
        pixels = cls(None, (0, 0, width, height), Converter())
        pixels._made[RGB] = image
        return pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.rect[2], self.rect[3]

    def shape(self, fmt: FrameFormat) -> tuple[int, ...]:
        if fmt.layout == "i420":
            x0, y0, x1, y1 = self._even_rect()
            return fmt.shape(x1 - x0, y1 - y0)
        return fmt.shape(*(self._scaled_from() if fmt.size else self.size))

    def input(self, fmt: FrameFormat) -> ImageInput:
        """What a request carries as ``IMAGE`` for a model of format ``fmt``."""
        if self._learner is not None:
            self._learner.asked(fmt)
        return ImageInput(self, fmt)

    def rgb(self) -> np.ndarray[Any, Any]:
        """uint8 RGB ``[H, W, 3]`` at the picture's own size (made on first use)."""
        return self.array(RGB)

    def prepare(self, formats: Iterable[FrameFormat]) -> None:
        """Make the RGB formats in ``formats`` now (the decoding thread); I420 needs nothing ahead."""
        for fmt in formats:
            if fmt.layout == "rgb":
                self.array(fmt)

    def array(self, fmt: FrameFormat) -> np.ndarray[Any, Any]:
        """The picture in ``fmt``, as an array (I420 is packed into a new one: tests, tools)."""
        made = self._made.get(fmt)
        if made is not None:
            return made
        if fmt.layout == "i420":
            out = np.empty(self.shape(fmt), np.uint8)
            self.write(fmt, out)
            return out
        made = self._rgb(fmt)
        self._made[fmt] = made
        return made

    def write(self, fmt: FrameFormat, out: np.ndarray[Any, Any]) -> None:
        """Write the picture in ``fmt`` into ``out`` (a request's slot), of ``shape(fmt)``."""
        if fmt.layout == "rgb":
            out[...] = self.array(fmt)
            return
        self._ensure_frame()
        if out.flags.c_contiguous:
            self._write_i420(out)
        else:
            packed = np.empty(out.shape, np.uint8)
            self._write_i420(packed)
            out[...] = packed

    # ---------------------------------------------------------------- the conversions

    def _ensure_frame(self) -> None:
        """A picture made from an RGB array gets a frame of its own when a format needs one."""
        if self._frame is None:
            self._frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(self._made[RGB]), format="rgb24")

    def _scaled_from(self) -> tuple[int, int]:
        """The size of what swscale scales: the picture, or its even rectangle (see _rgb)."""
        if self._frame is None or self._whole() or self._frame.format.name == "rgb24":
            return self.size
        x0, y0, x1, y1 = self._even_rect()
        return x1 - x0, y1 - y0

    def _even_rect(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.rect
        if self._frame is None:
            width, height = w, h
        else:
            width, height = int(self._frame.width), int(self._frame.height)
        x0, y0 = x & ~1, y & ~1
        x1 = max(x0 + 2, min(width & ~1, (x + w + 1) & ~1))
        y1 = max(y0 + 2, min(height & ~1, (y + h + 1) & ~1))
        return x0, y0, x1, y1

    def _whole(self) -> bool:
        frame = self._frame
        return frame is None or self.rect == (0, 0, int(frame.width), int(frame.height))

    def _yuv420(self) -> Any:
        """The frame as yuv420p (the decoder's own frame when it is one already)."""
        if self._yuv is None:
            frame = self._frame
            if frame.format.name in _I420_FORMATS:
                self._yuv = frame
            else:  # yuvj420p (full range), nv12 from a hardware decoder, 4:2:2 sources...
                self._yuv = self._converter.reformat(frame, "yuv420p", int(frame.width), int(frame.height))
        return self._yuv

    def _planes(self) -> list[np.ndarray[Any, Any]]:
        """Views of the Y, U and V planes of the even rectangle (no copy)."""
        frame = self._yuv420()
        x0, y0, x1, y1 = self._even_rect()
        views = []
        for index, plane in enumerate(frame.planes):
            div = 1 if index == 0 else 2
            full = np.ndarray(
                (int(plane.height), int(plane.width)),
                np.uint8,
                buffer=plane,
                strides=(int(plane.line_size), 1),
            )
            views.append(full[y0 // div : y1 // div, x0 // div : x1 // div])
        return views

    def _write_i420(self, out: np.ndarray[Any, Any]) -> None:
        y, u, v = self._planes()
        flat = out.reshape(-1)  # a view: ``out`` is contiguous
        luma = y.size
        flat[:luma].reshape(y.shape)[...] = y
        flat[luma : luma + u.size].reshape(u.shape)[...] = u
        flat[luma + u.size : luma + u.size + v.size].reshape(v.shape)[...] = v

    def _rgb(self, fmt: FrameFormat) -> np.ndarray[Any, Any]:
        self._ensure_frame()
        frame = self._frame
        if fmt.size is None:
            width, height = int(frame.width), int(frame.height)
            image: np.ndarray[Any, Any] = self._converter.reformat(frame, "rgb24", width, height).to_ndarray()
            x, y, w, h = self.rect
            if (w, h) != (width, height):
                image = image[y : y + h, x : x + w]  # a view: the ROI of the one conversion
            return image
        source = frame
        x0, y0, x1, y1 = self._even_rect()
        if frame.format.name == "rgb24":  # made from an RGB array: scale that
            if not self._whole():
                source = av.VideoFrame.from_ndarray(np.ascontiguousarray(self.rgb()), format="rgb24")
            width, height = fmt.output_size(int(source.width), int(source.height))
            scaled: np.ndarray[Any, Any] = self._converter.reformat(
                source, "rgb24", width, height
            ).to_ndarray()
            return scaled
        if self._whole():
            source = self._yuv420()
        else:
            # swscale takes whole frames: the ROI is cut from the planes first (one small copy).
            packed = np.empty(FrameFormat("i420").shape(x1 - x0, y1 - y0), np.uint8)
            self._write_i420(packed)
            source = av.VideoFrame.from_ndarray(packed, format="yuv420p")
        width, height = fmt.output_size(int(source.width), int(source.height))
        # Scaled in YUV, then converted at the small size: swscale's planar scaler plus its
        # unscaled YUV -> RGB path cost less than half of scaling while converting (measured
        # 1.1 vs 2.5 ms for 1280x720 -> 640x360, 0.6 vs 0.9 ms -> 300x300).
        small = self._converter.reformat(source, "yuv420p", width, height)
        rgb: np.ndarray[Any, Any] = self._converter.reformat(small, "rgb24", width, height).to_ndarray()
        return rgb
