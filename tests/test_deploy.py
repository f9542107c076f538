"""Every file in deploy/ is checked: it parses, validates, and what it runs really runs.

- YAML parses; the Kubernetes manifests validate offline against the Kubernetes API
  schemas bundled by ``kubernetes-validate``; the compose file validates against the
  Compose specification's JSON schema (the copy ``check-jsonschema`` ships), with
  ``jsonschema``.
- Every nats-server config passes ``nats-server -t``; the single-node config, the
  three cluster configs, and the nats-server command lines of the compose file and
  the Kubernetes StatefulSet are started as they are, on loopback with their ports
  and directories remapped, and must come up with JetStream (the clusters with one
  meta leader; the Kubernetes probes' paths must answer 200).
- The systemd units pass ``systemd-analyze verify`` (the ``runstate`` path stubbed).
- Every ``runstate`` command line in the units and manifests names a command and flags
  the CLI lists (through the ``runstate`` console script, so it does not matter which
  module holds the CLI), its ``RUNSTATE_*`` variables are read by the settings, and the
  unit's ``runstate server`` and the manifests' ``runstate projector`` are run against
  the servers started from the deploy files.
- The Dockerfile's base image meets requires-python, it copies what ``pip install .``
  needs, and its entrypoint is the console script; image tags match the tested versions.
- A file in deploy/ of a kind none of these checks fails the first test.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import kubernetes_validate
import prometheus_client.parser
import pytest
import yaml
from _pki import make_pki

from runstate.client import connect
from runstate.engine import Settings
from runstate.engine._connection import provision_server
from runstate.engine._credentials import write_authorization
from runstate.engine._server import NATS_SERVER_VERSION, _free_ports, find_nats_server
from runstate.engine.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RUNSTATE = Path(sys.executable).parent / "runstate"
LOOPBACK = "127.0.0.1"

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "compose.yaml"
#: the TLS fragment the cluster's node configs include (tested with certificates of its own)
TLS_CONF = DEPLOY / "nats-tls.conf"
CONFS = sorted(conf for conf in DEPLOY.glob("*.conf") if conf != TLS_CONF)
CLUSTER_CONFS = sorted(DEPLOY.glob("nats-cluster-n*.conf"))
UNITS = sorted(DEPLOY.glob("*.service"))
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"
PROMETHEUS = DEPLOY / "prometheus.yml"

#: how long a server or cluster started from deploy/ may take to be ready
READY_TIMEOUT = 20.0


def rel(path: Path) -> str:
    """``path`` relative to deploy/, as a test id and as README.md names it."""
    return path.relative_to(DEPLOY).as_posix()


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def collected_documents(path: Path) -> list[dict[str, Any]]:
    """``yaml_documents``, or none when the file does not parse: used while collecting tests,
    so that a broken file fails its own tests instead of the whole module's collection."""
    try:
        return yaml_documents(path)
    except yaml.YAMLError:
        return []


def pyproject() -> dict[str, Any]:
    """The parsed pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- the runstate command lines in deploy/ -----------------------------------------------


@dataclass
class Invocation:
    """One ``runstate`` command line a deploy file runs, with the environment it sets."""

    source: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _unit_invocations() -> list[Invocation]:
    found = []
    for unit in UNITS:
        argv: list[str] = []
        env: dict[str, str] = {}
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "ExecStart":
                exe, *argv = shlex.split(value)
                assert Path(exe).name == "runstate", f"{unit.name} runs {exe}, not runstate"
            elif key == "Environment":
                for assignment in shlex.split(value):
                    name, _, val = assignment.partition("=")
                    env[name] = val
        assert argv, f"{unit.name} has no ExecStart"
        found.append(Invocation(rel(unit), argv, env))
    return found


def _is_runstate_image(image: str) -> bool:
    return image.rsplit(":", 1)[0].rsplit("/", 1)[-1] == "runstate"


def _compose_invocations() -> list[Invocation]:
    found = []
    for compose in collected_documents(COMPOSE)[:1]:
        found += _compose_service_invocations(compose)
    return found


def _compose_service_invocations(compose: dict[str, Any]) -> list[Invocation]:
    found = []
    for name, service in compose["services"].items():
        if _is_runstate_image(service.get("image", "")):
            command = service["command"]
            argv = shlex.split(command) if isinstance(command, str) else list(command)
            env = service.get("environment", {})
            if isinstance(env, list):
                env = dict(item.split("=", 1) for item in env)
            found.append(Invocation(f"compose.yaml:{name}", argv, dict(env)))
    return found


def _pod_specs(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in collected_documents(path):
        template = doc.get("spec", {}).get("template")
        if template is not None:
            yield doc["metadata"]["name"], template["spec"]


def _kubernetes_invocations() -> list[Invocation]:
    found = []
    for path in KUBERNETES:
        for owner, pod in _pod_specs(path):
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                if _is_runstate_image(container["image"]):
                    # the image's ENTRYPOINT is runstate; args are its arguments
                    assert "command" not in container, "the runstate image's entrypoint is kept"
                    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
                    found.append(Invocation(f"{rel(path)}:{owner}", list(container["args"]), env))
    return found


INVOCATIONS = _unit_invocations() + _compose_invocations() + _kubernetes_invocations()


def flags(argv: Sequence[str]) -> list[str]:
    """The ``--flag`` names of a command line (``--a=b`` counts as ``--a``)."""
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("-")]


# -- starting nats-server from deploy files ----------------------------------------------


class Processes:
    """nats-server (and runstate) processes a test started; all are stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self, command: Sequence[str | Path], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(part) for part in command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.started.append((process, log))
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        (log,) = [log for started, log in self.started if started is process]
        return log.read_text()

    def finish(self, process: subprocess.Popen[bytes]) -> int:
        """Stop one process with SIGTERM and return its exit status; it is checked no more."""
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(20)
        finally:
            self.started = [(p, log) for p, log in self.started if p is not process]

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.started)

    def check_running(self) -> None:
        for process, log in self.started:
            if process.poll() is not None:
                pytest.fail(f"{log.stem} exited with {process.returncode}:\n{self.logs()}")

    def stop(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start processes whose logs go to ``tmp_path``; they are stopped after the test."""
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def http_get(port: int, path: str) -> tuple[int, dict[str, Any] | None]:
    """GET a monitoring endpoint on loopback: (status, JSON body), (0, None) if unreachable."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=1) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return 0, None


def await_meta_leader(processes: Processes, monitor_ports: Sequence[int]) -> str:
    """Wait until every node's JetStream sees one meta leader of a cluster of them all."""
    deadline = time.monotonic() + READY_TIMEOUT
    seen: list[Any] = []
    while time.monotonic() < deadline:
        processes.check_running()
        seen = []
        for port in monitor_ports:
            _, jsz = http_get(port, "/jsz")
            meta = (jsz or {}).get("meta_cluster") or {}
            seen.append((meta.get("leader"), meta.get("cluster_size")))
        leaders = {leader for leader, _ in seen}
        if len(leaders) == 1 and None not in leaders and "" not in leaders:
            if all(size == len(monitor_ports) for _, size in seen):
                return str(leaders.pop())
        time.sleep(0.1)
    pytest.fail(f"no JetStream meta leader all nodes agree on: {seen}\n{processes.logs()}")


def await_healthy(processes: Processes, monitor_port: int, path: str) -> None:
    """Wait until the monitoring endpoint ``path`` answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT
    status = 0
    while time.monotonic() < deadline:
        processes.check_running()
        status, _ = http_get(monitor_port, path)
        if status == 200:
            return
        if status == 404:
            break  # no such endpoint: waiting will not help
        time.sleep(0.1)
    pytest.fail(f"{path} answered {status}, not 200\n{processes.logs()}")


_ADDRESS = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|localhost):(\d+)\b")


def remap_confs(confs: Sequence[Path], directory: Path) -> tuple[list[Path], dict[int, int]]:
    """Copies of ``confs`` in ``directory`` with every address moved to a free loopback port
    and every store_dir under ``directory``; returns them and the port map."""
    texts = [conf.read_text() for conf in confs]
    ports = sorted({int(port) for text in texts for port in _ADDRESS.findall(text)})
    mapping = dict(zip(ports, _free_ports(LOOPBACK, len(ports)), strict=True))
    copies = []
    for conf, text in zip(confs, texts, strict=True):
        text = _ADDRESS.sub(lambda m: f"{LOOPBACK}:{mapping[int(m.group(1))]}", text)
        text, stores = re.subn(
            r'store_dir:\s*"?([^"\n]+)"?',
            lambda m: f'store_dir: "{directory / "store" / m.group(1).strip("/")}"',
            text,
        )
        assert stores == 1, f"{conf.name} should set JetStream's store_dir once"
        copy = directory / conf.name
        copy.write_text(text)
        copies.append(copy)
    roles_beside(directory)
    return copies, mapping


def roles_beside(directory: Path) -> Path:
    """``runstate auth init``'s block and credentials in ``directory/auth`` (where the
    configs include it from), also reached as ``directory/etc/runstate/auth``, the units'
    path (``run_until_ready`` moves /etc/ paths under the test's directory)."""
    auth = directory / "auth"
    if not auth.is_dir():
        write_authorization(auth)
        (directory / "etc" / "runstate").mkdir(parents=True)
        (directory / "etc" / "runstate" / "auth").symlink_to(auth)
    return auth


def port_of(conf: Path, key: str) -> int:
    """The port of ``key: host:port`` in a nats-server config."""
    match = re.search(rf"^\s*{key}:\s*\S+:(\d+)\s*$", conf.read_text(), re.MULTILINE)
    assert match, f"{conf.name} has no {key}: HOST:PORT"
    return int(match.group(1))


@dataclass
class FlagNode:
    """One nats-server a manifest runs from flags: its host name and arguments."""

    host: str
    args: list[str]


def run_flag_cluster(processes: Processes, nodes: Sequence[FlagNode], directory: Path) -> list[int]:
    """Start the manifests' nats-server command lines on loopback, every node on its own
    client, cluster and monitoring ports, with routes to the other nodes' host names
    remapped and a /etc/ config file moved under ``directory`` (``local_path``); returns the
    monitoring ports once the cluster has one meta leader."""
    ports = _free_ports(LOOPBACK, 3 * len(nodes))
    client, cluster, monitor = ports[0::3], ports[1::3], ports[2::3]
    index = {node.host: i for i, node in enumerate(nodes)}

    def route(match: re.Match[str]) -> str:
        host = match.group(1)
        assert host in index, f"a route names {host}, which is none of the nodes {list(index)}"
        return f"nats://{LOOPBACK}:{cluster[index[host]]}"

    for i, node in enumerate(nodes):
        args = []
        for arg in node.args:
            name, _, value = arg.partition("=")
            if name == "--cluster":
                value = re.sub(r"nats://[^:]+:\d+", f"nats://{LOOPBACK}:{cluster[i]}", value)
            elif name == "--routes":
                value = re.sub(r"nats://([^:,]+):\d+", route, value)
            elif name == "--http_port":
                value = str(monitor[i])
            elif name in ("--store_dir", "--sd"):
                value = str(directory / "store" / node.host)
            elif name in ("--config", "-c"):  # the roles' block, under the test's directory
                value = local_path(value, directory)
                assert Path(value).is_file(), f"{arg}: make it first (runstate auth init)"
            elif name in ("--addr", "-a", "--port", "-p", "--http", "-m", "--cluster_listen"):
                pytest.fail(f"{arg}: add its remapping to run_flag_cluster")
            args.append(f"{name}={value}" if value else name)
        # --addr keeps the client port and the monitoring port (which follows it) on loopback
        command = [find_nats_server(), *args, "--addr", LOOPBACK, "--port", str(client[i])]
        processes.start(command, node.host)
    await_meta_leader(processes, monitor)
    return monitor


# -- every file ---------------------------------------------------------------------------


def test_every_deploy_file_is_checked_and_listed_in_the_readme() -> None:
    """Every file under deploy/ is of a kind this module checks, and README.md lists it."""
    checked = {*YAML_FILES, *CONFS, *UNITS, DOCKERFILE, README, PROMETHEUS, TLS_CONF}
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    unchecked = [rel(p) for p in files if p not in checked]
    assert not unchecked, f"no test checks {unchecked}: add one to tests/test_deploy.py"
    readme = README.read_text()
    unlisted = [
        rel(p)
        for p in files
        if p != README
        and f"`{rel(p)}`" not in readme
        and not (p in CLUSTER_CONFS and "`nats-cluster-n1.conf` … `n3.conf`" in readme)
    ]
    assert not unlisted, f"deploy/README.md does not list {unlisted}"
    assert {*KUBERNETES, COMPOSE} <= set(YAML_FILES) and len(CLUSTER_CONFS) == 3


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_file_parses(path: Path) -> None:
    """The YAML file parses into one or more mappings."""
    documents = yaml_documents(path)
    assert documents and all(isinstance(doc, dict) for doc in documents)


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUBERNETES, ids=rel)
def test_kubernetes_manifest_validates_against_the_api_schemas(path: Path) -> None:
    """Each object in the manifest validates (strictly: no unknown fields) offline against
    the newest Kubernetes API schemas kubernetes-validate bundles."""
    version = kubernetes_validate.latest_version()
    for doc in yaml_documents(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{rel(path)} {doc.get('kind')}: {error.message} at {error.path}")


def kubernetes_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the manifests by (kind, name)."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc for p in KUBERNETES for doc in yaml_documents(p)
    }


def test_kubernetes_manifests_fit_together() -> None:
    """The Services select the NATS pods and serve their named ports, the StatefulSet's routes
    name each of its pods through its headless Service, the probes use a named port, and the
    projector's NATS URL is the client Service."""
    objects = kubernetes_objects()
    sts = objects["StatefulSet", "nats"]
    pod = sts["spec"]["template"]
    (nats,) = pod["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in nats["ports"]}
    for service_name in ("nats", sts["spec"]["serviceName"]):
        service = objects["Service", service_name]["spec"]
        assert service["selector"].items() <= pod["metadata"]["labels"].items()
        for port in service["ports"]:
            assert container_ports[port["name"]] == port.get("targetPort", port["port"])
    assert objects["Service", sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    args = dict(arg.partition("=")[::2] for arg in nats["args"])
    routes = [
        f"nats://{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}:"
        f"{container_ports['cluster']}"
        for i in range(sts["spec"]["replicas"])
    ]
    assert args["--routes"].split(",") == routes
    assert args["--cluster"].endswith(f":{container_ports['cluster']}")
    assert int(args["--http_port"]) == container_ports["monitor"]
    mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
    assert args["--store_dir"] == mounts[sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert nats[probe]["httpGet"]["port"] in container_ports
    clients = [inv for inv in INVOCATIONS if inv.source.startswith("kubernetes/")]
    assert sorted(inv.argv[0] for inv in clients) == ["projector", "provision", "web"]
    for invocation in clients:  # the gateway's NATS URL too
        url = invocation.argv[invocation.argv.index("--nats") + 1]
        host, port = url.removeprefix("nats://").split(":")
        assert any(p["port"] == int(port) for p in objects["Service", host]["spec"]["ports"])


def test_kubernetes_gateway_fits_together() -> None:
    """The gateway's Services select its pods and serve its named port, which is the port it
    listens on; its probes ask /healthz (alive) and /readyz (ready) there; its token
    registry is a file of a Secret mounted read-only."""
    objects = kubernetes_objects()
    deployment = objects["Deployment", "runstate-web"]
    pod = deployment["spec"]["template"]
    (web,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    args = web["args"]
    assert args[0] == "web" and int(args[args.index("--port") + 1]) == ports["http"]
    assert args[args.index("--host") + 1] == "0.0.0.0"  # reachable from the Service
    for name in ("runstate-web", "runstate-web-pods"):
        service = objects["Service", name]["spec"]
        assert service["selector"].items() <= pod["metadata"]["labels"].items()
        (port,) = service["ports"]
        assert port["targetPort"] in ports
    assert objects["Service", "runstate-web-pods"]["spec"]["clusterIP"] == "None"
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # the token registry is the file of the Secret's volume
    registry = Path(args[args.index("--tokens") + 1])
    (mount,) = [m for m in web["volumeMounts"] if registry.parent == Path(m["mountPath"])]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] and "secretName" in volume["secret"]
    assert "--no-auth" not in args


def test_kubernetes_pods_get_their_roles_credentials() -> None:
    """The NATS pods load auth.conf, the only file of the Secret runstate-auth they mount; each
    runstate container signs in with its role's credentials file (provision: admin, projector:
    projector, the gateway: writer), the only file of that Secret it mounts, read-only (the
    projector also mounts its user of the clients' account, projector-queries.nk)."""
    roles = {"provision": "admin", "projector": "projector", "web": "writer"}
    secrets = set()
    seen = []
    for path in KUBERNETES:
        for owner, pod in _pod_specs(path):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                if _is_runstate_image(container["image"]):
                    wanted = Path(env["RUNSTATE_CREDENTIALS"])
                    assert wanted.name == f"{roles[container['args'][0]]}.nk", owner
                    seen.append(container["args"][0])
                else:
                    (config,) = [a for a in container["args"] if a.startswith("--config=")]
                    wanted = Path(config.removeprefix("--config="))
                    assert wanted.name == "auth.conf"
                (mount,) = [
                    m for m in container["volumeMounts"] if Path(m["mountPath"]) == wanted.parent
                ]
                assert mount["readOnly"], owner
                secret = volumes[mount["name"]]["secret"]
                names = [wanted.name]
                if wanted.name == "projector.nk":
                    names.append("projector-queries.nk")
                assert secret["items"] == [{"key": n, "path": n} for n in names], owner
                secrets.add(secret["secretName"])
    assert sorted(seen) == ["projector", "provision", "web"] and secrets == {"runstate-auth"}


def pod_name(pod: str, field_env: dict[str, str]) -> Callable[[re.Match[str]], str]:
    """A substitution for ``$(VAR)`` giving ``pod`` for the variables set from the pod name."""
    return lambda match: pod if match.group(1) in field_env else match.group(0)


def test_kubernetes_nats_pods_form_a_cluster_and_answer_their_probes(
    processes: Processes, tmp_path: Path
) -> None:
    """The StatefulSet's nats-server arguments, run as its three pods on loopback, form a
    JetStream cluster, and every probe's path answers 200 on each pod."""
    sts = kubernetes_objects()["StatefulSet", "nats"]
    (nats,) = sts["spec"]["template"]["spec"]["containers"]
    field_env = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in nats.get("env", [])
        if "valueFrom" in e
    }
    assert set(field_env.values()) <= {"metadata.name"}
    nodes = []
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"
        # Kubernetes expands $(VAR) in args from the container's env: here only the pod name
        args = [re.sub(r"\$\((\w+)\)", pod_name(pod, field_env), a) for a in nats["args"]]
        assert not any("$(" in a for a in args), args
        nodes.append(FlagNode(f"{pod}.{sts['spec']['serviceName']}", args))
    roles_beside(tmp_path)  # the Secret runstate-auth: runstate auth init's directory
    monitors = run_flag_cluster(processes, nodes, tmp_path)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = nats[probe]["httpGet"]["path"]
        for port in monitors:
            await_healthy(processes, port, path)
    assert_roles_required(monitors, tmp_path / "auth")


# -- compose --------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as check-jsonschema vendors it.

    Found without importing check_jsonschema, whose command line needs a newer click than
    runstate's floor (CI's second run pins click to it).
    """
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations
    vendor = Path(spec.submodule_search_locations[0]) / "builtin_schemas" / "vendor"
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def test_compose_file_validates_against_the_compose_spec() -> None:
    """compose.yaml validates against the Compose specification's JSON schema."""
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(
        validator_class(schema).iter_errors(yaml_documents(COMPOSE)[0]),
        key=lambda e: list(e.absolute_path),
    )
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_services_fit_together() -> None:
    """The NATS services route to services that exist, the projector's URL names one of them,
    it depends on them all, and it is built from deploy/Dockerfile."""
    services = yaml_documents(COMPOSE)[0]["services"]
    nats_services = {n for n, s in services.items() if s["image"].startswith("nats:")}
    assert len(nats_services) == 3
    for name in nats_services:
        args = dict(a.partition("=")[::2] for a in services[name]["command"])
        assert args["--name"] == name
        assert set(re.findall(r"nats://([^:,]+):", args["--routes"])) == nats_services
    provisioners = {n for n, s in services.items() if s.get("command", [""])[0] == "provision"}
    assert len(provisioners) == 1
    for invocation in _compose_invocations():
        name = invocation.source.split(":", 1)[1]
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        if invocation.argv[:2] == ["auth", "init"]:  # before NATS (its nodes load auth.conf)
            assert "depends_on" not in services[name]
            continue
        service = services[name]
        url = invocation.argv[invocation.argv.index("--nats") + 1]
        assert url.removeprefix("nats://").split(":")[0] in nats_services
        # every runstate service waits for the streams to be provisioned
        wanted = nats_services if name in provisioners else nats_services | provisioners
        assert set(service["depends_on"]) == wanted
        if name not in provisioners:
            (provisioner,) = provisioners
            condition = service["depends_on"][provisioner]["condition"]
            assert condition == "service_completed_successfully"


def test_compose_nats_services_form_a_cluster(processes: Processes, tmp_path: Path) -> None:
    """The compose file's auth service writes the roles' authorization; its three nats-server
    command lines, run on loopback with it, form a JetStream cluster that asks every client
    for a role's credentials."""
    services = yaml_documents(COMPOSE)[0]["services"]
    (auth,) = [inv for inv in _compose_invocations() if inv.argv[:2] == ["auth", "init"]]
    run_to_completion(auth, tmp_path)
    out = Path(local_path(auth.argv[auth.argv.index("--out") + 1], tmp_path))
    nodes = [
        FlagNode(name, list(service["command"]))
        for name, service in services.items()
        if service["image"].startswith("nats:")
    ]
    assert_roles_required(run_flag_cluster(processes, nodes, tmp_path), out)
    # run again (every `docker compose up`), it keeps the credentials the nodes loaded
    seed = (out / "admin.nk").read_text()
    assert "kept" in run_to_completion(auth, tmp_path)
    assert (out / "admin.nk").read_text() == seed


def assert_roles_required(monitors: Sequence[int], auth: Path) -> None:
    """Every node of the cluster runs the roles' authorization of ``auth`` (its varz says it
    asks for authentication); a client without credentials is refused at once, the admin's
    credentials provision the streams."""
    for port in monitors:
        _, varz = http_get(port, "/varz")
        assert varz is not None and varz["auth_required"], port
        url = f"nats://{LOOPBACK}:{varz['port']}"
    settings = Settings(nats_url=url, data_dir=auth.parent / "client", retry_budget=600)
    with pytest.raises(ConfigurationError):
        anyio.run(provision_server, settings)
    anyio.run(provision_server, settings.replace(credentials=auth / "admin.nk"))


def test_compose_services_sign_in_as_their_roles() -> None:
    """The auth service writes runstate auth init's directory to a volume (keeping what is
    there); the NATS nodes load its auth.conf, mounted read-only, after it ran; every other
    runstate service signs in with the credentials file of its role from that volume."""
    services = yaml_documents(COMPOSE)[0]["services"]
    (auth,) = [inv for inv in _compose_invocations() if inv.argv[:2] == ["auth", "init"]]
    out = auth.argv[auth.argv.index("--out") + 1]
    assert "--keep-existing" in auth.argv
    auth_name = auth.source.split(":", 1)[1]
    (volume,) = [v.split(":")[0] for v in services[auth_name]["volumes"] if v.endswith(f":{out}")]
    read_only = f"{volume}:{out}:ro"
    for name, service in services.items():
        if service["image"].startswith("nats:"):
            assert f"--config={out}/auth.conf" in service["command"], name
            assert read_only in service["volumes"], name
            condition = service["depends_on"][auth_name]["condition"]
            assert condition == "service_completed_successfully", name
    roles = {"provision": "admin", "projector": "projector", "web": "writer"}
    for invocation in _compose_invocations():
        if invocation is auth or invocation.argv[:2] == ["auth", "init"]:
            continue
        name = invocation.source.split(":", 1)[1]
        role = roles[invocation.argv[0]]
        assert invocation.env["RUNSTATE_CREDENTIALS"] == f"{out}/{role}.nk", name
        assert read_only in services[name]["volumes"], name


def test_images_pin_the_tested_versions() -> None:
    """The NATS images pin the nats-server minor version runstate is tested with, and the
    runstate image tag is the package version."""
    images = [s["image"] for s in yaml_documents(COMPOSE)[0]["services"].values()]
    images += [
        c["image"] for p in KUBERNETES for _, pod in _pod_specs(p) for c in pod["containers"]
    ]
    minor = ".".join(NATS_SERVER_VERSION.split(".")[:2])
    version = pyproject()["project"]["version"]
    for image in images:
        name, tag = image.rsplit(":", 1)
        if name == "nats":
            assert tag.startswith(f"{minor}-") or tag == minor, image
        else:
            assert _is_runstate_image(image) and tag == version, image


# -- Prometheus ------------------------------------------------------------------------------


def prometheus_jobs() -> list[dict[str, Any]]:
    """The scrape jobs of prometheus.yml."""
    jobs: list[dict[str, Any]] = yaml_documents(PROMETHEUS)[0]["scrape_configs"]
    return jobs


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool (Prometheus' own checker) accepts prometheus.yml, with the token file its
    jobs name (which promtool wants to exist) moved to a temporary one."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    (credentials,) = {job["authorization"]["credentials_file"] for job in prometheus_jobs()}
    token = tmp_path / "runstate-token"
    token.write_text("rs_example\n")
    copy = tmp_path / PROMETHEUS.name
    copy.write_text(PROMETHEUS.read_text().replace(credentials, str(token)))
    done = subprocess.run(
        [promtool, "check", "config", copy], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_jobs_scrape_the_gateways() -> None:
    """The compose job's target is the compose gateway's service and port; the Kubernetes
    job resolves the gateway's headless Service and scrapes its container port; both ask
    /metrics (which test_kubernetes_gateway_answers_its_probes_and_prometheus scrapes) with
    a bearer token from a file."""
    compose_job, kubernetes_job = prometheus_jobs()
    services = yaml_documents(COMPOSE)[0]["services"]
    (web,) = [inv for inv in _compose_invocations() if inv.argv[0] == "web"]
    name = web.source.split(":", 1)[1]
    port = web.argv[web.argv.index("--port") + 1]
    (static,) = compose_job["static_configs"]
    assert static["targets"] == [f"{name}:{port}"]
    assert any(p.split(":")[-1] == port for p in services[name]["ports"])
    objects = kubernetes_objects()
    (container,) = objects["Deployment", "runstate-web"]["spec"]["template"]["spec"]["containers"]
    (dns,) = kubernetes_job["dns_sd_configs"]
    (service_name,) = dns["names"]
    assert objects["Service", service_name]["spec"]["clusterIP"] == "None"
    assert dns["port"] == {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    for job in (compose_job, kubernetes_job):
        assert job["metrics_path"] == "/metrics"
        assert set(job["authorization"]) == {"credentials_file"}  # a bearer token, from a file


# -- nats-server configs ----------------------------------------------------------------------


@pytest.mark.parametrize("conf", CONFS, ids=rel)
def test_nats_config_is_accepted_by_nats_server(conf: Path, tmp_path: Path) -> None:
    """nats-server -t accepts the config, with the roles' block beside it."""
    shutil.copy(conf, tmp_path / conf.name)
    roles_beside(tmp_path)
    done = subprocess.run(
        [find_nats_server(), "-t", "-c", tmp_path / conf.name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_single_node_config_starts_with_jetstream(processes: Processes, tmp_path: Path) -> None:
    """nats-single.conf, its ports remapped and its store in a temporary directory, starts a
    server with JetStream on that store; runstate-projector.service's command line (its NATS
    URL remapped) becomes ready on it and folds into its RUNSTATE_DATA_DIR."""
    (conf,), _ = remap_confs([DEPLOY / "nats-single.conf"], tmp_path)
    processes.start([find_nats_server(), "-c", conf], "single")
    monitor = port_of(conf, "http")
    await_healthy(processes, monitor, "/healthz?js-enabled-only=true")
    _, jsz = http_get(monitor, "/jsz")
    assert jsz is not None and jsz["config"]["store_dir"].startswith(str(tmp_path))
    url = f"nats://{LOOPBACK}:{port_of(conf, 'listen')}"
    # the admin's unit creates the streams; the projector's signs in as the projector role
    (provisioning,) = [inv for inv in INVOCATIONS if inv.source == "runstate-provision.service"]
    run_to_completion(provisioning, tmp_path, nats=url)
    (invocation,) = [inv for inv in INVOCATIONS if inv.source == "runstate-projector.service"]
    run_until_ready(processes, invocation, tmp_path, nats=url, ready=f"replica ready on {url}")
    data_dir = tmp_path / invocation.env["RUNSTATE_DATA_DIR"].removeprefix("/")
    # a replica that does not own the server folds into a store named after the stream
    assert list((data_dir / "replicas").glob("*.sqlite3"))


def test_cluster_configs_form_a_jetstream_cluster(processes: Processes, tmp_path: Path) -> None:
    """nats-cluster-n1..n3.conf themselves, their ports remapped, form one JetStream cluster
    of three; the projectors of compose.yaml and kubernetes/projector.yaml, with their
    environment (RUNSTATE_REPLICAS=3) and their NATS URL remapped, and the gateway of
    compose.yaml, become ready on it."""
    confs, _ = remap_confs(CLUSTER_CONFS, tmp_path)
    for conf in confs:
        processes.start([find_nats_server(), "-c", conf], conf.stem)
    await_meta_leader(processes, [port_of(conf, "http") for conf in confs])
    urls = ",".join(f"nats://{LOOPBACK}:{port_of(conf, 'listen')}" for conf in confs)
    others = [
        inv
        for inv in INVOCATIONS
        if not inv.source.endswith(".service") and inv.argv[:2] != ["auth", "init"]
    ]
    # compose.yaml and kubernetes/ give each its role's credentials, at /etc/runstate/auth/
    # (moved under tmp_path, where remap_confs put the roles' block the nodes include)
    provisioners = [inv for inv in others if inv.argv[0] == "provision"]
    assert len(provisioners) == 2
    for invocation in provisioners:
        assert invocation.env.get("RUNSTATE_REPLICAS") == "3", invocation.source
        assert invocation.env["RUNSTATE_CREDENTIALS"].endswith("/admin.nk")
        run_to_completion(invocation, tmp_path, nats=urls)
    projectors = [inv for inv in others if inv.argv[0] == "projector"]
    assert len(projectors) == 2
    for invocation in projectors:
        assert invocation.env.get("RUNSTATE_REPLICAS") == "3", invocation.source
        assert invocation.env["RUNSTATE_CREDENTIALS"].endswith("/projector.nk")
        run_until_ready(
            processes, invocation, tmp_path, nats=urls, ready=f"replica ready on {urls}"
        )
    # the HTTP gateways of compose.yaml and kubernetes/gateway.yaml, on a free loopback port
    gateways = [inv for inv in others if inv.argv[0] == "web"]
    assert len(gateways) == 2
    for gateway in gateways:
        assert gateway.env["RUNSTATE_CREDENTIALS"].endswith("/writer.nk")
        run_until_ready(
            processes,
            gateway,
            tmp_path,
            nats=urls,
            host=LOOPBACK,
            port="0",
            ready="gateway ready",
        )


def test_kubernetes_gateway_answers_its_probes_and_prometheus(
    processes: Processes, tmp_path: Path
) -> None:
    """On the cluster of nats-cluster-n*.conf, with the projector of kubernetes/projector.yaml
    running, the gateway of kubernetes/gateway.yaml (its token registry made with runstate
    auth token create) answers 200 on its liveness and readiness probes' paths with no token,
    refuses /metrics without one, and with a reader's token, as deploy/prometheus.yml's
    Kubernetes job scrapes it, answers in Prometheus' text format with the replica's lag
    in events and in milliseconds."""
    confs, _ = remap_confs(CLUSTER_CONFS, tmp_path)
    for conf in confs:
        processes.start([find_nats_server(), "-c", conf], conf.stem)
    await_meta_leader(processes, [port_of(conf, "http") for conf in confs])
    urls = ",".join(f"nats://{LOOPBACK}:{port_of(conf, 'listen')}" for conf in confs)
    kubernetes = [i for i in INVOCATIONS if i.source.startswith("kubernetes/")]
    (provisioner,) = [i for i in kubernetes if i.argv[0] == "provision"]
    run_to_completion(provisioner, tmp_path, nats=urls)  # as the admin: its credentials
    (projector,) = [i for i in kubernetes if i.argv[0] == "projector"]
    process = start_invocation(processes, projector, tmp_path, nats=urls)
    await_output(processes, process, projector.source, f"replica ready on {urls}")
    (gateway,) = [i for i in INVOCATIONS if i.source.startswith("kubernetes/gateway.yaml")]
    # the Secret's registry, with a reader's token for Prometheus made as README.md says
    registry = local_path(gateway.argv[gateway.argv.index("--tokens") + 1], tmp_path)
    created = subprocess.run(
        [RUNSTATE, "auth", "token", "create", "--tokens", registry, "--role", "reader"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    (port,) = _free_ports(LOOPBACK, 1)
    process = start_invocation(
        processes,
        gateway,
        tmp_path,
        nats=urls,
        host=LOOPBACK,
        port=str(port),
    )
    await_output(processes, process, gateway.source, "gateway ready")
    (web,) = kubernetes_objects()["Deployment", "runstate-web"]["spec"]["template"]["spec"][
        "containers"
    ]
    for probe in ("livenessProbe", "readinessProbe"):  # no token: the kubelet has none
        await_healthy(processes, port, web[probe]["httpGet"]["path"])
    (job,) = [j for j in prometheus_jobs() if "dns_sd_configs" in j]
    metrics = f"http://{LOOPBACK}:{port}{job['metrics_path']}"
    status, _ = http_get(port, job["metrics_path"])
    assert status == 401  # no token, no metrics
    scrape = urllib.request.Request(
        metrics, headers={"Authorization": f"Bearer {created.stdout.strip()}"}
    )
    with urllib.request.urlopen(scrape) as response:
        text = response.read().decode()
    samples = {
        sample.name: sample.value
        for family in prometheus_client.parser.text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["runstate_query_service_up"] == 1
    assert samples["runstate_projector_lag_events"] >= 0
    assert samples["runstate_projector_lag_milliseconds"] >= 0


def test_tls_fragment_makes_the_cluster_verify_certificates(
    processes: Processes, tmp_path: Path
) -> None:
    """nats-tls.conf, its certificate paths moved to a CA made for the test and included in
    nats-cluster-n*.conf as its comment says (top level and cluster block), passes
    nats-server -t and forms the cluster over verified TLS routes; the nodes require TLS
    and verify clients, and a runstate client with a certificate of the CA writes to it
    while one without is refused."""
    pki = make_pki(tmp_path / "pki")
    names = {
        "server.pem": pki.server_cert,
        "server-key.pem": pki.server_key,
        "ca.pem": pki.ca,
    }
    text = TLS_CONF.read_text()
    for path in re.findall(r'"(/etc/runstate/tls/[^"]+)"', text):
        text = text.replace(path, str(names[Path(path).name]))
    assert "/etc/" not in text
    fragment = tmp_path / TLS_CONF.name
    fragment.write_text(text)
    checked = subprocess.run(
        [find_nats_server(), "-t", "-c", fragment], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    confs, _ = remap_confs(CLUSTER_CONFS, tmp_path)
    include = f"include ./{fragment.name}"  # as its comment says: relative to the node's config
    assert include in TLS_CONF.read_text()
    for conf in confs:
        node = conf.read_text()
        assert node.count("cluster {\n") == 1
        node = node.replace("cluster {\n", f"cluster {{\n  {include}\n", 1)
        conf.write_text(f"{include}\n{node}")
        processes.start([find_nats_server(), "-c", conf], conf.stem)
    monitors = [port_of(conf, "http") for conf in confs]
    await_meta_leader(processes, monitors)
    for port in monitors:
        _, varz = http_get(port, "/varz")
        assert varz is not None and varz["tls_required"] and varz["tls_verify"]
        _, routez = http_get(port, "/routez")
        assert routez is not None and routez["num_routes"] >= 2
    url = ",".join(f"nats://{LOOPBACK}:{port_of(conf, 'listen')}" for conf in confs)

    auth = tmp_path / "auth"  # the roles' block the node configs include (remap_confs)
    certificate = {"tls_cert": pki.client_cert, "tls_key": pki.client_key}
    admin = Settings(
        nats_url=url, replicas=3, data_dir=tmp_path / "admin", credentials=auth / "admin.nk"
    )
    anyio.run(provision_server, admin.replace(tls_ca=pki.ca, **certificate))

    async def use(**tls: Path) -> str:
        settings = Settings(
            nats_url=url,
            replicas=3,
            data_dir=tmp_path / "client",
            credentials=auth / "writer.nk",
            **tls,
        )
        async with connect(settings=settings, projector=False) as client:
            run = await client.create_run("Secure")
            return run.pathspec

    assert anyio.run(functools.partial(use, tls_ca=pki.ca, **certificate)) == "Secure/1"
    with pytest.raises(ConfigurationError, match="asks for a client certificate"):
        anyio.run(functools.partial(use, tls_ca=pki.ca))


# -- runstate command lines ---------------------------------------------------------------------


def localized(
    invocation: Invocation, tmp_path: Path, values: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """A deploy file's runstate command line and environment, /var/ and /etc/ paths moved
    under ``tmp_path`` and the flags in ``values`` replaced."""

    def local(value: str) -> str:
        return local_path(value, tmp_path)

    argv = [local(a) for a in invocation.argv]
    for name, value in values.items():
        argv[argv.index(f"--{name.replace('_', '-')}") + 1] = value
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTATE_")}
    env |= {k: local(v) for k, v in invocation.env.items()}
    env.setdefault("RUNSTATE_DATA_DIR", str(tmp_path / "default"))
    # nothing may land in the real home's data directory
    env |= {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "home" / "data")}
    return argv, env


def run_to_completion(invocation: Invocation, tmp_path: Path, **values: str) -> str:
    """Run a deploy file's one-shot runstate command line (``localized``); it must succeed."""
    argv, env = localized(invocation, tmp_path, values)
    done = subprocess.run(
        [RUNSTATE, *argv], capture_output=True, text=True, env=env, timeout=READY_TIMEOUT * 3
    )
    assert done.returncode == 0, f"{invocation.source}: {done.stdout}{done.stderr}"
    return done.stdout


def await_output(
    processes: Processes, process: subprocess.Popen[bytes], source: str, ready: str
) -> str:
    """What ``process`` printed, once it has printed ``ready``."""
    deadline = time.monotonic() + READY_TIMEOUT
    while ready not in processes.log_of(process):
        processes.check_running()
        if time.monotonic() > deadline:
            pytest.fail(f"{source} was not ready:\n{processes.logs()}")
        time.sleep(0.1)
    return processes.log_of(process)


def local_path(value: str, tmp_path: Path) -> str:
    """A deploy file's /var or /etc path moved under ``tmp_path``; other values as they are."""
    if value.startswith(("/var/", "/etc/")):
        return str(tmp_path / value.removeprefix("/"))
    return value


def start_invocation(
    processes: Processes, invocation: Invocation, tmp_path: Path, **values: str
) -> subprocess.Popen[bytes]:
    """Start a deploy file's runstate command line (``localized``), as ``run_until_ready``
    runs it."""
    argv, env = localized(invocation, tmp_path, values)
    name = invocation.source.replace("/", "_").replace(":", "_")
    return processes.start([RUNSTATE, *argv], name, env)


def run_until_ready(
    processes: Processes, invocation: Invocation, tmp_path: Path, *, ready: str, **values: str
) -> str:
    """Run a deploy file's runstate command line (``localized``); wait for its ``ready``
    line, then stop it with SIGTERM, expect a clean exit, and return what it printed until
    ready."""
    process = start_invocation(processes, invocation, tmp_path, **values)
    output = await_output(processes, process, invocation.source, ready)
    for line in output.splitlines():
        if re.match(r"\s+(data dir|projector store):", line):
            assert str(tmp_path) in line, line
    assert processes.finish(process) == 0, processes.logs() + output
    return output


def test_server_unit_command_runs(processes: Processes, tmp_path: Path) -> None:
    """runstate-server.service's command line starts the embedded server on its --data-dir
    and --port (remapped to a temporary directory and a free port) and stops on SIGTERM."""
    (invocation,) = [inv for inv in INVOCATIONS if inv.source == "runstate-server.service"]
    (port,) = _free_ports(LOOPBACK, 1)
    run_until_ready(
        processes,
        invocation,
        tmp_path,
        port=str(port),
        ready=f"runstate server ready: nats://{LOOPBACK}:{port}",
    )
    assert (tmp_path / "var" / "lib" / "runstate" / "jetstream").is_dir()


@pytest.fixture(scope="module")
def cli_help() -> str:
    """``runstate --help`` from the console script."""
    done = subprocess.run([RUNSTATE, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_deploy_files_run_runstate_command_lines() -> None:
    """The units, the compose file and the Kubernetes manifests each run a runstate command."""
    sources = {inv.source.split(":")[0] for inv in INVOCATIONS}
    assert sources == {rel(u) for u in UNITS} | {"compose.yaml"} | {
        rel(p) for p in KUBERNETES if p.name != "nats.yaml"
    }


def run_console_script(argv: Sequence[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Call the ``runstate`` console script's entry point in this process with ``argv``;
    return its exit status and what it printed (stdout, then stderr)."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="runstate")
    main = entry.load()
    monkeypatch.setattr(sys, "argv", ["runstate", *argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=lambda inv: inv.source)
def test_command_and_flags_are_listed_by_the_cli(
    invocation: Invocation, cli_help: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command is one `runstate --help` lists, the CLI parses the command line (with
    --help appended, through the console script's entry point), and `runstate COMMAND --help`
    lists each of its flags."""
    command = invocation.argv[0]
    assert re.search(rf"^\s+{re.escape(command)}\s", cli_help, re.MULTILINE), (
        f"runstate --help does not list {command}"
    )
    code, output = run_console_script([*invocation.argv, "--help"], monkeypatch)
    assert code == 0, output
    for flag in flags(invocation.argv[1:]):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", output, re.MULTILINE), (
            f"runstate {command} --help does not list {flag}"
        )


@pytest.mark.parametrize(
    "invocation", [inv for inv in INVOCATIONS if inv.env], ids=lambda inv: inv.source
)
def test_environment_variables_are_read_by_the_settings(invocation: Invocation) -> None:
    """Each RUNSTATE_* variable the deploy file sets is one the CLI's settings read (setting it
    to the file's value changes them) and its value is accepted."""
    default = Settings.from_env({})
    for name, value in invocation.env.items():
        assert name.startswith("RUNSTATE_"), name
        assert Settings.from_env({name: value}) != default, f"{name} is not read"


# -- systemd -----------------------------------------------------------------------------------


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the units, the runstate executable
    they name replaced by a stub (they are verified together: one orders after the other)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (.ci/run does)"
    stub = tmp_path / "bin" / "runstate"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for unit in UNITS:
        text, stubbed = re.subn(
            r"^ExecStart=\S*/runstate\b", f"ExecStart={stub}", unit.read_text(), flags=re.M
        )
        assert stubbed == 1, f"{unit.name}: ExecStart should run runstate by its full path"
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    env = os.environ | {"SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    done = subprocess.run(
        [analyze, "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_builds_the_package_and_runs_the_console_script() -> None:
    """The Dockerfile's base Python meets requires-python, it copies what `pip install .`
    needs (every package folder, the files pyproject names), each COPY source exists, and its
    ENTRYPOINT is the runstate console script."""
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    (base,) = [arg for op, arg in instructions if op == "FROM"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)[-\w.]*", base)
    assert match, base
    project = pyproject()["project"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert minimum, project["requires-python"]
    assert tuple(map(int, match.groups())) >= tuple(map(int, minimum.groups()))
    copied: set[str] = set()
    for op, arg in instructions:
        if op == "COPY":
            *sources, _ = shlex.split(arg)
            for source in sources:
                matches = list(ROOT.glob(source))
                assert matches, f"COPY {source}: nothing in the repository matches"
                copied |= {m.relative_to(ROOT).as_posix() for m in matches}
    needed = {"pyproject.toml", project["readme"], "LICENSE"}
    needed |= set(pyproject()["tool"]["setuptools"]["package-dir"].values())
    assert needed <= copied, f"the Dockerfile does not copy {needed - copied}"
    (entrypoint,) = [json.loads(arg) for op, arg in instructions if op == "ENTRYPOINT"]
    assert entrypoint == [next(iter(project["scripts"]))] == ["runstate"]
