"""Where things are in the checkout: the kit runs from it, never from an installed wheel."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The services run under the interpreter that runs the caller: the project's .venv.
PYTHON = sys.executable
TRITON_ENV = REPO / ".venv-triton"
MODEL_REPOSITORY = REPO / "triton_models"
DOCS_HTML = REPO / "docs" / "_build" / "html"
