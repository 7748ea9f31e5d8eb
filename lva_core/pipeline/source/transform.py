"""Rotation and ROI of a sampled frame (FFmpeg filters), which becomes its Pixels."""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import av

from lva_core.pipeline.geometry import Rect, rect_to_rotated, rect_to_source, roi_rect, rotated_size
from lva_core.pipeline.pixels import Converter, FormatLearner, Pixels
from lva_core.pipeline.source.spec import SourceSpec


class FrameTransform:
    """Rotation and ROI of a sampled frame, which becomes the frame's ``Pixels``.

    Without rotation: the decoder's frame and the ROI's rectangle in it; converting (to what the
    models declare) happens in ``Pixels``, and full-size RGB's ROI is a view of the one
    conversion. With rotation: an FFmpeg filter graph crops the ROI (pointer arithmetic, on a
    rectangle widened to even coordinates so that 4:2:0 chroma stays aligned) and rotates it
    (transpose, or vflip+hflip for 180; a copy of the YUV pixels of the ROI only); the picture
    is the ROI's rectangle in the result. The graph is rebuilt when the frame's size changes.
    """

    def __init__(self, spec: SourceSpec, learner: FormatLearner | None = None) -> None:
        self.spec = spec
        self._graph: Any = None
        self._key: tuple[Any, ...] | None = None
        self._trim: Rect = (0, 0, 0, 0)
        self.roi_missed = False  # the ROI lay outside a frame, which was delivered whole
        # One set of swscale contexts per stream: ``to_ndarray(format=...)`` builds a new one (and
        # its slice threads, cpu_count + 1 of them) for every frame.
        self.converter = Converter()
        self.learner = learner

    def __call__(self, frame: Any) -> tuple[Pixels, tuple[int, int], tuple[int, int]]:
        rotation = self.spec.rotation % 360
        width, height = int(frame.width), int(frame.height)
        size = rotated_size(width, height, rotation)
        rect = roi_rect(self.spec, *size)
        if rect is None:
            self.roi_missed, rect = True, (0, 0, *size)
        x, y, w, h = rect
        if rotation == 0:
            return Pixels(frame, rect, self.converter, self.learner), (x, y), size
        key = (width, height, frame.format.name, rotation, x, y, w, h)
        if key != self._key:
            self._build(key, frame.time_base)
        self._graph.push(frame)
        return Pixels(self._graph.pull(), self._trim, self.converter, self.learner), (x, y), size

    def _build(self, key: tuple[Any, ...], time_base: Fraction | None) -> None:
        width, height, pix_fmt, rotation, x, y, w, h = key
        sx, sy, sw, sh = rect_to_source((x, y, w, h), rotation, width, height)
        # Widen to even coordinates, then find where the widened rectangle lands after rotation.
        ex0, ey0 = sx & ~1, sy & ~1
        ex1, ey1 = min(width, (sx + sw + 1) & ~1), min(height, (sy + sh + 1) & ~1)
        wide = (ex0, ey0, ex1 - ex0, ey1 - ey0)
        rx, ry, _, _ = rect_to_rotated(wide, rotation, width, height)
        self._trim = (x - rx, y - ry, w, h)
        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(
                width=width, height=height, format=pix_fmt, time_base=time_base or Fraction(1, 90000)
            )
        ]
        if wide != (0, 0, width, height):
            chain.append(graph.add("crop", f"w={wide[2]}:h={wide[3]}:x={wide[0]}:y={wide[1]}:exact=1"))
        if rotation == 90:
            chain.append(graph.add("transpose", "clock"))
        elif rotation == 270:
            chain.append(graph.add("transpose", "cclock"))
        else:  # 180; vflip only flips pointers, hflip copies
            chain += [graph.add("vflip"), graph.add("hflip")]
        chain.append(graph.add("buffersink"))
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link_to(downstream)
        graph.configure()
        self._graph, self._key = graph, key
