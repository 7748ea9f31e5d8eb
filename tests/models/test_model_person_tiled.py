"""person_detector_tiled in a real tritonserver, on frames made of real photographs.

The frames and their hand-measured boxes are the accuracy benchmark's (benchmarks/accuracy_set.py:
the group photograph of insightface, scikit-image's and matplotlib's portraits, placed small on
a real background). The detector contract holds, a batch gives what single frames give, and on
frames of small people the tiles find people that person_detector alone does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.accuracy import match
from benchmarks.accuracy_set import LabelledFrame, frames
from lva_core.inference.batcher import ModelBatcher
from lva_core.inference.client import TritonClient
from lva_core.pipeline.pixels import Pixels
from lva_testkit.triton import local_triton

TILED, PLAIN = "person_detector_tiled", "person_detector"
WANTED = ("table_view0", "crowd0_2x2", "crowd2_3x3", "launch_pad00", "launch_pad21")


@pytest.fixture(scope="module")
def labelled() -> dict[str, LabelledFrame]:
    return {f.name: f for f in frames() if f.name in WANTED}


@pytest.fixture(scope="module")
async def client(fetched_repository: Callable[..., Path]) -> AsyncIterator[TritonClient]:
    repo = fetched_repository("tiled", [TILED, PLAIN])
    server = local_triton(repo, model_control_mode="none", startup_timeout=120)
    await server.start()
    client = TritonClient(server.grpc_url, shared_memory=True, pool_bytes=256 << 20, timeout=60)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
        await server.stop()


async def _one(client: TritonClient, model: str, frame: LabelledFrame) -> dict[str, np.ndarray]:
    batcher = ModelBatcher(client, model, max_batch=1)
    try:
        return await batcher.infer({"IMAGE": Pixels.of_rgb(frame.image)}, timeout=60)
    finally:
        await batcher.close()


async def test_contract_and_batch_equal_to_single_frames(
    client: TritonClient, labelled: dict[str, LabelledFrame]
) -> None:
    chosen = [labelled[name] for name in ("crowd0_2x2", "launch_pad00", "launch_pad21")]
    # 1280x720 RGB, as the core ships it (frame_size 1280x720): one request of three frames.
    batch = np.stack([f.image for f in chosen])
    together = await client.infer(TILED, {"IMAGE": batch})
    for index, frame in enumerate(chosen):
        alone = await _one(client, TILED, frame)
        count = int(alone["COUNT"][0])
        assert count == int(together["COUNT"][index][0]) and count > 0
        np.testing.assert_allclose(together["BOXES"][index], alone["BOXES"], atol=1e-5)
        np.testing.assert_allclose(together["SCORES"][index], alone["SCORES"], atol=1e-5)
        boxes, scores = alone["BOXES"], alone["SCORES"]
        assert boxes.shape == (100, 4) and scores.shape == (100,)
        assert np.all(boxes[:count] >= 0) and np.all(boxes[:count] <= 1)
        assert np.all(boxes[:count, 2] > boxes[:count, 0]) and np.all(boxes[:count, 3] > boxes[:count, 1])
        assert np.all(np.diff(scores[:count]) <= 0) and np.all(scores[:count] >= 0.4)
        assert not boxes[count:].any() and not scores[count:].any() and not alone["CLASSES"][count:].any()


async def test_finds_small_people_that_ssdlite_misses(
    client: TritonClient, labelled: dict[str, LabelledFrame]
) -> None:
    tiled = plain = people = false = 0
    for name in ("crowd0_2x2", "crowd2_3x3", "launch_pad00", "launch_pad21"):
        frame = labelled[name]
        results = []
        for model in (TILED, PLAIN):
            out = await _one(client, model, frame)
            found = out["BOXES"][: int(out["COUNT"][0])].tolist()
            results.append(match(found, frame.people, frame.ignored_people, 0.5))
        print(name, len(frame.people), "tiled", results[0]["tp"], results[0]["fp"], "plain", results[1]["tp"])
        tiled, plain = tiled + results[0]["tp"], plain + results[1]["tp"]
        people, false = people + len(frame.people), false + results[0]["fp"]
    # Measured: 56 and 10 of 90 people at IoU 0.5 against the hand-measured boxes, 7 false.
    assert tiled >= 0.45 * people and tiled >= 3 * plain, (tiled, plain, people)
    assert false <= 0.2 * tiled, (false, tiled)


async def test_large_people_still_found(client: TritonClient, labelled: dict[str, LabelledFrame]) -> None:
    frame = labelled["table_view0"]  # the group photograph as a 720p camera view: six people
    out = await _one(client, TILED, frame)
    result = match(out["BOXES"][: int(out["COUNT"][0])].tolist(), frame.people, frame.ignored_people, 0.5)
    assert result["tp"] >= 4, result
