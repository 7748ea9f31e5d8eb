"""Effective configuration: defaults, then a YAML file, then ``LVA_*`` environment overrides.

Environment overrides name a path with double underscores: ``LVA_TRITON__URL=host:8001`` sets
``triton.url``. Values are parsed as YAML, so ``LVA_FACADE__PORT=6000`` is an int and
``LVA_TRITON__MODELS='{a: b}'`` a mapping.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

ENV_PREFIX = "LVA_"
CONFIG_ENV = "LVA_CONFIG"
MASK = "***"

DEFAULTS: dict[str, Any] = {
    "core": {
        "host": "127.0.0.1",
        "port": 5241,
        # Prometheus /metrics of the core (0: a free port, written to the log).
        "metrics_port": 5242,
        "log_level": "INFO",
        # text, or json: one JSON object per line.
        "log_format": "text",
        # Seconds the health check may spend on Triton and the models before it reports them down.
        "health_timeout": 5.0,
        # TLS of the gRPC port: cert_file and key_file (PEM) turn it on; client_ca_file also
        # asks every client for a certificate signed by that CA (mutual TLS). Empty: plaintext.
        "tls": {"cert_file": "", "key_file": "", "client_ca_file": ""},
    },
    "facade": {
        "host": "127.0.0.1",
        "port": 5240,
        # One core (host:port); a fleet's cores as a comma-separated list of IP:port, or
        # dns:///<name>:<port> (every address of a name): each call goes to the next that answers.
        "core_address": "127.0.0.1:5241",
        "request_timeout": 30.0,
        "docs_dir": "docs/_build/html",
        "max_body_size": 1048576,
        # Seconds between the WebSocket's server pings (autoping).
        "ws_heartbeat": 20.0,
        # Seconds a WebSocket keeps trying to watch again after its core went away (killed,
        # restarted, drained: another core of a fleet answers), before it reports the error.
        "ws_resume_timeout": 15.0,
        # Bearer token every request must carry (Authorization: Bearer <token>), except
        # /healthcheck, /version, /metrics and /docs. Empty: no authentication. Masked in /1/config.
        "auth_token": "",
        # TLS to the core (core.tls): ca_file verifies the core's certificate; cert_file and
        # key_file are the facade's own, for mutual TLS; server_name overrides the name checked
        # in the core's certificate. Empty ca_file: plaintext.
        "core_tls": {"ca_file": "", "cert_file": "", "key_file": "", "server_name": ""},
    },
    "triton": {
        # local: the core starts tritonserver from the wheel; external: use `url`.
        "mode": "local",
        "url": "127.0.0.1:8001",
        "http_port": 8000,
        "metrics_port": 8002,
        "env_dir": ".venv-triton",
        "model_repository": "triton_models",
        "model_control_mode": "explicit",
        "startup_timeout": 60.0,
        # Deadline of one inference or model-metadata call, in seconds.
        "request_timeout": 5.0,
        # auto: system shared memory when Triton is on this machine, plain gRPC tensors otherwise.
        "shared_memory": "auto",
        "shm_pool_mb": 256,
        # Cross-stream batching in the core, per model (Triton's dynamic batcher works on top).
        "batching": {"max_batch": 8, "max_delay_ms": 0, "queue_size": 64},
        "log_path": "var/triton.log",
        # Analytic -> role -> model name. The health check covers every model named here, and an
        # MLOps engineer points an analytic at another model by changing a name.
        "models": {
            "people_counter": {"detector": "person_detector"},
            "human_tracking": {
                "detector": "face_detector",
                "attributes": "face_attributes",
                "body_detector": "person_detector",
            },
            "line_crossing": {"detector": "person_detector"},
            "pipeline_probe": {"model": "frame_stats"},
        },
    },
    "streams": {
        # Seconds for a source to open, and for one read: a frozen source fails after read_timeout.
        "open_timeout": 5.0,
        "read_timeout": 5.0,
        # Seconds of a network source that FFmpeg reads to learn its format before the first
        # frame. Its own default (up to 5 s, about 0.9 s for an RTSP camera, spent estimating
        # the frame rate) delays every camera's first event; 0 restores it.
        "probe_duration": 0.25,
        # Decoded frames waiting for analysis per stream; live sources drop the oldest.
        "buffer_size": 2,
        # Messages waiting per event subscriber; a slow one loses the oldest.
        "subscriber_queue": 256,
        # Directories local video files may come from (relative ones: to the core's working
        # directory). Symbolic links and .. are resolved first. An empty list refuses every file.
        "allowed_file_dirs": ["var", "media"],
        # Stream creation per account (token bucket): per_second refills, burst is the bucket's
        # size. per_second 0 turns the limit off.
        "create_rate": {"per_second": 20.0, "burst": 100},
        # Where the streams are kept, as a URL: postgresql://user:password@host:5432/database
        # (the fleet's shared store), or sqlite:///relative/path, sqlite:////absolute/path.
        # "" (the default): the SQLite file store_path names.
        "store": "",
        # SQLite file that keeps the streams over restarts (relative: to the working directory).
        # "" or ":memory:": not persisted.
        "store_path": "var/streams.sqlite3",
    },
    # Event images (a crowd's overview.image, a face track's best_shot), kept until their ttl.
    "images": {
        # Directory of the image files (relative: to the working directory); "": no images are
        # kept and events carry null in their place.
        "path": "var/images",
        # Put before /1/images/<id> in the URLs events carry; "": a path on the facade.
        "base_url": "",
        # Seconds between two removals of expired images (expired ones are never served).
        "cleanup_interval": 60.0,
        # Threads that encode images, and the most images waiting or being encoded: one more
        # is dropped (its event carries null), so a burst never holds more frames than this.
        "workers": 1,
        "max_pending_encodes": 16,
    },
    # Decoding: NVDEC where this machine has it (auto), always (cuda), or never (none).
    "decoder": {"hwaccel": "auto"},
    "plugins": {"disabled": []},
    # Outbound events: every analytic's callbacks, through the stream store's outbox.
    "delivery": {
        # Undelivered events one callback of one stream may hold; beyond it the oldest go.
        "max_pending": 10000,
        # Seconds an undelivered event is kept before it is dropped (counted) instead of sent.
        "max_age": 86400.0,
        # Capped exponential backoff between two attempts at one event, seconds.
        "initial_backoff": 0.5,
        "max_backoff": 30.0,
        # Seconds between looks at the outbox for lanes no one here delivers yet (a fleet).
        "scan_interval": 2.0,
        # Events read from the outbox at once per callback.
        "batch": 32,
        # Seconds a stopping core keeps delivering before it leaves the rest for its next start.
        "shutdown_grace": 2.0,
    },
    # The fleet: the agents that share one stream store (streams.store: postgresql://...).
    "fleet": {
        # Stable id of this agent; "": <hostname>:<core port> (the pod name on Kubernetes).
        "agent_id": "",
        # host:port other agents and facades reach this core at; "": core.host (or the
        # hostname when it binds every interface) and the port it bound.
        "endpoint": "",
        # The most streams this agent runs at once.
        "capacity": 32,
        # Free-form labels, shown by GET /1/agents.
        "labels": {},
        # Seconds between lease renewals, the lease's length, and how long before its end on
        # the agent's own clock the agent stops its workers when it cannot renew.
        "renew_interval": 2.0,
        "lease_ttl": 12.0,
        "fence_margin": 2.0,
        # With core.tls: the CA that signed the other cores' certificates, for the relays of
        # watches and statistics between cores; "": core.tls.client_ca_file.
        "peer_ca_file": "",
    },
}

# A key is secret when one of its words is one of these.
# The rule, documented in docs/security.md: a key is secret when one of its words (split at
# punctuation and camelCase) is one of these, or it ends in password, token or secret. Signed URLs
# carry their secret as auth, sig or signature (X-Amz-Signature, ?sig= of Azure SAS).
_SECRET_WORDS = {
    "password", "passwd", "pwd", "pass", "passphrase",
    "token", "secret", "key", "apikey", "credential", "credentials",
    "auth", "authorization", "sig", "signature", "session", "sessionid", "cookie",
}  # fmt: skip
_URL_LIKE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            node[path[-1]] = raw
    return result


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config[name]`` over its defaults: a partial configuration (a unit test's, or one built by
    hand) reads the same defaults as the service, which live in ``DEFAULTS`` alone."""
    return _merge(copy.deepcopy(DEFAULTS[name]), config.get(name) or {})


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The effective configuration. ``path`` falls back to ``$LVA_CONFIG``; a missing file is an error."""
    env = os.environ if environ is None else environ
    config = copy.deepcopy(DEFAULTS)
    file_path = path or env.get(CONFIG_ENV)
    if file_path:
        loaded = yaml.safe_load(Path(file_path).read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"config file {file_path} must hold a YAML mapping")
        _merge(config, loaded)
    return _merge(config, _env_overrides(env))


class ConfigError(ValueError):
    """A setting the service cannot work with: it says so in one line and refuses to start."""


def is_secret_key(key: str) -> bool:
    # Split camelCase before lower-casing, so privateKey and secretKey are caught as well as db_password.
    words = re.split(r"[^a-z0-9]+", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower())
    return any(word in _SECRET_WORDS for word in words) or key.lower().endswith(
        ("password", "token", "secret")
    )


def mask_url(value: str) -> str:
    """Credentials out of a URL: ``rtsp://user:pw@host/x?token=t`` -> ``rtsp://***@host/x?token=***``."""
    if not _URL_LIKE.match(value):
        return value
    parts = urlsplit(value)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    items = (item.partition("=") for item in parts.query.split("&")) if parts.query else ()
    query = "&".join(f"{k}={MASK}" if sep and is_secret_key(k) else f"{k}{sep}{v}" for k, sep, v in items)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_reference(text: str, reference: str) -> str:
    """``text`` with every quotation of ``reference`` masked (FFmpeg and servers quote URLs)."""
    masked = mask_url(reference)
    return text.replace(reference, masked) if reference and masked != reference else text


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy with secret values replaced by ``***`` and credentials removed from URLs."""
    if isinstance(value, Mapping):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return mask_url(value)
    return value
