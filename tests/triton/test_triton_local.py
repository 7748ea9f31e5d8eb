"""LocalTriton, the frame_stats model and the Triton health check, against a real tritonserver."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as grpcclient
from skimage import data, transform

from lva_common.aio import wait_within
from lva_common.errors import LunaError
from lva_core.runtime import procfs
from lva_core.runtime.triton_health import ComponentError, check_triton
from lva_core.runtime.triton_server import LocalTriton, backend_stubs_of
from lva_core.runtime.triton_shm import SHM_DIR, SHM_PREFIX, cleanup_stale_shm
from lva_testkit.paths import MODEL_REPOSITORY as MODELS
from lva_testkit.paths import REPO, TRITON_ENV
from lva_testkit.ports import address_in_use, free_ports, listening_ports
from lva_testkit.triton import local_triton


def new_triton(model_repository: Path = MODELS) -> LocalTriton:
    return local_triton(model_repository, startup_timeout=30)


def children_of(pid: int) -> list[int]:
    return list(procfs.children(pid))


def shm_regions_of(pid: int) -> set[str]:
    """Python-backend regions that a process or its children map."""
    return {str(path) for path in procfs.mapped_under(f"{SHM_DIR}/{SHM_PREFIX}", [pid, *children_of(pid)])}


def existing(paths: list[str]) -> list[str]:
    return [path for path in paths if Path(path).exists()]


@pytest_asyncio.fixture(scope="module")
async def triton() -> AsyncIterator[LocalTriton]:
    server = new_triton()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def client(triton: LocalTriton) -> AsyncIterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    await client.close()


def two_photographs() -> np.ndarray:
    astronaut = data.astronaut()
    # chelsea is 300x451: resized to the astronaut's 512x512 so the two form one batch.
    chelsea = transform.resize(data.chelsea(), astronaut.shape[:2], preserve_range=True, anti_aliasing=True)
    batch = np.stack([astronaut, np.clip(chelsea.round(), 0, 255).astype(np.uint8)])
    assert batch.shape == (2, 512, 512, 3) and batch.dtype == np.uint8
    return batch


async def frame_stats(
    client: grpcclient.InferenceServerClient, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    image_input = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image_input.set_data_from_numpy(images)
    result = await client.infer("frame_stats", [image_input], client_timeout=10)
    return result.as_numpy("MEAN_RGB"), result.as_numpy("COUNT")


async def test_frame_stats_on_photographs(client: grpcclient.InferenceServerClient) -> None:
    images = two_photographs()
    mean_rgb, count = await frame_stats(client, images)
    expected = images.mean(axis=(1, 2), dtype=np.float64)
    assert mean_rgb.dtype == np.float32 and mean_rgb.shape == (2, 3)
    np.testing.assert_allclose(mean_rgb, expected, rtol=0, atol=1e-3)
    # The two photographs differ, so a model that ignored its input could not pass.
    assert np.abs(expected[0] - expected[1]).max() > 5
    assert count.dtype == np.int32 and count.tolist() == [[1], [1]]


async def test_frame_stats_is_exact_where_partial_sums_could_overflow(
    client: grpcclient.InferenceServerClient,
) -> None:
    # The model adds rows in uint16 blocks: a white 720p frame is the largest sum per column, and
    # a frame whose rows run 0..255 puts every value at every block boundary.
    white = np.full((720, 1280, 3), 255, np.uint8)
    ramp = np.broadcast_to((np.arange(720) % 256).astype(np.uint8)[:, None, None], (720, 1280, 3))
    images = np.ascontiguousarray(np.stack([white, ramp]))
    mean_rgb, _count = await frame_stats(client, images)
    np.testing.assert_allclose(mean_rgb, images.mean(axis=(1, 2), dtype=np.float64), rtol=0, atol=1e-3)


async def test_frame_stats_answers_each_request_of_a_dynamic_batch(
    triton: LocalTriton, client: grpcclient.InferenceServerClient
) -> None:
    # Eight concurrent single-image requests are batched into fewer executions; each response
    # must still belong to its own request. Whether a burst batches depends on timing (with no
    # queue delay, requests merge only when they arrive while the model is busy, and on a loaded
    # machine the client may send them one by one): so up to five bursts, and one must batch.
    photo = data.astronaut()
    images = [np.roll(photo, shift * 7, axis=1) // (shift + 1) for shift in range(8)]
    batched = []
    for _burst in range(5):
        before = await client.get_inference_statistics("frame_stats", as_json=True)
        results = await asyncio.gather(*(frame_stats(client, image[np.newaxis]) for image in images))
        for image, (mean_rgb, count) in zip(images, results, strict=True):
            expected = image.mean(axis=(0, 1), dtype=np.float64)
            np.testing.assert_allclose(mean_rgb[0], expected, rtol=0, atol=1e-3)
            assert count.tolist() == [[1]]
        stats_before = before["model_stats"][0]
        # Triton updates its statistics just after it answers: wait until all eight show.
        for _ in range(50):
            after = await client.get_inference_statistics("frame_stats", as_json=True)
            stats_after = after["model_stats"][0]
            inferences = int(stats_after["inference_count"]) - int(stats_before.get("inference_count", 0))
            executions = int(stats_after["execution_count"]) - int(stats_before.get("execution_count", 0))
            if inferences >= 8:
                break
            await asyncio.sleep(0.1)
        assert inferences == 8
        batched.append(executions)
        if executions < inferences:
            break
    assert min(batched) < 8, f"no burst was batched: executions per burst {batched}"


async def test_check_triton_healthy_and_missing_model(triton: LocalTriton) -> None:
    assert await check_triton(triton.grpc_url, ["frame_stats"], 5) == []
    errors = await check_triton(triton.grpc_url, ["frame_stats", "no_such_model"], 5)
    assert [error.component for error in errors] == ["model:no_such_model"]
    assert errors[0].status == "not found"
    assert errors[0].to_dict() == {
        "component": "model:no_such_model",
        "status": "not found",
        "error": errors[0].error,
    }


async def test_stopped_triton_is_reported_and_leaves_nothing_behind() -> None:
    server = new_triton()
    await server.start()
    pid = server.pid
    assert pid is not None
    regions = sorted(shm_regions_of(pid))
    assert regions, "the Python backend stub maps a shared-memory region"
    # A crashed stub and a SIGKILLed server (no grace period) are what leaks regions: neither
    # gets to unlink them, so stop() must.
    for stub in children_of(pid):
        os.kill(stub, signal.SIGKILL)
    await asyncio.sleep(0.3)
    assert existing(regions) == regions, "precondition: the crash left the regions behind"
    await server.stop(timeout=0)
    assert existing([f"/proc/{pid}", *regions]) == []

    timeout = 3.0
    started = time.monotonic()
    errors = await check_triton(server.grpc_url, ["frame_stats"], timeout)
    elapsed = time.monotonic() - started
    # What it guards against is a hang: the bound is the timeout plus slack for a loaded machine.
    assert elapsed < timeout + 4
    assert len(errors) == 1
    assert isinstance(errors[0], ComponentError)
    assert errors[0].component == "triton"
    assert errors[0].status == "unreachable"
    assert server.grpc_url in errors[0].error


async def test_check_triton_does_not_hang_on_a_silent_server() -> None:
    # Listens (so connecting succeeds) but never accepts or answers, like a wedged server.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        errors = await check_triton(url, ["frame_stats"], 1.0)
        elapsed = time.monotonic() - started
    # What it guards against is a hang: the bound is the 1 s timeout plus slack for a loaded machine.
    assert elapsed < 1.0 + 4.0
    assert [(error.component, error.status) for error in errors] == [("triton", "unreachable")]


async def test_stop_reaps_stubs_of_the_server_that_it_no_longer_parents() -> None:
    # A stub the server started after stop()'s last look at its children (a model still loading
    # when Ctrl-C on `make run` reached tritonserver itself) is re-parented when the server
    # exits, and used to stay for good with its shm region. It names its server's pid among its
    # arguments; stop() finds it by them. Which timing leaves one behind is Triton's, so the
    # stand-in here is a process with a stub's arguments that the server never parented.
    server = new_triton()
    await server.start()
    pid = server.pid
    assert pid is not None
    stand_in = await asyncio.create_subprocess_exec(
        "/opt/tritonserver/backends/python/triton_python_backend_stub", "60", "1", "1", "1", str(pid),
        executable="/bin/sleep",  # sleep sums its arguments: it just waits
    )  # fmt: skip
    try:
        assert stand_in.pid in backend_stubs_of(pid)
        await server.stop()
        assert await wait_within(stand_in.wait(), 10) == -signal.SIGKILL
        assert backend_stubs_of(pid) == {}
    finally:
        if stand_in.returncode is None:
            stand_in.kill()
            await stand_in.wait()


async def test_model_that_fails_to_load_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "models" / "broken"
    (model / "1").mkdir(parents=True)
    config = (MODELS / "frame_stats" / "config.pbtxt").read_text()
    (model / "config.pbtxt").write_text(config.replace('name: "frame_stats"', 'name: "broken"'))
    (model / "1" / "model.py").write_text('raise RuntimeError("broken on purpose")\n')
    server = new_triton(tmp_path / "models")
    with pytest.raises(LunaError) as caught:
        await server.start()
    assert caught.value.code == 47101
    # The cause, not just the shutdown that follows it, must reach the message.
    assert "broken on purpose" in caught.value.detail
    assert server.pid is None


def process_gone(pid: int) -> bool:
    # An orphan is re-parented and may stay a zombie until reaped: it has already exited.
    return procfs.gone(pid)


async def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _start_cli(attempts: int = 3) -> tuple[asyncio.subprocess.Process, int]:
    """The launcher CLI, READY on ports of its own: on fresh ones when another process took one.

    Its ports must be named on the command line, so they can be taken between the pick and the
    bind (lva_testkit/ports.py); such a start is tried again, any other failure is the test's.
    """
    for attempt in range(1, attempts + 1):
        grpc_port, http_port, metrics_port = free_ports(3)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lva_core.runtime.triton_server",
            "--env", str(TRITON_ENV), "--repo", str(MODELS),
            "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert cli.stdout is not None and cli.stderr is not None
        line = await wait_within(cli.stdout.readline(), 30)
        if line:
            assert line.decode().strip() == f"READY 127.0.0.1:{grpc_port}"
            # The READY probe is answered by whoever holds the port: this server must hold it.
            if grpc_port in listening_ports(procfs.tree(cli.pid)):
                return cli, grpc_port
            cli.kill()
        errors = (await wait_within(cli.stderr.read(), 15)).decode(errors="replace")
        await cli.wait()
        if attempt == attempts or not (address_in_use(errors) or line):
            raise AssertionError(f"the CLI did not start: {line!r}\n{errors[-3000:]}")
    raise AssertionError("unreachable")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_cli_serves_until_signalled_and_never_orphans_triton(sig: signal.Signals) -> None:
    cli, grpc_port = await _start_cli()
    try:
        assert await check_triton(f"127.0.0.1:{grpc_port}", ["frame_stats"], 5) == []
        [server] = children_of(cli.pid)
        cli.send_signal(sig)
        if sig == signal.SIGTERM:
            assert await wait_within(cli.wait(), 15) == 0
            assert process_gone(server), "a clean stop waits for tritonserver to exit"
        else:
            # The CLI had no chance to clean up: the death signal must take tritonserver down.
            assert await wait_gone(server, 15), "tritonserver outlived its killed parent"
    finally:
        if cli.returncode is None:
            cli.kill()
        await cli.wait()


@pytest.fixture
def fake_regions() -> Iterator[list[Path]]:
    paths = [SHM_DIR / f"{SHM_PREFIX}test_{uuid.uuid4()}" for _ in range(3)]
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


def test_cleanup_stale_shm_spares_mapped_and_fresh_regions(fake_regions: list[Path]) -> None:
    stale, mapped, fresh = fake_regions
    for path in fake_regions:
        path.write_bytes(b"\0" * mmap.PAGESIZE)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(mapped, (old, old))
    with mapped.open("r+b") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE) as region:
        region[0] = 1
        removed = cleanup_stale_shm()
        assert stale in removed
        assert not stale.exists()
        assert mapped.exists(), "a region a live process maps must never be removed"
        assert fresh.exists(), "a region younger than the grace period may belong to a starting server"
    assert cleanup_stale_shm(min_age=0, paths=[mapped, fresh]) == [mapped, fresh]


async def test_missing_environment_is_a_clear_error(tmp_path: Path) -> None:
    server = LocalTriton(env_dir=tmp_path / "no-such-env", model_repository=MODELS)
    with pytest.raises(LunaError) as caught:
        await server.start()
    assert caught.value.code == 47101
    assert "make triton-env" in caught.value.detail
    assert server.pid is None
