"""Run the rendered postgres overlay as local processes, the way a kubelet runs its pods.

Each Deployment becomes one pod (one replica): its init containers run to completion,
then its container command starts with the environment the manifests give it. The test
supplies the Secret values and overrides only what must reach local services:

- the DSN (a fresh database), ``FOXCTL_BROKER_URL`` (the test Redis),
  ``FOXCTL_CAS_S3_ENDPOINT`` (moto) and ``FOXCTL_LLM_BASE_URL`` (a fake model);
- ``FOXCTL_HOST`` and ``PORT``: each pod has its own network namespace, so here each
  pod gets its own loopback port, and its httpGet probes use that port;
- paths under emptyDir mounts, because each pod has its own ``/tmp`` and caches;
- AWS credentials, which the cluster takes from workload identity on the
  ServiceAccount.

Probes run as the manifest specifies: httpGet on the web port, or ``foxctl health`` with the
pod's environment. Shutdown runs the preStop hook, sends SIGTERM and allows
``terminationGracePeriodSeconds``, counted from the start of preStop as the kubelet does.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from sqlmodel import col, select

from shared.db import Database, make_engine
from shared.sessions.models import Message
from shared.settings import load_settings
from shared.turns.models import Turn
from tests.fakes.openai_server import FakeOpenAI
from tests.processes import Process, free_port, run_cli
from tests.test_k8s import config_maps, container_port, documents

pytestmark = pytest.mark.slow

DEPLOYMENTS = [
    "foxctl-web",
    "foxctl-worker",
    "foxctl-embedding-worker",
    "foxctl-maintenance-worker",
    "foxctl-scheduler",
]
#: Bucket credentials in place of the workload identity that a pod gets in a cluster.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "foxctl-test",
    "AWS_SECRET_ACCESS_KEY": "foxctl-test",
    # Keeps botocore from asking the EC2 metadata address for anything.
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: How long a pod may take to pass its readiness probe after its startup probe.
READY_TIMEOUT_S = 60.0
#: Maximum pause between two attempts of a probe, because the manifests' periods are
#: longer than a local run needs.
PROBE_POLL_S = 0.25


@dataclass
class LocalServices:
    postgres_dsn: str
    redis_url: str
    s3_endpoint: str
    model_url: str

    def secrets(self) -> dict[tuple[str, str], str]:
        """Return the Secret values by (Secret name, key), as `kubectl apply` would store them."""
        return {
            ("foxctl-secrets", "postgres-dsn"): self.postgres_dsn,
            ("foxctl-secrets", "broker-url"): self.redis_url,
            ("foxctl-secrets", "llm-api-key"): "sk-foxctl-test",
        }


@dataclass
class Pod:
    name: str
    spec: dict[str, Any]
    root: Path
    #: Container port mapped to the loopback port that replaces it.
    ports: dict[int, int] = field(default_factory=dict)
    #: The container's environment once started, for exec probes and hooks.
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None
    events: list[str] = field(default_factory=list)

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.spec["containers"]
        [container] = containers
        return container

    @property
    def grace_s(self) -> int:
        return int(self.spec["terminationGracePeriodSeconds"])

    def logs(self) -> str:
        text = "\n".join(self.events)
        if self.process is not None:
            text += f"\n{self.process.output()}"
        return f"--- pod {self.name}\n{text}"


# -- environment -------------------------------------------------------------------------


def resolve_env(
    container: dict[str, Any], docs: list[dict[str, Any]], secrets: dict[tuple[str, str], str]
) -> dict[str, str]:
    """Return the variables the kubelet would give the container, Secrets included."""
    maps = config_maps(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        reference = variable["valueFrom"]["secretKeyRef"]
        value = secrets.get((reference["name"], reference["key"]))
        if value is None:
            assert reference.get("optional"), f"the test supplies no Secret key {reference}"
            continue
        env[variable["name"]] = value
    return env


def empty_dirs(pod: Pod, container: dict[str, Any]) -> dict[str, Path]:
    """Return each emptyDir mount path of the container with the pod's own directory."""
    volumes = {v["name"]: v for v in pod.spec.get("volumes", []) if "emptyDir" in v}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in volumes:
            directory = pod.root / "volumes" / mount["name"]
            directory.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = directory
    return mounts


def localize(
    env: dict[str, str], pod: Pod, container: dict[str, Any], services: LocalServices
) -> dict[str, str]:
    """Point the manifest's environment at the local services and the pod's directories."""
    local = dict(env)
    for mount_path, directory in empty_dirs(pod, container).items():
        for name, value in env.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                local[name] = str(directory) + value[len(mount_path) :]

    if "PORT" in env:
        local["PORT"] = str(pod.ports.setdefault(int(env["PORT"]), free_port()))
    # A pod binds 0.0.0.0 in its own network namespace, so loopback takes its place here.
    if "FOXCTL_HOST" in env:
        local["FOXCTL_HOST"] = "127.0.0.1"
    if local.get("FOXCTL_CAS_DRIVER") == "s3":
        local["FOXCTL_CAS_S3_ENDPOINT"] = services.s3_endpoint
        local.update(S3_CREDENTIALS)
    if "FOXCTL_LLM_BASE_URL" in env:
        local["FOXCTL_LLM_BASE_URL"] = services.model_url
    return local


def assert_loopback_only(env: dict[str, str], where: str) -> None:
    for name, value in env.items():
        if "://" not in value:
            continue
        host = urlsplit(value).hostname
        assert host == "127.0.0.1", f"{where}: {name} points at {host}, not at a local server"


def make_pod(workload: dict[str, Any], root: Path) -> Pod:
    spec = workload["spec"]["template"]["spec"]
    name = workload["metadata"]["name"].removeprefix("foxctl-")
    return Pod(name, spec, root / name)


def pod_env(
    pod: Pod, container: dict[str, Any], docs: list[dict[str, Any]], services: LocalServices
) -> dict[str, str]:
    env = localize(resolve_env(container, docs, services.secrets()), pod, container, services)
    assert_loopback_only(env, f"{pod.name}/{container['name']}")
    return env


def foxctl_args(command: list[str]) -> list[str]:
    """Turn the image's `foxctl ...` command into the arguments of `python -m foxctl`."""
    assert command[0] == "foxctl", command
    return command[1:]


# -- starting and probing ----------------------------------------------------------------


def start_pod(pod: Pod, docs: list[dict[str, Any]], services: LocalServices) -> None:
    """Run the init containers in order, then start the container's command."""
    for init in pod.spec.get("initContainers", []):
        env = pod_env(pod, init, docs, services)
        started = time.monotonic()
        result = run_cli(foxctl_args([*init["command"], *init.get("args", [])]), env)
        pod.events.append(f"init {init['name']}: exit {result.returncode}")
        assert result.returncode == 0, (
            f"{pod.name}: init container {init['name']} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
        pod.events.append(f"init {init['name']} took {time.monotonic() - started:.1f} s")

    container = pod.container
    env = pod_env(pod, container, docs, services)
    args = foxctl_args([*container["command"], *container.get("args", [])])
    pod.root.mkdir(parents=True, exist_ok=True)
    pod.process = Process(pod.name, args, env, pod.root)
    pod.env = env


def run_probe(pod: Pod, probe: dict[str, Any]) -> tuple[bool, str]:
    """Run one probe attempt the way the kubelet would, and return (passed, detail)."""
    timeout_s = float(probe.get("timeoutSeconds", 1))
    if "exec" in probe:
        try:
            result = run_cli(foxctl_args(probe["exec"]["command"]), pod.env, timeout_s)
        except subprocess.TimeoutExpired:
            return False, f"no answer within {timeout_s} s"
        return result.returncode == 0, (result.stdout + result.stderr).strip()

    get = probe["httpGet"]
    target = container_port(pod.spec, get["port"])
    assert target in pod.ports, f"{pod.name}: probe port {target} is not PORT {pod.env['PORT']}"
    port = pod.ports[target]
    try:
        response = httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=timeout_s)
    except httpx.HTTPError as error:
        return False, f"GET {get['path']} failed: {error}"
    # The kubelet counts any status from 200 to 399 as a pass.
    return 200 <= response.status_code < 400, f"GET {get['path']}: {response.status_code}"


def wait_for_probe(pod: Pod, kind: str, timeout_s: float) -> None:
    probe = pod.container[kind]
    time.sleep(float(probe.get("initialDelaySeconds", 0)))
    period_s = min(float(probe.get("periodSeconds", 10)), PROBE_POLL_S)
    deadline = time.monotonic() + timeout_s
    while True:
        assert pod.process is not None
        if pod.process.popen.poll() is not None:
            raise AssertionError(f"{pod.name} exited during its {kind}:\n{pod.logs()}")
        passed, detail = run_probe(pod, probe)
        if passed:
            pod.events.append(f"{kind} passed: {detail}")
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{pod.name}: {kind} still failing after {timeout_s} s: {detail}")
        time.sleep(period_s)


def wait_until_ready(pod: Pod) -> None:
    """Wait for the startup probe within its budget, then readiness, then check liveness once."""
    startup = pod.container["startupProbe"]
    budget_s = float(startup.get("failureThreshold", 3)) * float(startup.get("periodSeconds", 10))
    wait_for_probe(pod, "startupProbe", budget_s)
    wait_for_probe(pod, "readinessProbe", READY_TIMEOUT_S)
    wait_for_probe(pod, "livenessProbe", 0)


# -- stopping ----------------------------------------------------------------------------


@dataclass
class Stopped:
    #: None when the container has no preStop hook.
    pre_stop_code: int | None
    #: Whether the readiness probe still passed once preStop had finished.
    ready_after_pre_stop: bool | None
    #: None when the process outlived the grace period.
    exit_code: int | None
    took_s: float


def stop_pod(pod: Pod) -> Stopped:
    """Run preStop, send SIGTERM, and wait for the rest of the grace period."""
    assert pod.process is not None
    started = time.monotonic()
    pre_stop_code = None
    ready_after_pre_stop = None
    pre_stop = pod.container.get("lifecycle", {}).get("preStop", {}).get("exec")
    if pre_stop is not None:
        result = run_cli(foxctl_args(pre_stop["command"]), pod.env, pod.grace_s)
        pre_stop_code = result.returncode
        pod.events.append(f"preStop exit {result.returncode}: {result.stdout}{result.stderr}")
        ready_after_pre_stop, _ = run_probe(pod, pod.container["readinessProbe"])

    remaining_s = max(pod.grace_s - (time.monotonic() - started), 0.1)
    try:
        exit_code: int | None = pod.process.terminate(remaining_s)
    except subprocess.TimeoutExpired:
        exit_code = None
    return Stopped(pre_stop_code, ready_after_pre_stop, exit_code, time.monotonic() - started)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def services(
    postgres_dsn: str, redis_url: str, s3_endpoint: str, s3_client: Any, fake_model: FakeOpenAI
) -> LocalServices:
    [config] = config_maps(documents("postgres")).values()
    s3_client.create_bucket(Bucket=config["FOXCTL_CAS_S3_BUCKET"])
    return LocalServices(postgres_dsn, redis_url, s3_endpoint, fake_model.base_url)


@pytest.fixture
def pods(services: LocalServices, tmp_path: Path) -> Iterator[list[Pod]]:
    docs = documents("postgres")
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert sorted(workloads) == sorted(DEPLOYMENTS)
    created = [make_pod(workloads[name], tmp_path) for name in DEPLOYMENTS]
    try:
        for pod in created:
            start_pod(pod, docs, services)
        yield created
    finally:
        for pod in created:
            if pod.process is not None:
                pod.process.kill()


# -- the test ----------------------------------------------------------------------------


def test_postgres_overlay_runs_locally(
    pods: list[Pod], services: LocalServices, s3_client: Any
) -> None:
    [web] = [p for p in pods if p.name == "web"]
    with ThreadPoolExecutor(len(pods)) as pool:
        for pod, outcome in zip(pods, pool.map(_ready_or_error, pods), strict=True):
            assert outcome is None, f"{outcome}\n{pod.logs()}"
    client = _api_client(web)

    agent = client.post("/api/agents", json={"name": "k8s", "role": "coder"})
    session = client.post("/api/sessions", json={"agent_id": "k8s"})
    session_id = session.json()["id"]
    accepted = client.post(f"/api/sessions/{session_id}/messages", json={"content": "hi"})
    turn = _wait_for_turn(client, accepted.json()["turn_id"], pods)
    messages = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
    uploaded = client.put(
        "/api/cas", content=b"artifact bytes", headers={"Content-Type": "text/plain"}
    )
    client.close()
    with ThreadPoolExecutor(len(pods)) as pool:
        stopped = list(zip(pods, pool.map(stop_pod, pods), strict=True))

    logs = "\n".join(pod.logs() for pod in pods)
    assert agent.status_code == 201, agent.text
    assert session.status_code == 201, session.text
    assert accepted.status_code == 202, accepted.text
    assert turn["status"] == "succeeded", logs
    assert [m["content"] for m in messages] == ["hi", "echo: hi"]
    assert uploaded.status_code == 201, uploaded.text
    assert _bucket_keys(s3_client, web.env["FOXCTL_CAS_S3_BUCKET"]) != []
    for pod, result in stopped:
        if "preStop" in pod.container.get("lifecycle", {}):
            assert result.pre_stop_code == 0, f"{pod.name}: preStop failed\n{logs}"
            assert result.ready_after_pre_stop is False, f"{pod.name}: ready after preStop"
        assert result.exit_code == 0, f"{pod.name} exited {result.exit_code}\n{logs}"
        assert result.took_s < pod.grace_s, f"{pod.name} took {result.took_s:.1f} s"
    assert _unfinished_turns(web) == []
    assert _assistant_replies(web, turn["id"]) == 1
    assert _queued_messages(services.redis_url, "turns") == 0


def _api_client(web: Pod) -> httpx.Client:
    """Create a token with the web pod's environment, as `kubectl exec` would."""
    created = run_cli(["tokens", "create", "--name", "k8s-local-run"], web.env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{web.env['PORT']}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _ready_or_error(pod: Pod) -> str | None:
    try:
        wait_until_ready(pod)
    except AssertionError as error:
        return str(error)
    return None


def _wait_for_turn(
    client: httpx.Client, turn_id: str, pods: list[Pod], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        turn: dict[str, Any] = client.get(f"/api/turns/{turn_id}").json()
        if turn["status"] not in ("queued", "running"):
            return turn
        if time.monotonic() > deadline:
            logs = "\n".join(pod.logs() for pod in pods)
            raise AssertionError(
                f"turn {turn_id} still {turn['status']} after {timeout_s} s\n{logs}"
            )
        time.sleep(0.1)


def _bucket_keys(s3_client: Any, bucket: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


def _database(pod: Pod) -> Database:
    return Database(make_engine(load_settings(pod.env)))


def _unfinished_turns(pod: Pod) -> list[str]:
    database = _database(pod)
    with database.read() as session:
        rows = session.exec(select(Turn).where(col(Turn.status).in_(["queued", "running"])))
        unfinished = [row.id for row in rows]
    database.dispose()
    return unfinished


def _assistant_replies(pod: Pod, turn_id: str) -> int:
    database = _database(pod)
    with database.read() as session:
        rows = session.exec(
            select(Message).where(Message.turn_id == turn_id).where(Message.role == "assistant")
        ).all()
    database.dispose()
    return len(rows)


def _queued_messages(redis_url: str, queue: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        length = client.llen(f"dramatiq:{queue}")
        assert isinstance(length, int)
        return length
    finally:
        client.close()
