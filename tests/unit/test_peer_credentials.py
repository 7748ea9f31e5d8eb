"""The credentials a fleet's core uses towards the other cores (relays of watches and statistics)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from lva_common.tls import peer_credentials


def _files(tmp_path: Path, *names: str) -> dict[str, str]:
    paths = {}
    for name in names:
        path = tmp_path / f"{name}.pem"
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        paths[name] = str(path)
    return paths


def test_plaintext_cores_relay_in_plaintext() -> None:
    assert peer_credentials({"cert_file": "", "key_file": "", "client_ca_file": ""}, "") is None


def test_tls_cores_need_the_ca_of_the_others(tmp_path: Path) -> None:
    files = _files(tmp_path, "cert", "key")
    with pytest.raises(ValueError, match=r"fleet\.peer_ca_file"):
        peer_credentials({"cert_file": files["cert"], "key_file": files["key"]}, "")


@pytest.mark.parametrize("where", ["peer_ca_file", "client_ca_file"])
def test_tls_cores_relay_with_their_own_certificate(tmp_path: Path, where: str) -> None:
    files = _files(tmp_path, "cert", "key", "ca")
    tls = {"cert_file": files["cert"], "key_file": files["key"]}
    if where == "client_ca_file":
        tls["client_ca_file"] = files["ca"]
    credentials = peer_credentials(tls, files["ca"] if where == "peer_ca_file" else "")
    assert isinstance(credentials, grpc.ChannelCredentials)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    files = _files(tmp_path, "cert", "key")
    with pytest.raises(ValueError, match="no such file"):
        peer_credentials({"cert_file": files["cert"], "key_file": files["key"]}, str(tmp_path / "nope.pem"))
