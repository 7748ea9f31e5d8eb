"""The kit's ONNX Runtime sessions sleep between runs instead of spinning, in the Triton
environment's own ONNX Runtime (the main environment has none): ``kit.session`` is run there
on the shipped person detector's network, and the session's options are read back."""

from __future__ import annotations

import json
import subprocess

from lva_testkit.paths import MODEL_REPOSITORY, TRITON_ENV

PROBE = """
import json, sys, types
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
sys.path.insert(0, sys.argv[1])
import lva_model_kit as kit
args = {"model_repository": sys.argv[1] + "/person_detector", "model_version": "1",
        "model_instance_kind": "CPU"}
entry = "session.intra_op.allow_spinning"
print(json.dumps({
    "default": kit.session(args, "ssdlite.onnx").get_session_options().get_session_config_entry(entry),
    "spinning": kit.session(args, "ssdlite.onnx", spinning=True)
    .get_session_options()
    .get_session_config_entry(entry),
}))
"""


def test_sessions_do_not_spin_unless_asked() -> None:
    run = subprocess.run(
        [str(TRITON_ENV / "bin" / "python"), "-c", PROBE, str(MODEL_REPOSITORY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"default": "0", "spinning": "1"}
