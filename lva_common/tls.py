"""TLS of the gRPC link between facade and core, from the YAML (``core.tls``, ``facade.core_tls``).

Both sides read PEM files named in the configuration; an empty section means plaintext, the
default for a core that listens on the loopback interface only. A half-filled section (a
certificate without its key, a client CA without a server certificate) is a configuration
error at startup rather than a silent fallback to plaintext.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc


def _read(section: str, settings: Mapping[str, Any], key: str) -> bytes | None:
    name = str(settings.get(key) or "")
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"{section}.{key}: no such file {name}")
    return path.read_bytes()


def server_credentials(tls: Mapping[str, Any]) -> grpc.ServerCredentials | None:
    """The core's credentials (``core.tls``), or None for a plaintext port."""
    cert = _read("core.tls", tls, "cert_file")
    key = _read("core.tls", tls, "key_file")
    client_ca = _read("core.tls", tls, "client_ca_file")
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise ValueError("core.tls needs both cert_file and key_file")
    # With a client CA every client must present a certificate it signed (mutual TLS).
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(tls: Mapping[str, Any]) -> grpc.ChannelCredentials | None:
    """The facade's credentials towards the core (``facade.core_tls``), or None for plaintext."""
    ca = _read("facade.core_tls", tls, "ca_file")
    cert = _read("facade.core_tls", tls, "cert_file")
    key = _read("facade.core_tls", tls, "key_file")
    if ca is None and cert is None and key is None:
        return None
    if ca is None:
        raise ValueError("facade.core_tls needs ca_file, the CA that signed the core's certificate")
    if (cert is None) != (key is None):
        raise ValueError("facade.core_tls needs both cert_file and key_file, or neither")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options(tls: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``server_name`` checks the core's certificate against another name than the address's host."""
    name = str(tls.get("server_name") or "")
    return [("grpc.ssl_target_name_override", name)] if name else []


def peer_credentials(core_tls: Mapping[str, Any], peer_ca_file: str) -> grpc.ChannelCredentials | None:
    """A fleet's agent towards the other agents (relays: api/follow.py): plaintext when its own
    port is; otherwise TLS that checks their certificates against ``fleet.peer_ca_file`` (default:
    ``core.tls.client_ca_file``) and presents its own certificate, for their mutual TLS."""
    cert = _read("core.tls", core_tls, "cert_file")
    key = _read("core.tls", core_tls, "key_file")
    if cert is None or key is None:
        return None
    ca = _read("fleet", {"peer_ca_file": peer_ca_file}, "peer_ca_file") or _read(
        "core.tls", core_tls, "client_ca_file"
    )
    if ca is None:
        raise ValueError(
            "a fleet's cores with core.tls need fleet.peer_ca_file (or core.tls.client_ca_file): "
            "the CA that signed the other cores' certificates, to relay watches and statistics"
        )
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
