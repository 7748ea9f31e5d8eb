"""person_detector_tiled: the person detector's SSDLite network over overlapping tiles.

SSDLite sees a frame at 300x300: on a 720p frame a person 60 pixels tall is 25 pixels tall to the
network, and it misses most of them. This model cuts each frame into a grid of overlapping tiles
(``tiles`` columns x rows, ``tile_overlap`` of a tile shared with its neighbour), scales every
tile to the network's ``input_size`` (so a tile is seen about twice as large as the whole frame
would be), and with ``tile_whole_frame`` runs the whole frame too, as one more tile, for people
too large to fit in one. All tiles of all frames of a call run as one ONNX batch. Their boxes
are mapped back to the frame and merged class by class, best score first: a box is dropped when
its IoU with a kept one exceeds ``merge_iou``, or when more than ``merge_containment`` of its
area lies inside a kept one (the piece of a person that a tile's edge cut off, seen whole in a
neighbour or in the whole frame).

The ONNX file is the person detector's own ``ssdlite.onnx`` (tools/models/ssdlite_tiled.py copies
it from the same cache entry), so the two models differ only in this file and config.pbtxt.
It obeys the detector contract, version 1: normalised boxes in [0, 1], scores descending,
COUNT valid rows, zero rows after them.

Frames come as RGB (``frame_format`` rgb only); the core ships them at ``frame_size`` (see
config.pbtxt). Tiles are scaled with Pillow's bilinear filter, which averages over the pixels it
drops, as the core's own area filter does for person_detector.
"""

from __future__ import annotations

import json
from typing import Any

import lva_model_kit as kit
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

ONNX_FILE = "ssdlite.onnx"
GRAPH_INPUT = "image"
GRAPH_OUTPUTS = ["boxes", "scores", "classes", "num_detections"]
GRAPH_CLASS_TO_LABEL = {1: 0}


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` as (W, H), both >= 1."""
    width, height = (int(part) for part in text.lower().split("x"))
    if width < 1 or height < 1:
        raise ValueError(f"{text!r} is not WxH with W, H >= 1")
    return width, height


def tile_windows(
    width: int, height: int, grid: tuple[int, int], overlap: float, whole: bool
) -> list[tuple[int, int, int, int]]:
    """The tiles of a ``width`` x ``height`` frame as (x, y, w, h) pixel windows.

    ``grid`` is (columns, rows). Neighbouring tiles share ``overlap`` of a tile's side; the
    outer tiles touch the frame's edges. With ``whole`` the whole frame comes last.
    """
    cols, rows = grid

    def spans(total: int, count: int) -> list[tuple[int, int]]:
        if count == 1:
            return [(0, total)]
        side = min(total, max(1, round(total / (count - (count - 1) * overlap))))
        step = (total - side) / (count - 1)
        return [(round(i * step), side) for i in range(count)]

    windows = [(x, y, w, h) for y, h in spans(height, rows) for x, w in spans(width, cols)]
    if whole:
        windows.append((0, 0, width, height))
    return windows


def merge(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, containment: float
) -> np.ndarray:
    """Indices of the boxes kept by class-wise greedy NMS (best first), see the module."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(0.0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0.0, boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for index in order:
        box = boxes[index]
        if kept:
            others = np.asarray(kept)
            same = classes[others] == classes[index]
            others = others[same]
            if others.size:
                ix1 = np.maximum(box[0], boxes[others, 0])
                iy1 = np.maximum(box[1], boxes[others, 1])
                ix2 = np.minimum(box[2], boxes[others, 2])
                iy2 = np.minimum(box[3], boxes[others, 3])
                inter = np.maximum(0.0, ix2 - ix1) * np.maximum(0.0, iy2 - iy1)
                union = areas[index] + areas[others] - inter
                overlap = inter / np.maximum(union, 1e-12)
                inside = inter / max(float(areas[index]), 1e-12)
                if np.any(overlap > iou) or np.any(inside > containment):
                    continue
        kept.append(int(index))
    return np.asarray(kept, dtype=np.int64)


class TiledDetector:
    """The tiling and merging, apart from Triton: ``detect(images)`` -> the contract's arrays."""

    def __init__(
        self,
        session: Any,
        *,
        grid: tuple[int, int],
        overlap: float,
        whole: bool,
        input_size: tuple[int, int],
        score_threshold: float,
        max_detections: int,
        merge_iou: float,
        merge_containment: float,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {overlap}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.session = session
        self.grid, self.overlap, self.whole = grid, overlap, whole
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.merge_iou, self.merge_containment = merge_iou, merge_containment

    def tiles(self, image: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """One frame's tiles at the network's size, ``[T, h, w, 3]``, and their windows."""
        height, width = image.shape[:2]
        windows = tile_windows(width, height, self.grid, self.overlap, self.whole)
        out = np.empty((len(windows), self.input_size[1], self.input_size[0], 3), np.uint8)
        for i, (x, y, w, h) in enumerate(windows):
            crop = Image.fromarray(np.ascontiguousarray(image[y : y + h, x : x + w]))
            out[i] = np.asarray(crop.resize(self.input_size, Image.Resampling.BILINEAR))
        return out, windows

    def detect(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``[N, H, W, 3]`` uint8 RGB -> BOXES, SCORES, CLASSES, COUNT for the N frames."""
        size, k = images.shape[0], self.max_detections
        height, width = images.shape[1:3]
        tiles, windows = zip(*(self.tiles(image) for image in images), strict=True)
        per_frame = len(windows[0])
        graph_boxes, graph_scores, graph_classes, graph_count = self.session.run(
            GRAPH_OUTPUTS, {GRAPH_INPUT: np.concatenate(tiles)}
        )
        boxes = np.zeros((size, k, 4), np.float32)
        scores = np.zeros((size, k), np.float32)
        classes = np.zeros((size, k), np.int32)
        count = np.zeros((size, 1), np.int32)
        for i in range(size):
            found_boxes, found_scores, found_labels = [], [], []
            for t, (x, y, w, h) in enumerate(windows[i]):
                row = i * per_frame + t
                valid = np.arange(graph_scores.shape[1]) < int(graph_count[row])
                label = np.array([GRAPH_CLASS_TO_LABEL.get(int(c), -1) for c in graph_classes[row]], np.int32)
                keep = np.flatnonzero(valid & (label >= 0) & (graph_scores[row] >= self.score_threshold))
                if not keep.size:
                    continue
                ymin, xmin, ymax, xmax = graph_boxes[row][keep].T.astype(np.float64)
                corners = [
                    (x + xmin * w) / width,
                    (y + ymin * h) / height,
                    (x + xmax * w) / width,
                    (y + ymax * h) / height,
                ]
                found_boxes.append(np.stack(corners, axis=1))
                found_scores.append(graph_scores[row][keep])
                found_labels.append(label[keep])
            if not found_boxes:
                continue
            all_boxes = np.clip(np.concatenate(found_boxes), 0.0, 1.0)
            all_scores = np.concatenate(found_scores).astype(np.float32)
            all_labels = np.concatenate(found_labels)
            kept = merge(all_boxes, all_scores, all_labels, self.merge_iou, self.merge_containment)[:k]
            n = kept.size
            boxes[i, :n] = all_boxes[kept]
            scores[i, :n] = all_scores[kept]
            classes[i, :n] = all_labels[kept]
            count[i, 0] = n
        return {"BOXES": boxes, "SCORES": scores, "CLASSES": classes, "COUNT": count}


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return value == "true"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.labels = [label.strip() for label in kit.parameter(config, "labels").split(",")]
        if kit.frame_format(config) != "rgb":
            raise pb_utils.TritonModelException("person_detector_tiled takes frame_format rgb only")
        if max(GRAPH_CLASS_TO_LABEL.values()) >= len(self.labels):
            raise pb_utils.TritonModelException(f"labels {self.labels} too short for {GRAPH_CLASS_TO_LABEL}")
        session = kit.session(args, ONNX_FILE)
        try:
            self.detector = TiledDetector(
                session,
                grid=kit.parameter(config, "tiles", parse_size),
                overlap=kit.parameter(config, "tile_overlap", float),
                whole=kit.parameter(config, "tile_whole_frame", _flag),
                input_size=kit.parameter(config, "input_size", parse_size, (300, 300)),
                score_threshold=kit.parameter(config, "score_threshold", float),
                max_detections=kit.parameter(config, "max_detections", int),
                merge_iou=kit.parameter(config, "merge_iou", float),
                merge_containment=kit.parameter(config, "merge_containment", float),
            )
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"person_detector_tiled/config.pbtxt: {exc}") from exc
        pb_utils.Logger.log_info(
            f"person_detector_tiled: {ONNX_FILE} on {session.get_providers()[0]}, "
            f"tiles {self.detector.grid}, overlap {self.detector.overlap}, whole frame {self.detector.whole}"
        )
        session.run(GRAPH_OUTPUTS, {GRAPH_INPUT: np.zeros((1, 300, 300, 3), np.uint8)})

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        frames: list[np.ndarray | None] = []
        for index, request in enumerate(requests):
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] == 0 or images.shape[2] == 0:
                responses[index] = kit.error_response(
                    f"frame_format rgb: IMAGE must be [N, H, W, 3], not empty; got shape {list(images.shape)}"
                )
                frames.append(None)
            else:
                frames.append(images)
        for group in kit.group_by_shape(frames):
            try:
                outputs = self.detector.detect(np.ascontiguousarray(group.batch))
            except Exception as exc:
                for index in group.members:
                    responses[index] = kit.error_response(f"person_detector_tiled inference failed: {exc}")
                continue
            for index, rows in group.split(outputs):
                tensors = [pb_utils.Tensor(name, array) for name, array in rows.items()]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.detector.session = None
