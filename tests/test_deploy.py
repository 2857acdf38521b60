"""deploy/: every file parses, every service config validates, and compose, Kubernetes and systemd
reference files, CLI commands, Settings fields and HTTP endpoints that really exist."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import paho.mqtt.client as paho
import pytest
import redis
import yaml
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.main import get_command
from typer.testing import CliRunner

from recognizer_service.api import create_app
from recognizer_service.metrics import Metrics
from recognizer_service.service import RecognizerService
from rllfpr import local_services, mqtt
from rllfpr.cli import app
from rllfpr.config import ConfigError, MqttSettings, Settings, load_settings
from rllfpr.wire import topics
from tests.support.deploy import (
    COMPOSE_DIR,
    CONFIG_DIR,
    DEPLOY,
    REPO,
    compose,
    load_documents,
    mounts,
)
from trainer.rotation import RotationConfig

K8S_DIR = DEPLOY / "k8s"
UNIT = DEPLOY / "systemd" / "rllfpr-agent@.service"
INIT_SECRETS = COMPOSE_DIR / "init-secrets.sh"
SETTINGS_CONFIGS = ("agent.yaml", "recognizer.yaml", "trainer.yaml")
RLLFPR_IMAGE_SERVICES = ("recognizer", "agent-lobby-cam-0", "trainer")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not found")


# --- helpers ------------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    return [
        document
        for resource in kustomization["resources"]
        for document in load_documents(K8S_DIR / resource)
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def resolve_cli(tokens: list[str]) -> tuple[list[str], Any]:
    """The `rllfpr` (sub)command named by the leading words of ``tokens``. Typer ships its own
    click, so groups are recognized by their ``commands``, not by a click class."""
    command: Any = get_command(app)
    path = []
    for token in tokens:
        if token not in getattr(command, "commands", {}):
            break
        command = command.commands[token]
        path.append(token)
    return path, command


def assert_cli_accepts(tokens: list[str]) -> None:
    """``tokens`` (the arguments after `rllfpr`) name a real command and only its options."""
    path, command = resolve_cli(tokens)
    assert path, f"no rllfpr command in {tokens}"
    assert not hasattr(command, "commands"), f"rllfpr {' '.join(path)} needs a subcommand"
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
    used = {token for token in tokens[len(path) :] if token.startswith("--")}
    assert used <= known, f"rllfpr {' '.join(path)} has no option {sorted(used - known)}"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output


def load_with_environment(
    config: Path, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name, value in environment.items():
        if name.startswith("RLLFPR_") and name != "RLLFPR_CONFIG":
            monkeypatch.setenv(name, value)
    return load_settings(config)


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


# --- every YAML file, every service config ------------------------------------------------------


YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    documents = load_documents(path)
    assert documents
    assert all(isinstance(document, dict) and document for document in documents)


def test_every_file_of_deploy_config_is_validated_here() -> None:
    present = {p.name for p in CONFIG_DIR.iterdir()}
    assert present == {*SETTINGS_CONFIGS, "rotation.yaml"}


@pytest.mark.parametrize("name", SETTINGS_CONFIGS)
def test_service_configs_validate_and_hold_no_secret(name: str) -> None:
    settings = load_settings(CONFIG_DIR / name)
    assert settings.mqtt.tls
    assert settings.mqtt.port == 8883
    assert settings.mqtt.password is None
    assert settings.redis.password is None
    assert settings.recognizer.api_token is None


@pytest.mark.parametrize("name", SETTINGS_CONFIGS)
def test_a_typo_in_a_service_config_is_refused(name: str, tmp_path: Path) -> None:
    document = yaml.safe_load((CONFIG_DIR / name).read_text())
    section = next(key for key, value in document.items() if isinstance(value, dict))
    field = next(iter(document[section]))
    document[section][f"{field}_"] = document[section].pop(field)
    broken = tmp_path / name
    broken.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=rf"{section}\.{field}_"):
        load_settings(broken)


def test_the_rotation_config_validates_and_is_consistent() -> None:
    rotation = RotationConfig.from_yaml(CONFIG_DIR / "rotation.yaml")
    experiment = rotation.experiment
    assert experiment.recognizer.input_size == experiment.data.size
    assert 0 < rotation.accuracy_floor < 1


def test_the_recognizer_batch_fits_the_brokers_inflight_window() -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    window = int(re.search(r"^max_inflight_messages (\d+)", conf, re.M).group(1))  # type: ignore[union-attr]
    assert 2 * load_settings(CONFIG_DIR / "recognizer.yaml").recognizer.max_batch <= window


# --- docker compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compose folder as `init-secrets.sh` and `init-secrets.sh keys` leave it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    folder = tmp_path_factory.mktemp("compose")
    offline = tmp_path_factory.mktemp("offline")
    result = CliRunner().invoke(app, ["keys", "init", str(offline)])
    assert result.exit_code == 0, result.output
    for arguments in ([], ["keys", str(offline)]):
        subprocess.run(["bash", str(INIT_SECRETS), "--dir", str(folder), *arguments], check=True)
    (folder / "offline").symlink_to(offline)
    return folder


def host_path(service: dict[str, Any], container_path: Path | str, initialized: Path) -> Path:
    """Where a path inside a compose container comes from on the host (deepest mount wins)."""
    inside = PurePosixPath(container_path)
    candidates = [m for m in mounts(service) if inside == m.target or m.target in inside.parents]
    assert candidates, f"nothing mounted at {inside}"
    mount = max(candidates, key=lambda m: len(m.target.parts))
    rest = inside.relative_to(mount.target)
    if mount.source.startswith("../"):
        return (COMPOSE_DIR / mount.source / rest).resolve()
    if mount.source.startswith("./"):
        return initialized / mount.source / rest
    assert "RLLFPR_OFFLINE_KEYS" in mount.source, f"unexpected host path {mount.source}"
    return initialized / "offline" / rest


def test_compose_has_the_expected_services_and_images() -> None:
    services = compose()["services"]
    assert set(services) == {"mqtt", "redis", "prometheus", "grafana", *RLLFPR_IMAGE_SERVICES}
    assert services["mqtt"]["image"] == "eclipse-mosquitto:2"
    assert services["redis"]["image"] == "redis:8"
    assert services["trainer"]["profiles"] == ["trainer"]
    for name in RLLFPR_IMAGE_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/compose/Dockerfile"


@pytest.mark.parametrize("service", ["recognizer", "trainer"])
def test_compose_gives_the_gpu_services_a_gpu_and_the_cpu_override_removes_it(
    service: str,
) -> None:
    devices = compose()["services"][service]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    override = load_documents(COMPOSE_DIR / "docker-compose.cpu.yml")[0]
    assert override["services"][service]["deploy"].tag == "!reset"


@pytest.mark.parametrize("service", RLLFPR_IMAGE_SERVICES)
def test_compose_commands_exist_in_the_cli(service: str) -> None:
    assert_cli_accepts(compose()["services"][service]["command"])


def test_compose_repository_files_exist() -> None:
    for service in compose()["services"].values():
        for mount in mounts(service):
            if mount.source.startswith("../"):
                assert (COMPOSE_DIR / mount.source).exists(), mount.source
    build = compose()["services"]["recognizer"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


def test_compose_secrets_and_state_are_what_init_secrets_makes(initialized: Path) -> None:
    for service in compose()["services"].values():
        for mount in mounts(service):
            if mount.source.startswith("./"):
                assert (initialized / mount.source).exists(), mount.source
        if "env_file" in service:
            assert (initialized / service["env_file"]).is_file()
    modes = {p.stat().st_mode & 0o777 for p in (initialized / "secrets").rglob("*")}
    assert modes <= {0o600, 0o700}


@pytest.mark.parametrize("service", RLLFPR_IMAGE_SERVICES)
def test_compose_services_find_their_settings_tls_and_keys(
    service: str, initialized: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file a service's Settings name is mounted from somewhere that exists."""
    definition = compose()["services"][service]
    environment = dict(definition["environment"])
    for env_file in [definition["env_file"]] if "env_file" in definition else []:
        environment |= read_env_file(initialized / env_file)
    config = host_path(definition, environment["RLLFPR_CONFIG"], initialized)
    settings = load_with_environment(config, environment, monkeypatch)
    wanted = [settings.mqtt.ca_file, settings.mqtt.cert_file, settings.mqtt.key_file]
    wanted += [*settings.keys.trusted_signers, settings.keys.fleet_key_file]
    wanted += [settings.trainer.signing_key_file] if service == "trainer" else []
    wanted += [settings.trainer.rotation_config] if service == "trainer" else []
    for path in filter(None, wanted):
        assert host_path(definition, path, initialized).is_file(), f"{service}: {path}"
    if service == "recognizer":
        assert settings.redis.password is not None
        assert settings.recognizer.api_token is not None
        assert settings.keys.fleet_key_file is None  # recognizers never hold an SN key


def written_paths(settings: Settings, program: str) -> list[Path]:
    """The folders a program writes to, from its Settings."""
    paths = {
        "agent": [settings.agent.spool_dir, settings.keys.directory],
        "recognizer": [settings.recognizer.model_store, settings.keys.directory],
        "trainer": [
            settings.cache,
            settings.trainer.work_directory,
            settings.recognizer.model_store,
            settings.keys.directory,
        ],
    }
    return paths[program]


@pytest.mark.parametrize("service", RLLFPR_IMAGE_SERVICES)
def test_compose_services_write_only_into_their_state_folders(
    service: str, initialized: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = compose()["services"][service]
    environment = definition["environment"]
    config = host_path(definition, environment["RLLFPR_CONFIG"], initialized)
    settings = load_with_environment(config, environment, monkeypatch)
    for path in written_paths(settings, service.split("-")[0]):
        source = host_path(definition, path, initialized)
        assert initialized / "state" in source.parents, f"{service} writes {path} to {source}"
    for volume, mount in zip(definition["volumes"], mounts(definition), strict=True):
        read_only = volume.endswith(":ro") if isinstance(volume, str) else volume["read_only"]
        assert read_only or mount.source.startswith("./state/"), f"{service}: {mount}"


def test_compose_mounts_what_the_mosquitto_and_redis_configs_name(initialized: Path) -> None:
    services = compose()["services"]
    mosquitto_conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    named = re.findall(r"^\w+ (/\S+)", mosquitto_conf, re.M)
    assert len(named) >= 6
    for path in named:
        assert host_path(services["mqtt"], path, initialized).exists(), path
    redis_conf = (DEPLOY / "redis" / "redis.conf").read_text()
    acl = re.search(r"^aclfile (\S+)", redis_conf, re.M).group(1)  # type: ignore[union-attr]
    assert host_path(services["redis"], acl, initialized).is_file()
    config_path = services["redis"]["command"][1]
    assert host_path(services["redis"], config_path, initialized).is_file()


def test_the_image_copies_only_what_the_build_context_lets_through() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    allowed = {
        line[1:].rstrip("/")
        for line in (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"
    # facenet-pytorch pins an old torch: installed without dependencies, as scripts/setup does.
    assert re.search(r"pip install --no-deps .*\^facenet-pytorch==.* constraints\.txt", dockerfile)


# --- Kubernetes ---------------------------------------------------------------------------------


def test_k8s_manifests_have_the_expected_kinds() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in k8s_objects()}
    assert {
        ("Namespace", "rllfpr"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("Deployment", "recognizer"),
        ("Service", "recognizer"),
        ("ScaledObject", "recognizer"),
        ("StatefulSet", "emqx"),
        ("Service", "mqtt"),
    } <= kinds
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "rllfpr"
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (K8S_DIR / file).is_file(), file


def test_k8s_services_keep_the_hostnames_of_the_shared_configs() -> None:
    settings = load_settings(CONFIG_DIR / "recognizer.yaml")
    assert k8s_object("Service", settings.mqtt.host)["spec"]["ports"][0]["port"] == 8883
    redis_host = re.match(r"rediss?://([^:/]+)", settings.redis.url).group(1)  # type: ignore[union-attr]
    assert k8s_object("Service", redis_host)["spec"]["ports"][0]["port"] == 6379


def recognizer_container() -> dict[str, Any]:
    pod = k8s_object("Deployment", "recognizer")["spec"]["template"]["spec"]
    return pod["containers"][0]


def test_the_recognizer_probes_and_scrape_target_are_real_endpoints() -> None:
    served = {
        route.path  # type: ignore[attr-defined]
        for route in create_app(RecognizerService(Settings())).routes  # not started
        if "GET" in getattr(route, "methods", set())
    }
    container = recognizer_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # broker, Redis, models
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the worker runs
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in served
        assert container[probe]["httpGet"]["port"] == "http"
    http_port = load_settings(CONFIG_DIR / "recognizer.yaml").recognizer.http_port
    assert container["ports"] == [{"name": "http", "containerPort": http_port}]
    annotations = k8s_object("Deployment", "recognizer")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == str(http_port)
    assert annotations["annotations"]["prometheus.io/path"] in served


def test_the_recognizer_deployment_runs_a_real_command_on_a_gpu() -> None:
    container = recognizer_container()
    assert_cli_accepts(container["args"])
    assert "--leave-on-exit" in container["args"]  # pod names never come back
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RLLFPR_CONFIG"] == config_mount["mountPath"]
    assert config_mount["subPath"] == "recognizer.yaml"


def test_the_recognizer_pod_writes_only_into_its_volumes() -> None:
    container = recognizer_container()
    pod = k8s_object("Deployment", "recognizer")["spec"]["template"]["spec"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    writable_volumes = {
        v["name"] for v in pod["volumes"] if "emptyDir" in v or "persistentVolumeClaim" in v
    }
    writable = [
        PurePosixPath(m["mountPath"])
        for m in container["volumeMounts"]
        if m["name"] in writable_volumes and not m.get("readOnly")
    ]
    settings = load_settings(CONFIG_DIR / "recognizer.yaml")
    for path in written_paths(settings, "recognizer"):
        inside = PurePosixPath(path)
        assert any(inside == m or m in inside.parents for m in writable), path
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert PurePosixPath(models["mountPath"]) == PurePosixPath(settings.recognizer.model_store)


def test_the_autoscaler_queries_metrics_the_recognizer_exports() -> None:
    scaled = k8s_object("ScaledObject", "recognizer")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "recognizer"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "Value"
    exported = generate_latest(Metrics().registry).decode()
    names = set(re.findall(r"\b(rllfpr_[a-z_]+)\{", trigger["metadata"]["query"]))
    assert names == {"rllfpr_batch_size_sum", "rllfpr_batch_size_count"}
    for name in names:
        assert re.search(rf"^{name} ", exported, re.M), f"{name} is not exported"
    max_batch = load_settings(CONFIG_DIR / "recognizer.yaml").recognizer.max_batch
    assert 1 < float(trigger["metadata"]["threshold"]) < max_batch


def mosquitto_acl_rules() -> set[tuple[str, str, str]]:
    """(user, publish|subscribe, topic) granted by deploy/mosquitto/rllfpr.acl; user 'all' for
    patterns, with %u written as EMQX's ${username}."""
    rules, user = set(), ""
    access = {"write": ["publish"], "read": ["subscribe"], "readwrite": ["publish", "subscribe"]}
    for line in (DEPLOY / "mosquitto" / "rllfpr.acl").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
            continue
        who = "all" if words[0] == "pattern" else user
        for action in access[words[1]]:
            rules.add((who, action, words[2].replace("%u", "${username}")))
    return rules


def emqx_acl_rules() -> set[tuple[str, str, str]]:
    text = (K8S_DIR / "emqx" / "acl.conf").read_text()
    rule = re.compile(r'\{allow, (all|\{username, "([^"]+)"\}), (\w+), \[([^\]]*)\]\}\.')
    rules = set()
    for match in rule.finditer(text):
        who = match.group(2) or "all"
        actions = ["publish", "subscribe"] if match.group(3) == "all" else [match.group(3)]
        for topic in re.findall(r'"([^"]+)"', match.group(4)):
            rules |= {(who, action, topic) for action in actions}
    assert text.rstrip().endswith("{deny, all}.")
    return rules


def test_the_emqx_acl_grants_exactly_what_the_mosquitto_acl_grants() -> None:
    assert emqx_acl_rules() == mosquitto_acl_rules()
    assert ("lobby-cam-0", "publish", topics.faces("lobby", "cam-0")) in emqx_acl_rules()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not found")
def test_the_kustomization_renders() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S_DIR)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert all(o["metadata"].get("namespace", "rllfpr") == "rllfpr" for o in objects)
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "config")["configMap"]["name"] in config_maps


# --- systemd ------------------------------------------------------------------------------------


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of the unit, in order (keys such as Environment= repeat)."""
    entries, section = [], ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            entries.append((section, key, value))
    return entries


def unit_values(key: str) -> list[str]:
    return [value for section, k, value in unit_entries() if section == "Service" and k == key]


def test_the_agent_unit_has_the_required_keys() -> None:
    assert unit_values("Restart") == ["always"]
    assert unit_values("User") == ["rllfpr"] or unit_values("DynamicUser") == ["yes"]
    assert unit_values("ProtectSystem") == ["strict"]
    assert unit_values("NoNewPrivileges") == ["yes"]
    assert unit_values("StateDirectory") == ["rllfpr-agent/%i"]
    assert unit_values("EnvironmentFile") == ["/etc/rllfpr/agents/%i.env"]
    assert ("Install", "WantedBy", "multi-user.target") in unit_entries()


def test_the_agent_unit_runs_a_real_command_with_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (exec_start,) = unit_values("ExecStart")
    binary, *arguments = shlex.split(exec_start)
    assert binary.endswith("/rllfpr")
    assert_cli_accepts(arguments)
    environment = dict(value.split("=", 1) for value in unit_values("Environment"))
    environment = {k: v.replace("%i", "lobby-cam-0") for k, v in environment.items()}
    environment |= read_env_file(DEPLOY / "systemd" / "agent.env.example")
    assert "CAMERA_URL" in environment
    settings = load_with_environment(CONFIG_DIR / "agent.yaml", environment, monkeypatch)
    assert settings.agent.id == "lobby-cam-0"
    # ProtectSystem=strict: the agent can write only below its state directory.
    state = Path("/var/lib") / unit_values("StateDirectory")[0].replace("%i", "lobby-cam-0")
    for writable in written_paths(settings, "agent"):
        assert state in writable.parents


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_accepts_the_agent_unit(tmp_path: Path) -> None:
    # The venv is not installed here: point ExecStart at a binary that exists; all else verbatim.
    (exec_start,) = unit_values("ExecStart")
    instance = tmp_path / "rllfpr-agent@lobby-cam-0.service"
    instance.write_text(UNIT.read_text().replace(exec_start.split()[0], "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_accepts_the_rotation_timer_and_its_command_exists(tmp_path: Path) -> None:
    service = DEPLOY / "systemd" / "rllfpr-rotate.service"
    exec_start = next(
        line.split("=", 1)[1]
        for line in service.read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    assert exec_start.split()[1:] == ["keys", "rotate"]
    assert CliRunner().invoke(app, ["keys", "rotate", "--help"]).exit_code == 0
    (tmp_path / service.name).write_text(
        service.read_text().replace(exec_start.split()[0], "/bin/true")
    )
    timer = DEPLOY / "systemd" / "rllfpr-rotate.timer"
    (tmp_path / timer.name).write_text(timer.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / timer.name), str(tmp_path / service.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


# --- the secrets init-secrets.sh makes work with the shipped broker and Redis configs -----------


class TlsClient:
    """An MQTT client with a certificate from init-secrets.sh, recording PUBACK reason codes."""

    def __init__(
        self, port: int, tls_dir: Path | None, ca_file: Path, timeout_s: float = 5
    ) -> None:
        settings = MqttSettings(
            host="127.0.0.1",
            port=port,
            tls=True,
            ca_file=ca_file,
            cert_file=tls_dir / "client.crt" if tls_dir else None,
            key_file=tls_dir / "client.key" if tls_dir else None,
        )
        self.acks: dict[int, ReasonCode] = {}
        self._event = threading.Condition()
        self.client = mqtt.make_client(settings, "deploy-test", client_id=uuid.uuid4().hex)
        self.client.on_publish = self._on_publish
        mqtt.connect(self.client, settings, clean_start=True, timeout_s=timeout_s)

    def _on_publish(
        self, _c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: object
    ) -> None:
        with self._event:
            self.acks[mid] = reason
            self._event.notify_all()

    def may_publish(self, topic: str) -> bool:
        mid = self.client.publish(topic, b"x", qos=1).mid
        with self._event:
            assert self._event.wait_for(lambda: mid in self.acks, timeout=5)
        return not self.acks[mid].is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def compose_broker(initialized: Path) -> Iterator[int]:
    """The shipped mosquitto.conf with compose's mounts replaced by the initialized folder."""
    port = local_services.free_port()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("listener 8883", f"listener {port} 127.0.0.1")
    for target in re.findall(r"^\w+ (/\S+)", conf, re.M):
        mqtt_service = compose()["services"]["mqtt"]
        conf = conf.replace(target, str(host_path(mqtt_service, target, initialized)), 1)
    if os.geteuid() == 0:  # compose runs the broker as the secrets' owner: no privilege drop
        conf += "\nuser root\n"
    with local_services.mosquitto(conf):
        yield port


@pytest.mark.integration
def test_the_compose_broker_takes_identities_from_certificates_and_applies_the_acl(
    compose_broker: int, initialized: Path
) -> None:
    tls = initialized / "secrets" / "tls"
    agent = TlsClient(compose_broker, tls / "lobby-cam-0", tls / "lobby-cam-0" / "ca.crt")
    try:
        assert agent.may_publish(topics.faces("lobby", "cam-0"))
        assert not agent.may_publish(topics.faces("lobby", "cam-1"))
        assert not agent.may_publish(topics.key_bundle("fleet", 1))
    finally:
        agent.close()
    with pytest.raises((mqtt.MqttError, OSError)):
        # No client certificate: the handshake fails, at once or as the connection drops.
        TlsClient(compose_broker, None, tls / "lobby-cam-0" / "ca.crt", timeout_s=2)


@pytest.mark.integration
def test_the_generated_redis_acl_admits_the_generated_password(
    initialized: Path, redis_endpoint: local_services.Endpoint
) -> None:
    secrets = initialized / "secrets"
    line = next(
        row
        for row in (secrets / "redis" / "users.acl").read_text().splitlines()
        if row.startswith("user rllfpr ")
    )
    user = f"rllfpr-{uuid.uuid4().hex[:6]}"
    admin = redis.Redis(host=redis_endpoint.host, port=redis_endpoint.port)
    admin.execute_command("ACL", "SETUSER", user, "reset", *line.split()[2:])
    password = read_env_file(secrets / "recognizer.env")["RLLFPR_REDIS__PASSWORD"]
    assert password == (secrets / "redis" / "password").read_text().strip()
    client = redis.Redis(
        host=redis_endpoint.host, port=redis_endpoint.port, username=user, password=password
    )
    assert client.ping()
    wrong = redis.Redis(
        host=redis_endpoint.host,
        port=redis_endpoint.port,
        username=user,
        password="wrong",
        retry=Retry(NoBackoff(), 0),  # one refusal is the answer; do not retry it
    )
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
