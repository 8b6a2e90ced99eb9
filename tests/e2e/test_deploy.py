"""Deploy paths (docs/deploy.md): Docker Compose, Kubernetes, Istio, Envoy Gateway.

No Docker engine or cluster runs here, so each file is checked the way its consumer reads it:
- the compose file against the Compose specification's JSON schema, its mounts laid out as in
  the containers and every registry in them through `meshgate validate`, its healthchecks run
  against real processes, the Dockerfile through hadolint and its build outputs checked;
- the Kubernetes manifests against the Kubernetes 1.37 OpenAPI schemas (strict) and the
  Prometheus Operator models, the Envoy bootstrap compared with what `meshgate bootstrap`
  renders, the stats listener loaded into a real Envoy 1.40;
- `meshgate render istio` against Istio's API models and its filter patch loaded into a real
  Envoy 1.40 (`--mode validate`); `meshgate render envoy-gateway` against a schema derived
  from Envoy Gateway's API types.

Fast (no gateway fixture): `make e2e` collects it; `-m deploy` runs only these.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from e2e_support import (
    ENVOY,
    MESHGATE,
    NATIVE,
    REPO,
    WASM,
    Proc,
    api_key,
    free_port,
    is_denied,
    modern_body,
    modern_headers,
    post,
    require_artifacts,
    response_messages,
    wait_tcp,
)

pytestmark = pytest.mark.deploy

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
HTTP_OK = REPO / "deploy" / "docker" / "http-ok"
STATS_LISTENER = REPO / "envoy" / "stats-listener.yaml"
PROMETHEUS = REPO / "examples" / "observability" / "prometheus.yml"
KUBE = REPO / "deploy" / "kubernetes"
KUBE_BOOTSTRAP = KUBE / "envoy-bootstrap.yaml"
MESH_REGISTRY = REPO / "deploy" / "mesh" / "registry.yaml"
KUBERNETES_VERSION = "1.37.0"
# What deploy/kubernetes/envoy-bootstrap.yaml holds: the Envoys' bootstrap.
KUBE_BOOTSTRAP_ARGS = [
    "bootstrap",
    "--xds-address",
    "meshgate.meshgate.svc.cluster.local:18000",
    "--node-id",
    "meshgate-envoy",
    "--admin-port",
    "9901",
]
COMPOSE_ENVOY_ADMIN_PORT = 9901


def meshgate(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MESHGATE), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=cwd
    )


def envoy_validate(bootstrap: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "--disable-hot-restart", "-c", str(bootstrap), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def kube_documents() -> list[tuple[Path, dict[str, Any]]]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUBE / name).read_text()):
            if doc:
                docs.append((KUBE / name, doc))
    return docs


def kube(kind: str, name: str) -> dict[str, Any]:
    for _, doc in kube_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in deploy/kubernetes")


def dockerfile_stages() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), re.M | re.I))


# --- Docker Compose -------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_installs_nothing_at_start_and_builds_every_image_it_runs() -> None:
    stages = dockerfile_stages()
    for name, service in compose()["services"].items():
        text = json.dumps([service.get("command"), service.get("entrypoint")])
        assert not re.search(r"\b(pip|npm|apt-get|apk|cargo)\b", text), f"{name} installs at start: {text}"
        if "build" in service:
            build = service["build"]
            assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in stages, f"{name}: no stage {build['target']!r} in {DOCKERFILE}"
        else:
            # Third-party images only by a pinned tag.
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]) and not service["image"].endswith(":latest")
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_compose_mounts_are_read_only_and_never_nested() -> None:
    for name, service in compose()["services"].items():
        targets = []
        for volume in service.get("volumes", []):
            source, target, mode = volume.split(":")
            assert mode == "ro", f"{name}: {volume} is writable"
            assert (REPO / source).exists(), f"{name}: {source} does not exist"
            targets.append(Path(target))
        for a in targets:
            for b in targets:
                assert a == b or not b.is_relative_to(a), f"{name}: {b} is mounted inside {a}"


def container_view(service: dict[str, Any], root: Path) -> None:
    """Lays out the service's bind mounts under `root` as the container sees them."""
    for volume in service.get("volumes", []):
        source, target, _ = volume.split(":")
        destination = root / target.lstrip("/")
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / source, destination)


def test_every_registry_compose_mounts_validates_as_the_container_sees_it(tmp_path: Path) -> None:
    require_artifacts()
    service = compose()["services"]["meshgate"]
    container_view(service, tmp_path)
    command = service["command"]
    registry = tmp_path / command[command.index("--registry") + 1].lstrip("/")
    registries = sorted(tmp_path.rglob("registry*.yaml"))
    assert registries == [registry], registries
    out = meshgate("validate", "-r", str(registry), env={k: str(v) for k, v in service["environment"].items()})
    assert out.returncode == 0, out.stderr
    assert "ok: 2 servers (crm, docs)" in out.stdout
    # The JWKS copy in the mount is the demo's public key set (the private key is not mounted).
    assert (REPO / "envoy/compose/keys/jwks.json").read_bytes() == (REPO / "examples/keys/jwks.json").read_bytes()
    assert not list(tmp_path.rglob("*.pem"))


def test_the_compose_envoy_runs_the_checked_in_bootstrap_with_the_stats_listener(tmp_path: Path) -> None:
    require_artifacts()
    envoy = compose()["services"]["envoy"]
    container_view(envoy, tmp_path)
    command = " ".join(envoy["command"])
    assert "-c /etc/envoy/xds-bootstrap.yaml" in command and "/etc/envoy/stats-listener.yaml" in command
    # The overlay is baked into the image (deploy/docker/Dockerfile, target envoy).
    assert "COPY envoy/stats-listener.yaml /etc/envoy/stats-listener.yaml" in DOCKERFILE.read_text()
    bootstrap = tmp_path / "etc/envoy/xds-bootstrap.yaml"
    out = envoy_validate(bootstrap, "--config-yaml", STATS_LISTENER.read_text())
    assert out.returncode == 0, out.stdout + out.stderr
    # The command itself, as compose hands it to the entrypoint (`$$` is compose's `$`), with
    # the image's file laid out and `envoy` in validate mode: the quoting delivers the file.
    shutil.copy(STATS_LISTENER, tmp_path / "etc/envoy/stats-listener.yaml")
    [script] = envoy["command"]
    script = script.replace("$$", "$").replace("/etc/envoy/", f"{tmp_path}/etc/envoy/")
    script = script.replace("exec envoy ", f"exec {ENVOY} --mode validate ").replace("-l warn", "-l info")
    out = subprocess.run([*envoy["entrypoint"], script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loading 1 listener(s)" in out.stdout + out.stderr


def listening_ports(name: str, service: dict[str, Any]) -> set[int]:
    """Ports a compose service listens on beyond its own loopback."""
    ports: set[int] = set()
    args = [str(a) for a in service.get("command", [])]
    for flag in ("--admin-listen", "--xds-listen"):
        if flag in args:
            address, port = args[args.index(flag) + 1].rsplit(":", 1)
            if address not in ("127.0.0.1", "localhost", "[::1]"):
                ports.add(int(port))
    if "stats-listener.yaml" in " ".join(args):
        overlay = yaml.safe_load(STATS_LISTENER.read_text())
        for listener in overlay["static_resources"]["listeners"]:
            address = listener["address"]["socket_address"]
            assert address["address"] == "0.0.0.0"
            ports.add(address["port_value"])
    return ports


def test_the_shipped_prometheus_config_scrapes_what_compose_exposes() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    assert "./examples/observability:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["meshgate"]["metrics_path"] == "/stats/prometheus"
    assert jobs["meshgate-control-plane"]["metrics_path"] == "/metrics"
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            host, port = target.rsplit(":", 1)
            assert host in services, f"{target}: no compose service {host}"
            assert int(port) in listening_ports(host, services[host]), f"{target}: {host} does not listen there"
    # The stats listener proxies to the admin port the compose bootstrap gives Envoy.
    overlay = yaml.safe_load(STATS_LISTENER.read_text())
    admin = overlay["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    bootstrap = yaml.safe_load((REPO / "envoy/xds-bootstrap.yaml").read_text())
    assert admin["endpoint"]["address"]["socket_address"]["port_value"] == COMPOSE_ENVOY_ADMIN_PORT
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_grafana_loads_the_shipped_dashboard_from_the_compose_prometheus() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = REPO / next(source for source, target in mounts.items() if target == "/etc/grafana/provisioning")
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"]
    host, port = urllib.parse.urlsplit(datasource["url"]).netloc.split(":")
    assert host in services and services[host]["ports"] == [f"127.0.0.1:{port}:{port}"]
    [provider] = yaml.safe_load((provisioning / "dashboards/meshgate.yaml").read_text())["providers"]
    dashboards = REPO / next(source for source, target in mounts.items() if target == provider["options"]["path"])
    dashboard = json.loads((dashboards / "grafana-dashboard.json").read_text())
    # Any Prometheus data source: the dashboard picks it through its variable.
    assert dashboard["templating"]["list"][0] == {
        "name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"
    }
    # Every series it charts is one of Meshgate's, which the `meshgate` job keeps.
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs and all("meshgate_" in expr for expr in exprs), exprs


def test_dockerfile_passes_hadolint_and_copies_what_the_build_produces() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = DOCKERFILE.read_text()
    # The build stage runs `make build`'s cargo commands; what it copies out is what they make.
    local = {
        "/src/target/release/meshgate": MESHGATE,
        "/src/target/release/libmeshgate.so": NATIVE,
        "/src/target/wasm32-wasip1/release/meshgate_wasm.wasm": WASM,
    }
    copied = set(re.findall(r"^COPY --from=build (\S+) ", text, re.M))
    assert copied == set(local), copied
    for path in local.values():
        assert path.exists(), f"{path}: run `make build`"
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        if source != ".":
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    packages = set(re.findall(r"-p (\S+)", text))
    metadata = json.loads(
        subprocess.run(
            # --locked: the image build's `cargo build --locked` needs Cargo.lock current.
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline", "--locked"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=True,
        ).stdout
    )
    assert packages <= {p["name"] for p in metadata["packages"]}, packages
    # The module runs in the Envoy image: it must not need a newer glibc than Envoy's images
    # ship (Ubuntu 22.04: 2.35).
    objdump = shutil.which("objdump")
    if objdump:
        symbols = subprocess.run([objdump, "-T", str(NATIVE)], capture_output=True, text=True, check=True).stdout
        versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", symbols)}
        assert max(versions) <= (2, 35), max(versions)


def test_http_ok_healthcheck_against_a_real_meshgate(tmp_path: Path) -> None:
    require_artifacts()
    admin = free_port()
    proc = Proc.start(
        "meshgate",
        [
            str(MESHGATE),
            "serve",
            "--registry",
            str(REPO / "envoy/compose/registry.yaml"),
            "--xds-listen",
            "127.0.0.1:0",
            "--admin-listen",
            f"127.0.0.1:{admin}",
        ],
        tmp_path / "meshgate.log",
        env={"DEMO_DOCS_UPSTREAM_TOKEN": "demo-docs-upstream-token"},
    )
    try:
        assert wait_tcp("127.0.0.1", admin, 15), proc.tail()

        def http_ok(port: int, path: str) -> int:
            return subprocess.run([str(HTTP_OK), str(port), path], capture_output=True, timeout=10).returncode

        assert http_ok(admin, "/readyz") == 0
        assert http_ok(admin, "/healthz") == 0
        assert http_ok(admin, "/no-such-path") == 1
        proc.stop()
        assert http_ok(admin, "/readyz") == 1
    finally:
        proc.stop()


# --- Kubernetes ------------------------------------------------------------------------------


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    checked = 0
    for path, doc in kube_documents():
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            model = getattr(monitoring, doc["kind"]).model_validate(doc)
            # The models ignore unknown fields; a round trip that loses one is a typo.
            assert model.model_dump(by_alias=True, exclude_none=True) == doc, path
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    kinds = {doc["kind"] for _, doc in kube_documents()}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
        "ServiceMonitor",
    } <= kinds
    assert checked >= 15


def test_kubernetes_wiring_is_consistent() -> None:
    docs = [doc for _, doc in kube_documents()]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        assert doc["metadata"].get("namespace", "meshgate") == "meshgate" or doc["kind"] == "Namespace"
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind["Deployment"]
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                config = by_kind["ConfigMap"][volume["configMap"]["name"]]
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in config["data"], (name, item)
        for container in pod["containers"] + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] in by_kind["Secret"]
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in by_kind["ConfigMap"][ref["name"]]["data"]
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    handler = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                    assert handler["port"] in port_names, (name, probe)
    for name, service in by_kind["Service"].items():
        matching = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, name
        ports = {p["name"] for c in matching[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    for name, monitor in by_kind["ServiceMonitor"].items():
        services = [
            s
            for s in by_kind["Service"].values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1, name
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for name, policy in by_kind[kind].items():
            selector = policy["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
            assert any(
                selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()
            ), (kind, name)
    assert deployments["meshgate"]["spec"]["replicas"] == 2
    # The namespace enforces the `restricted` Pod Security Standard: every pod must meet it.
    assert by_kind["Namespace"]["meshgate"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert "limits" in container.get("resources", {}) or container in pod.get("initContainers", []), name


def test_meshgate_probes_hit_the_admin_api_paths_that_exist() -> None:
    container = kube("Deployment", "meshgate")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    admin_port = int(args[args.index("--admin-listen") + 1].rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["admin"] == admin_port
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"/healthz", "/readyz"}
    source = (REPO / "xds-server/src/admin_api.rs").read_text()
    for path in paths:
        assert f'.route("{path}"' in source


def test_the_kubernetes_registry_and_keys_validate_as_mounted(tmp_path: Path) -> None:
    require_artifacts()
    deployment = kube("Deployment", "meshgate")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume in pod["volumes"]:
        config = kube("ConfigMap", volume["configMap"]["name"])
        for item in volume["configMap"]["items"]:
            target = tmp_path / mounts[volume["name"]].lstrip("/") / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(config["data"][item["key"]])
    env = {}
    for source in container["envFrom"]:
        env.update(kube("Secret", source["secretRef"]["name"])["stringData"])
    args = container["args"]
    registry = tmp_path / args[args.index("--registry") + 1].lstrip("/")
    out = meshgate("validate", "-r", str(registry), env=env)
    assert out.returncode == 0, out.stderr
    assert "ok: 2 servers (crm, docs)" in out.stdout


def render_kube_bootstrap() -> str:
    out = meshgate(*KUBE_BOOTSTRAP_ARGS)
    assert out.returncode == 0, out.stderr
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "meshgate-envoy-bootstrap",
            "namespace": "meshgate",
            "labels": {"app.kubernetes.io/part-of": "meshgate"},
        },
        "data": {"bootstrap.yaml": out.stdout, "stats-listener.yaml": STATS_LISTENER.read_text()},
    }
    header = (
        f"# Generated: bootstrap.yaml is `meshgate {' '.join(KUBE_BOOTSTRAP_ARGS)}`,\n"
        "# stats-listener.yaml is envoy/stats-listener.yaml. Do not edit: regenerate with\n"
        "#   MESHGATE_BLESS=1 .venv/bin/python -m pytest tests/e2e/test_deploy.py -k bootstrap\n"
    )
    class Literal(yaml.SafeDumper):
        """Multi-line strings as `|` blocks: the files stay readable in the ConfigMap."""

    Literal.add_representer(
        str,
        lambda dumper, value: dumper.represent_scalar(
            "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
        ),
    )
    return header + yaml.dump(config_map, Dumper=Literal, sort_keys=False, width=1000)


def test_the_kubernetes_envoy_bootstrap_is_what_meshgate_bootstrap_renders(tmp_path: Path) -> None:
    require_artifacts()
    generated = render_kube_bootstrap()
    if os.environ.get("MESHGATE_BLESS"):
        KUBE_BOOTSTRAP.write_text(generated)
    assert KUBE_BOOTSTRAP.read_text() == generated, (
        f"{KUBE_BOOTSTRAP} is out of date: MESHGATE_BLESS=1 .venv/bin/python -m pytest {__file__} -k bootstrap"
    )
    data = kube("ConfigMap", "meshgate-envoy-bootstrap")["data"]
    # The Envoy Deployment's command line, with the ConfigMap's files, is valid for Envoy 1.40.
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text(data["bootstrap.yaml"])
    out = envoy_validate(bootstrap, "--config-yaml", data["stats-listener.yaml"], "--service-node", "meshgate-envoy-0")
    assert out.returncode == 0, out.stdout + out.stderr
    container = kube("Deployment", "meshgate-envoy")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("-c") + 1] == "/etc/envoy/bootstrap.yaml"
    assert args[args.index("--config-yaml") + 1] == "$(MESHGATE_STATS_LISTENER)"
    # The drain hook talks to the admin port the bootstrap gives Envoy.
    admin = yaml.safe_load(data["bootstrap.yaml"])["admin"]["address"]["socket_address"]
    assert admin == {"address": "127.0.0.1", "port_value": 9901}
    assert "/dev/tcp/127.0.0.1/9901" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    # The module the init container copies is where the Envoy container's search path points.
    pod = kube("Deployment", "meshgate-envoy")["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"][1] == "/usr/local/lib/meshgate/libmeshgate.so"
    assert "COPY --from=build /src/target/release/libmeshgate.so /usr/local/lib/meshgate/libmeshgate.so" in (
        DOCKERFILE.read_text()
    )
    search = {e["name"]: e.get("value") for e in container["env"]}["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"]
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}[search] == init["volumeMounts"][0]["name"]


def http_get(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_stats_listener_exposes_metrics_and_readiness_and_nothing_else_of_admin(tmp_path: Path) -> None:
    """A real Envoy 1.40 with a meshgate bootstrap and the stats listener, as in the pods."""
    require_artifacts()
    admin, stats, listener = free_port(), free_port(), free_port()
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"listener: {{ address: 127.0.0.1, port: {listener} }}\nadmin: {{ port: {admin} }}\n"
        "servers:\n  - { name: crm, url: 'http://127.0.0.1:1/mcp' }\n"
    )
    out = meshgate("bootstrap", "--static", "-r", str(registry), "--native-module", str(NATIVE))
    assert out.returncode == 0, out.stderr
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text(out.stdout)
    overlay = STATS_LISTENER.read_text().replace("port_value: 15090", f"port_value: {stats}")
    overlay = overlay.replace("port_value: 9901", f"port_value: {admin}")
    proc = Proc.start(
        "envoy",
        [
            str(ENVOY),
            "--disable-hot-restart",
            "-c",
            str(bootstrap),
            "--config-yaml",
            overlay,
            "--service-node",
            "meshgate-envoy-7",
            "--base-id",
            str(stats),
        ],
        tmp_path / "envoy.log",
    )
    try:
        assert wait_tcp("127.0.0.1", stats, 30), proc.tail()
        status, body = http_get(f"http://127.0.0.1:{stats}/ready")
        assert (status, body.strip()) == (200, "LIVE")
        status, body = http_get(f"http://127.0.0.1:{stats}/stats/prometheus?filter=server")
        assert status == 200 and "envoy_server_live" in body
        # --service-node names this Envoy (meshgate's /status shows it by pod name).
        status, body = http_get(f"http://127.0.0.1:{admin}/server_info")
        assert json.loads(body)["node"]["id"] == "meshgate-envoy-7"
        for path in ("/config_dump", "/quitquitquit", "/clusters", "/stats"):
            assert http_get(f"http://127.0.0.1:{stats}{path}")[0] == 404, path
        assert http_get(f"http://127.0.0.1:{stats}/ready", method="POST")[0] == 404
        assert proc.popen.poll() is None
    finally:
        proc.stop()


# --- Istio -----------------------------------------------------------------------------------


def render(*args: str) -> list[dict[str, Any]]:
    out = meshgate("render", *args)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


ISTIO_ARGS = [
    "istio",
    "-r",
    str(MESH_REGISTRY),
    "--wasm-url",
    "http://meshgate.meshgate.svc.cluster.local:18001/wasm/meshgate.wasm",
    "--tls-credential",
    "meshgate-tls",
    "--service-namespace",
    "meshgate",
]


def test_render_istio_matches_istios_api() -> None:
    require_artifacts()
    from cloudcoil.models.istio.networking import v1, v1alpha3

    docs = render(*ISTIO_ARGS)
    assert [d["kind"] for d in docs] == ["Gateway", "VirtualService", "EnvoyFilter"]
    for doc in docs:
        module = v1alpha3 if doc["apiVersion"].endswith("v1alpha3") else v1
        model = getattr(module, doc["kind"]).model_validate(doc)
        # The models ignore unknown fields; a round trip that loses one is a typo.
        assert model.model_dump(by_alias=True, exclude_none=True) == doc, doc["kind"]
    patches = docs[2]["spec"]["configPatches"]
    filter_patch = next(p for p in patches if p["applyTo"] == "HTTP_FILTER")
    config = filter_patch["patch"]["value"]["typed_config"]["config"]
    assert config["allow_on_headers_stop_iteration"] is True
    assert config["failure_policy"] != "FAIL_OPEN"
    assert config["vm_config"]["code"]["remote"]["sha256"] == hashlib.sha256(WASM.read_bytes()).hexdigest()


def test_render_istio_refuses_what_it_cannot_render_and_warns_on_plaintext() -> None:
    require_artifacts()
    out = meshgate("render", *ISTIO_ARGS[:-4])
    assert out.returncode != 0 and "--tls-credential" in out.stderr
    out = meshgate("render", *ISTIO_ARGS[:-4], "--plaintext")
    assert out.returncode == 0 and "warning: --plaintext" in out.stderr
    out = meshgate("render", "istio", "-r", str(REPO / "envoy/compose/registry.yaml"), "--wasm-url", "http://m:1/w",
                   "--plaintext", env={"DEMO_DOCS_UPSTREAM_TOKEN": "x"})
    assert out.returncode == 1 and "servers[docs] sets credentials" in out.stderr, out.stderr
    out = meshgate("render", "istio", "-r", str(MESH_REGISTRY), "--wasm-url", "ftp://m/w", "--plaintext")
    assert out.returncode == 1 and "--wasm-url" in out.stderr


def istio_patches_as_envoy_bootstrap(docs: list[dict[str, Any]], admin: int) -> dict[str, Any]:
    """What istiod would build for the gateway: its listener, with the EnvoyFilter's patches
    applied, and the VirtualService's routes (cluster names as Istio spells them)."""
    envoy_filter = next(d for d in docs if d["kind"] == "EnvoyFilter")
    virtual_service = next(d for d in docs if d["kind"] == "VirtualService")
    patches = {p["applyTo"]: p for p in envoy_filter["spec"]["configPatches"]}
    port = patches["HTTP_FILTER"]["match"]["listener"]["portNumber"]
    clusters = [patches["CLUSTER"]["patch"]["value"]]
    routes = []
    for route in virtual_service["spec"]["http"]:
        destination = route["route"][0]["destination"]
        name = f"outbound|{destination['port']['number']}||{destination['host']}"
        clusters.append({"name": name, "type": "STRICT_DNS", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": destination["host"], "port_value": destination["port"]["number"]}}}}]}]}})
        routes.append({
            "match": {"path": route["match"][0]["uri"]["exact"]},
            "route": {"cluster": name, "prefix_rewrite": route["rewrite"]["uri"],
                      "host_rewrite_literal": route["rewrite"]["authority"], "timeout": route["timeout"]},
        })
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound_0.0.0.0_8443",
        "route_config": {"virtual_hosts": [{"name": "mcp", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            patches["HTTP_FILTER"]["patch"]["value"],
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    merge = copy.deepcopy(patches["NETWORK_FILTER"]["patch"]["value"]["typed_config"])
    assert merge.pop("@type") == hcm["@type"]
    hcm.update(merge)
    listener = {
        "name": f"0.0.0.0_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
        **patches["LISTENER"]["patch"]["value"],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def test_render_istio_filter_patch_loads_into_envoy_1_40(tmp_path: Path) -> None:
    require_artifacts()
    bootstrap = tmp_path / "istio-gateway.json"
    bootstrap.write_text(json.dumps(istio_patches_as_envoy_bootstrap(render(*ISTIO_ARGS), free_port())))
    out = envoy_validate(bootstrap)
    assert out.returncode == 0, out.stdout + out.stderr


# --- Envoy Gateway ---------------------------------------------------------------------------

# Derived from Envoy Gateway's API types (api/v1alpha1: envoyextensionypolicy_types.go,
# dynamic_module_types.go; envoyproxy_types.go for the provider) and Gateway API v1: the
# fields this command writes, strictly (additionalProperties: false) with their enums and
# patterns. Not the full CRDs: what a typo or a shape change here would break.
NAME = {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", "maxLength": 253}
TARGET_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["group", "kind", "name"],
    "properties": {"group": {"const": "gateway.networking.k8s.io"},
                   "kind": {"enum": ["Gateway", "HTTPRoute", "GRPCRoute", "ListenerSet"]}, "name": NAME},
}


def strict(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


METADATA = strict({"name": NAME, "namespace": NAME, "labels": {"type": "object"}}, ["name", "namespace"])
EG_SCHEMAS = {
    "EnvoyExtensionPolicy": strict({
        "apiVersion": {"const": "gateway.envoyproxy.io/v1alpha1"}, "kind": {"const": "EnvoyExtensionPolicy"},
        "metadata": METADATA,
        "spec": strict({
            "targetRefs": {"type": "array", "items": TARGET_REF, "minItems": 1},
            "dynamicModule": {"type": "array", "maxItems": 16, "items": strict({
                "name": NAME, "filterName": {"type": "string", "maxLength": 253},
                "config": {"type": "object"}, "terminalFilter": {"type": "boolean"},
            }, ["name"])},
        }, ["targetRefs", "dynamicModule"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "EnvoyProxy": strict({
        "apiVersion": {"const": "gateway.envoyproxy.io/v1alpha1"}, "kind": {"const": "EnvoyProxy"},
        "metadata": METADATA,
        "spec": strict({
            "dynamicModules": {"type": "array", "items": strict({
                "name": NAME,
                "source": strict({"type": {"enum": ["Local", "Remote"]},
                                  "local": strict({"path": {"type": "string", "minLength": 1, "pattern": "^/"}}, ["path"])},
                                 ["type", "local"]),
                "doNotClose": {"type": "boolean"}, "loadGlobally": {"type": "boolean"},
            }, ["name", "source"])},
            "provider": strict({"type": {"const": "Kubernetes"}, "kubernetes": strict({"envoyDeployment": strict({
                "container": strict({"image": {"type": "string"}, "volumeMounts": {"type": "array"},
                                     "env": {"type": "array"}}, ["image"]),
                "initContainers": {"type": "array"},
                "pod": strict({"volumes": {"type": "array"}}, []),
            }, [])}, [])}, ["type"]),
        }, ["dynamicModules", "provider"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "ClientTrafficPolicy": strict({
        "apiVersion": {"const": "gateway.envoyproxy.io/v1alpha1"}, "kind": {"const": "ClientTrafficPolicy"},
        "metadata": METADATA,
        "spec": strict({"targetRefs": {"type": "array", "items": TARGET_REF},
                        "connection": strict({"bufferLimit": {"type": "string", "pattern": "^[0-9]+$"}}, [])},
                       ["targetRefs"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "Gateway": strict({
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"}, "kind": {"const": "Gateway"}, "metadata": METADATA,
        "spec": strict({
            "gatewayClassName": NAME,
            "infrastructure": strict({"parametersRef": strict({
                "group": {"const": "gateway.envoyproxy.io"}, "kind": {"const": "EnvoyProxy"}, "name": NAME},
                ["group", "kind", "name"])}, []),
            "listeners": {"type": "array", "minItems": 1, "items": strict({
                "name": NAME, "protocol": {"enum": ["HTTP", "HTTPS"]},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": strict({"mode": {"enum": ["Terminate"]}, "certificateRefs": {"type": "array", "items": strict(
                    {"kind": {"const": "Secret"}, "name": NAME}, ["name"])}}, ["mode", "certificateRefs"]),
                "allowedRoutes": {"type": "object"},
            }, ["name", "protocol", "port"])},
        }, ["gatewayClassName", "listeners"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "HTTPRoute": strict({
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"}, "kind": {"const": "HTTPRoute"}, "metadata": METADATA,
        "spec": strict({
            "parentRefs": {"type": "array", "items": strict({"name": NAME}, ["name"])},
            "rules": {"type": "array", "maxItems": 16, "items": strict({
                "matches": {"type": "array", "items": strict({"path": strict({
                    "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                    "value": {"type": "string", "pattern": "^/"}}, ["type", "value"])}, ["path"])},
                "filters": {"type": "array", "items": strict({
                    "type": {"const": "URLRewrite"},
                    "urlRewrite": strict({
                        "hostname": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                        "path": strict({"type": {"const": "ReplaceFullPath"}, "replaceFullPath": {"type": "string"}},
                                       ["type", "replaceFullPath"])}, [])}, ["type", "urlRewrite"])},
                "backendRefs": {"type": "array", "items": strict({
                    "name": NAME, "namespace": NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
                    ["name", "port"])},
                "timeouts": strict({"request": {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}}, []),
            }, ["matches", "backendRefs"])},
        }, ["parentRefs", "rules"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


def test_render_envoy_gateway_matches_the_api_shape() -> None:
    require_artifacts()
    docs = render("envoy-gateway", "-r", str(MESH_REGISTRY), "--namespace", "meshgate", "--service-namespace",
                  "meshgate", "--tls-secret", "meshgate-tls")
    kinds = [d["kind"] for d in docs]
    assert kinds == ["EnvoyProxy", "Gateway", "HTTPRoute", "ClientTrafficPolicy", "EnvoyExtensionPolicy"]
    for doc in docs:
        jsonschema.validate(doc, EG_SCHEMAS[doc["kind"]])
    proxy, gateway, route, _, policy = docs
    # The policy names a module the EnvoyProxy allow-lists, and the module is where the init
    # container copies it.
    allowed = {m["name"]: m for m in proxy["spec"]["dynamicModules"]}
    module = policy["spec"]["dynamicModule"][0]
    assert module["name"] in allowed
    deployment = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]
    mount = deployment["container"]["volumeMounts"][0]
    assert allowed[module["name"]]["source"]["local"]["path"] == f"{mount['mountPath']}/libmeshgate.so"
    assert deployment["initContainers"][0]["command"][1] == "/usr/local/lib/meshgate/libmeshgate.so"
    assert policy["spec"]["targetRefs"][0] == {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                              "name": route["metadata"]["name"]}
    assert gateway["spec"]["infrastructure"]["parametersRef"]["name"] == proxy["metadata"]["name"]
    for container in deployment["initContainers"]:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
             "spec": {"containers": [container], "volumes": deployment["pod"]["volumes"]}},
            KUBERNETES_VERSION, strict=True)
    # The filter configuration `meshgate serve` would send, as Envoy Gateway passes it on.
    out = meshgate("validate", "-r", str(MESH_REGISTRY))
    assert out.returncode == 0, out.stderr
    assert set(module["config"]["servers"]) == {"crm", "docs"}


def test_the_mesh_registry_validates() -> None:
    require_artifacts()
    out = meshgate("validate", "-r", str(MESH_REGISTRY))
    assert out.returncode == 0, out.stderr


# --- Istio, run: the rendered patches in a real Envoy 1.40 -------------------------------------


class ModuleServer:
    """Serves one file over HTTP, as meshgate's admin API serves /wasm/meshgate.wasm."""

    def __init__(self, body: bytes) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("content-type", "application/wasm")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_istio_like_gateway(tmp_path: Path, wasm_url: str, upstreams: dict[str, Any]) -> tuple[Proc, int]:
    """An Envoy built as istiod builds the gateway from `meshgate render istio`'s output, its
    Service clusters pointed at the local example servers."""
    target_port, admin = free_port(), free_port()
    docs = render("istio", "-r", str(MESH_REGISTRY), "--wasm-url", wasm_url, "--wasm", str(WASM), "--plaintext",
                  "--service-namespace", "meshgate", "--target-port", str(target_port))
    bootstrap = istio_patches_as_envoy_bootstrap(docs, admin)
    local = {name: urllib.parse.urlsplit(upstream.url).port for name, upstream in upstreams.items()}
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"].startswith("outbound|"):
            server = cluster["name"].split("|")[3].split(".")[0]
            address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            address["socket_address"] = {"address": "127.0.0.1", "port_value": local[server]}
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        # The example servers bind loopback, where the SDK accepts only a loopback Host.
        server = route["match"]["path"].rsplit("/", 1)[1]
        route["route"]["host_rewrite_literal"] = f"127.0.0.1:{local[server]}"
    path = tmp_path / "istio-gateway.json"
    path.write_text(json.dumps(bootstrap))
    proc = Proc.start("envoy", [str(ENVOY), "--disable-hot-restart", "-c", str(path), "--base-id", str(admin)],
                      tmp_path / "envoy.log")
    return proc, target_port


def assert_docs_are_governed(url: str, upstreams: dict[str, Any]) -> None:
    """The mesh registry's policy on `docs` through a rendered gateway: no credentials → 401
    and nothing forwarded; a reader's `tools/list` filtered; a denied tool never forwarded."""
    mark = upstreams["docs"].log.mark()
    anonymous = post(url, modern_body("tools/list", {}), None, modern_headers("tools/list"))
    assert anonymous.status_code == 401, anonymous.text
    assert upstreams["docs"].log.posts_since(mark) == []
    reader = api_key("demo-reader-key")
    listed = post(url, modern_body("tools/list", {}), reader, modern_headers("tools/list"))
    assert listed.status_code == 200, listed.text
    tools = {t["name"] for t in response_messages(listed)[0]["result"]["tools"]}
    assert tools == {"search_docs", "get_doc"}, tools
    denied = post(url, modern_body("tools/call", {"name": "admin_reindex", "arguments": {}}), reader,
                  modern_headers("tools/call", "admin_reindex"))
    assert is_denied(denied), denied.text
    assert not upstreams["docs"].log.calls(mark, "tools/call", "admin_reindex")


def test_the_istio_patches_govern_calls_with_the_module_fetched_and_pinned(
    tmp_path: Path, upstreams: dict[str, Any]
) -> None:
    require_artifacts()
    module = ModuleServer(WASM.read_bytes())
    proc, port = start_istio_like_gateway(tmp_path, f"http://127.0.0.1:{module.port}/meshgate.wasm", upstreams)
    try:
        assert wait_tcp("127.0.0.1", port, 60), proc.tail()
        assert_docs_are_governed(f"http://127.0.0.1:{port}/mcp/docs", upstreams)
    finally:
        proc.stop()
        module.close()


def test_the_istio_patches_fail_closed_when_the_module_cannot_be_fetched(
    tmp_path: Path, upstreams: dict[str, Any]
) -> None:
    """No module (nothing listens at --wasm-url): the gateway must refuse, never pass calls ungoverned."""
    require_artifacts()
    closed = free_port()
    proc, port = start_istio_like_gateway(tmp_path, f"http://127.0.0.1:{closed}/meshgate.wasm", upstreams)
    try:
        mark = upstreams["docs"].log.mark()
        body = modern_body("tools/call", {"name": "search_docs", "arguments": {"query": "x"}})
        headers = modern_headers("tools/call", "search_docs")
        # While Envoy fetches (5 retries) the listener warms and refuses connections; once
        # the fetch has failed, every request gets a 503: never the upstream.
        deadline = time.monotonic() + 40
        statuses: list[int] = []
        while time.monotonic() < deadline and statuses[-3:] != [503, 503, 503]:
            try:
                response = post(f"http://127.0.0.1:{port}/mcp/docs", body, {"x-api-key": "demo-reader-key"}, headers,
                                timeout=5)
                statuses.append(response.status_code)
            except Exception:  # noqa: BLE001 - a listener still warming refuses the connection
                statuses.append(0)
            time.sleep(0.5)
        assert statuses[-3:] == [503, 503, 503] and set(statuses) <= {0, 503}, statuses
        assert upstreams["docs"].log.posts_since(mark) == [], "a call reached the upstream without the filter"
    finally:
        proc.stop()


# --- Envoy Gateway, run: the rendered policy as Envoy Gateway translates it ---------------------


def proto_duration(gateway_api: str) -> str:
    """A Gateway API duration (`1h2m3s500ms`) as Envoy's proto JSON (`3723.500s`)."""
    units = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
    parts = re.findall(r"([0-9]+)(ms|h|m|s)", gateway_api)
    assert "".join(n + u for n, u in parts) == gateway_api, gateway_api
    millis = sum(int(n) * units[u] for n, u in parts)
    return f"{millis // 1000}.{millis % 1000:03d}s"


def envoy_gateway_as_envoy_bootstrap(docs: list[dict[str, Any]], port: int, admin: int, module: Path,
                                     upstreams: dict[str, Any]) -> dict[str, Any]:
    """The listener Envoy Gateway builds from `meshgate render envoy-gateway`'s output: every
    dynamic module filter on the HCM, disabled, enabled per route of the targeted HTTPRoute;
    `config` handed over as the JSON text of a StringValue; the module from the EnvoyProxy's
    allow-list (its path replaced by the local build)."""
    by_kind = {d["kind"]: d for d in docs}
    allowed = {m["name"]: m for m in by_kind["EnvoyProxy"]["spec"]["dynamicModules"]}
    filters, enable = [], {}
    for dm in by_kind["EnvoyExtensionPolicy"]["spec"]["dynamicModule"]:
        entry = allowed[dm["name"]]
        name = f"envoy.filters.http.dynamic_modules/{dm['name']}"
        filters.append({"name": name, "disabled": True, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": dm["name"], "do_not_close": entry["doNotClose"],
                                      "module": {"local": {"filename": str(module)}}},
            "filter_name": dm["filterName"],
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": json.dumps(dm["config"])},
        }})
        enable[name] = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
    assert by_kind["EnvoyExtensionPolicy"]["spec"]["targetRefs"][0]["name"] == by_kind["HTTPRoute"]["metadata"]["name"]
    routes, clusters = [], []
    for rule in by_kind["HTTPRoute"]["spec"]["rules"]:
        backend = rule["backendRefs"][0]
        local = urllib.parse.urlsplit(upstreams[backend["name"]].url).port
        name = f"httproute/{backend['name']}"
        clusters.append({"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": local}}}}]}]}})
        routes.append({
            "match": {"path": rule["matches"][0]["path"]["value"]},
            "route": {"cluster": name, "prefix_rewrite": rule["filters"][0]["urlRewrite"]["path"]["replaceFullPath"],
                      # The example servers bind loopback, where the SDK accepts only a loopback Host.
                      "host_rewrite_literal": f"127.0.0.1:{local}",
                      "timeout": proto_duration(rule["timeouts"]["request"])},
            "typed_per_filter_config": enable,
        })
    buffer = int(by_kind["ClientTrafficPolicy"]["spec"]["connection"]["bufferLimit"])
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http-443",
        "route_config": {"virtual_hosts": [{"name": "mcp", "domains": ["*"], "routes": routes}]},
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "mcp",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "per_connection_buffer_limit_bytes": buffer,
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
    }


def test_the_envoy_gateway_policy_governs_calls_with_the_native_module(
    tmp_path: Path, upstreams: dict[str, Any]
) -> None:
    require_artifacts()
    docs = render("envoy-gateway", "-r", str(MESH_REGISTRY), "--namespace", "meshgate", "--service-namespace",
                  "meshgate", "--tls-secret", "meshgate-tls")
    port, admin = free_port(), free_port()
    path = tmp_path / "eg.json"
    path.write_text(json.dumps(envoy_gateway_as_envoy_bootstrap(docs, port, admin, NATIVE, upstreams)))
    proc = Proc.start("envoy", [str(ENVOY), "--disable-hot-restart", "-c", str(path), "--base-id", str(admin)],
                      tmp_path / "envoy.log")
    try:
        assert wait_tcp("127.0.0.1", port, 30), proc.tail()
        assert_docs_are_governed(f"http://127.0.0.1:{port}/mcp/docs", upstreams)
    finally:
        proc.stop()


def test_the_compose_example_servers_start_from_their_image_layout(tmp_path: Path) -> None:
    """The `examples` image's layout (WORKDIR /app, /app/servers, the SDK preinstalled), the
    compose command and healthcheck, run with this venv's Python (the same `mcp==2.3.0`)."""
    stage = DOCKERFILE.read_text().split("AS examples", 1)[1]
    assert "RUN pip install --no-cache-dir --disable-pip-version-check mcp==2.3.0" in stage
    assert "WORKDIR /app" in stage and "COPY examples/servers /app/servers" in stage
    assert "mcp==2.3.0" in (REPO / "requirements.txt").read_text()
    app = tmp_path / "app"
    shutil.copytree(REPO / "examples/servers", app / "servers")
    python = lambda parts: [sys.executable if part == "python" else str(part) for part in parts]  # noqa: E731
    for name in ("crm", "docs"):
        service = compose()["services"][name]
        port = str(free_port())
        command = python(service["command"])
        listen = command[command.index("--port") + 1]
        command[command.index("--port") + 1] = port
        check = [part.replace(listen, port) for part in python(service["healthcheck"]["test"][1:])]
        with open(tmp_path / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(command, cwd=app, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "MESHGATE_UPSTREAM_LOG": str(tmp_path / f"{name}.jsonl")})
        try:
            deadline = time.monotonic() + 30
            while subprocess.run(check, capture_output=True, cwd=app).returncode != 0:
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
                assert time.monotonic() < deadline, f"{name}: healthcheck never passed"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


# --- Kubernetes, run: the pods' command lines, as the kubelet would start them ------------------


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def test_the_kubernetes_pods_govern_a_call_as_their_manifests_run_them(
    tmp_path: Path, upstreams: dict[str, Any]
) -> None:
    """meshgate and an Envoy started from the Deployments' args, env, ConfigMaps and Secret,
    the module copied as the init container copies it; only addresses are local (loopback
    ports instead of Service names)."""
    require_artifacts()
    xds, admin, listener, envoy_admin, stats = (free_port() for _ in range(5))
    # meshgate pod: the registry ConfigMap laid out as mounted, the servers at the local examples.
    pod = kube("Deployment", "meshgate")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    root = tmp_path / "meshgate"
    for volume in pod["volumes"]:
        data = kube("ConfigMap", volume["configMap"]["name"])["data"]
        for item in volume["configMap"]["items"]:
            mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
            target = root / mount.lstrip("/") / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
    registry = root / "etc/meshgate/registry.yaml"
    text = registry.read_text().replace("http://crm:9101/mcp", upstreams["crm"].url)
    text = text.replace("http://docs:9102/mcp", upstreams["docs"].url)
    registry.write_text(text.replace("address: 0.0.0.0, port: 10000", f"address: 127.0.0.1, port: {listener}"))
    args = list(container["args"])
    args[args.index("--registry") + 1] = str(registry)
    args[args.index("--xds-listen") + 1] = f"127.0.0.1:{xds}"
    args[args.index("--admin-listen") + 1] = f"127.0.0.1:{admin}"
    args[args.index("--wasm-url") + 1] = f"http://127.0.0.1:{admin}/wasm/meshgate.wasm"
    env = {e["name"]: e["value"] for e in container["env"]}
    for source in container["envFrom"]:
        env.update(kube("Secret", source["secretRef"]["name"])["stringData"])
    control = Proc.start("meshgate", [str(MESHGATE), *args], tmp_path / "meshgate.log", env={**env, "MESHGATE_WASM": str(WASM)})
    # Envoy pod: the init container's copy, then Envoy with the Deployment's args and env.
    pod = kube("Deployment", "meshgate-envoy")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    init = pod["initContainers"][0]
    module_dir = tmp_path / "module"
    module_dir.mkdir()
    assert init["command"][0] == "cp" and Path(init["command"][2]).parent == Path(init["volumeMounts"][0]["mountPath"])
    shutil.copy(NATIVE, module_dir / Path(init["command"][2]).name)
    data = kube("ConfigMap", "meshgate-envoy-bootstrap")["data"]
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text(
        data["bootstrap.yaml"]
        .replace("address: meshgate.meshgate.svc.cluster.local", "address: 127.0.0.1")
        .replace("port_value: 18000", f"port_value: {xds}")
        .replace("port_value: 9901", f"port_value: {envoy_admin}")
    )
    pod_env = {"POD_NAME": "meshgate-envoy-5d9c7-x2x4q"}
    for item in container["env"]:
        if "value" in item:
            pod_env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            pod_env[item["name"]] = kube("ConfigMap", ref["name"])["data"][ref["key"]]
    pod_env["MESHGATE_STATS_LISTENER"] = (
        pod_env["MESHGATE_STATS_LISTENER"]
        .replace("port_value: 15090", f"port_value: {stats}")
        .replace("port_value: 9901", f"port_value: {envoy_admin}")
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[pod_env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"]] == init["volumeMounts"][0]["name"]
    pod_env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(module_dir)
    envoy_args = [expand(a, pod_env) for a in container["args"]]
    envoy_args[envoy_args.index("-c") + 1] = str(bootstrap)
    envoy = Proc.start(
        "envoy",
        [str(ENVOY), *envoy_args, "--base-id", str(envoy_admin)],
        tmp_path / "envoy.log",
        env={k: v for k, v in pod_env.items() if k == "ENVOY_DYNAMIC_MODULES_SEARCH_PATH"},
    )
    try:
        assert wait_tcp("127.0.0.1", listener, 60), envoy.tail() + control.tail()
        probe = container["readinessProbe"]["httpGet"]
        deadline = time.monotonic() + 30
        while http_get(f"http://127.0.0.1:{stats}{probe['path']}")[0] != 200:
            assert time.monotonic() < deadline, envoy.tail()
            time.sleep(0.2)
        url = f"http://127.0.0.1:{listener}/mcp/docs"
        docs_log = upstreams["docs"].log
        mark = docs_log.mark()
        reader = api_key("demo-reader-key")
        call = post(url, modern_body("tools/call", {"name": "search_docs", "arguments": {"query": "envoy"}}), reader,
                    modern_headers("tools/call", "search_docs"))
        assert call.status_code == 200 and "result" in response_messages(call)[0], call.text
        denied = post(url, modern_body("tools/call", {"name": "admin_reindex", "arguments": {}}), reader,
                      modern_headers("tools/call", "admin_reindex"))
        assert is_denied(denied), denied.text
        # The Secret's credential reached docs (and only the gateway's, never the client's key).
        [entry] = [e for e in docs_log.posts_since(mark) if "search_docs" in e.get("body", "")]
        assert entry["headers"].get("authorization") == "Bearer demo-docs-upstream-token"
        assert "x-api-key" not in entry["headers"]
        # meshgate knows this Envoy by its pod name (--service-node $(POD_NAME)).
        status = json.loads(http_get(f"http://127.0.0.1:{admin}/status")[1])
        assert "meshgate-envoy-5d9c7-x2x4q" in status["nodes"], status["nodes"].keys()
    finally:
        envoy.stop()
        control.stop()
