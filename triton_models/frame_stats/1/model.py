"""frame_stats: per-image mean RGB and a constant count of 1.

The trivial model of the repository, in the shape of Triton's own Python backend examples. It
follows the image contract (``IMAGE`` uint8 ``[N, H, W, 3]`` RGB), so it can stand in for a
detector when a benchmark must measure the pipeline instead of the network.
"""

from __future__ import annotations

import json
from typing import Any

import lva_model_kit as kit
import numpy as np
import triton_python_backend_utils as pb_utils

# Rows per uint16 partial sum: 257 * 255 = 65535, the most a uint16 holds.
_ROWS_PER_U16_SUM = 257


def channel_means(images: np.ndarray) -> np.ndarray:
    """Mean of each channel of ``[N, H, W, C]`` uint8 images, as float64 ``[N, C]``, exactly.

    Rows are added first (``[N, H, W*C]`` summed over H: contiguous, vectorised adds), then the
    W pixels of that one row per channel. The row sums run in uint16 over blocks of 257 rows,
    which cannot overflow and add twice as many lanes per instruction as uint32; the blocks are
    then added in uint32 (exact below 16 million rows). ``images.mean(axis=(1, 2))`` casts every
    element on its way through a two-axis reduction and costs ~14 ms on a 720p frame, which made
    this "trivial" model the bottleneck of every pipeline benchmark; uint32 row sums cost
    ~0.5 ms, and these uint16 ones ~0.27 ms.
    """
    n, h, w, c = images.shape
    flat = images.reshape(n, h, w * c)
    rows = np.zeros((n, w * c), dtype=np.uint32)
    for start in range(0, h, _ROWS_PER_U16_SUM):
        rows += flat[:, start : start + _ROWS_PER_U16_SUM].sum(axis=1, dtype=np.uint16)
    return rows.reshape(n, w, c).sum(axis=1, dtype=np.uint64) / float(h * w)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        # Output dtypes come from config.pbtxt so that the two cannot drift apart.
        self.dtypes = kit.output_dtypes(config, ("MEAN_RGB", "COUNT"))

    def execute(self, requests: list[Any]) -> list[Any]:
        # With dynamic batching one call carries several requests; each gets its own response,
        # in order. Requests are not concatenated: their H and W may differ.
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            if images.shape[1] == 0 or images.shape[2] == 0:
                message = f"IMAGE must not be empty, got shape {list(images.shape)}"
                responses.append(kit.error_response(message))
                continue
            mean_rgb = channel_means(images).astype(self.dtypes["MEAN_RGB"])
            count = np.ones((images.shape[0], 1), dtype=self.dtypes["COUNT"])
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("MEAN_RGB", mean_rgb), pb_utils.Tensor("COUNT", count)]
                )
            )
        return responses

    def finalize(self) -> None:
        pass
