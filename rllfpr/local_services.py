"""Start a throw-away Mosquitto and Redis >= 8 on free loopback ports.

Used by the integration tests and by the demo; production deployments use ``deploy/``.
Binaries come from ``RLLFPR_MOSQUITTO`` / ``RLLFPR_REDIS_SERVER`` (written by
``scripts/setup``), ``PATH``, Debian's ``/usr/sbin/mosquitto``, or the Redis 8 that
``scripts/install-redis8`` built into the cache (``$RLLFPR_CACHE``, else
``$XDG_CACHE_HOME/rllfpr``, else ``~/.cache/rllfpr``), so that ``.venv/bin/rllfpr demo`` works
without sourcing ``.venv/rllfpr.env``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# A port that was free when picked can be bound by another process before the server binds it;
# a start that loses that race is tried again on new ports, this many times in all.
PORT_ATTEMPTS = 4


class ServiceError(RuntimeError):
    """A local service could not be found or started."""


class PortTakenError(ServiceError):
    """The server exited because another process bound its port first."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports, free when picked: the probes are held open together,
    so the kernel cannot hand out one port twice (closing a probe before picking the next can)."""
    with contextlib.ExitStack() as stack:
        probes = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]


def start_on_free_ports(count: int, start: Callable[[list[int]], T]) -> T:
    """``start(ports)`` on ``count`` fresh free ports, again on new ones while a port is taken
    before the server binds it (``PortTakenError``), at most ``PORT_ATTEMPTS`` times."""
    for _ in range(PORT_ATTEMPTS - 1):
        with contextlib.suppress(PortTakenError):
            return start(free_ports(count))
    return start(free_ports(count))


def _find_binary(env_var: str, name: str, fallbacks: tuple[str, ...] = ()) -> str:
    candidates = [os.environ.get(env_var), shutil.which(name), *fallbacks]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(
        f"{name} not found: run scripts/setup, or set {env_var} to the binary's path"
    )


def _wait_for_port(endpoint: Endpoint, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text() if log.exists() else ""
            error = PortTakenError if "Address already in use" in output else ServiceError
            raise error(f"service exited with {process.returncode}: {output[-2000:]}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((endpoint.host, endpoint.port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise ServiceError(f"service did not listen on {endpoint} within 15 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start(arguments: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start a server process and wait until it listens on ``port`` (stopped if it does not).
    ``log`` is emptied first and takes the server's standard error (where Mosquitto reports a
    port it cannot bind) besides its own log lines: what it holds afterwards is this start's."""
    log.write_text("")
    with log.open("ab") as stderr:
        process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for_port(Endpoint("127.0.0.1", port), process, log)
    except BaseException:
        _stop(process)
        raise
    return process


@contextlib.contextmanager
def _serving(arguments: Callable[[int], list[str]], log: Path) -> Iterator[Endpoint]:
    """Run the server ``arguments(port)`` on a free port, stop it afterwards."""
    port, process = start_on_free_ports(
        1, lambda ports: (ports[0], _start(arguments(ports[0]), ports[0], log))
    )
    try:
        yield Endpoint("127.0.0.1", port)
    finally:
        _stop(process)


# Fits the recognizer's acknowledge-after-processing consumer: enough in-flight QoS 1 messages
# for a full micro-batch, a deep queue for disconnected persistent sessions.
MOSQUITTO_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 64
max_queued_messages 100000
log_dest file {log}
log_type error
log_type warning
"""


@contextlib.contextmanager
def mosquitto(extra_config: str = "") -> Iterator[Endpoint]:
    """Run a Mosquitto 2.x broker on a free port for the duration of the block."""
    binary = _find_binary("RLLFPR_MOSQUITTO", "mosquitto", ("/usr/sbin/mosquitto",))
    with tempfile.TemporaryDirectory(prefix="rllfpr-mosquitto-") as workdir:
        log = Path(workdir) / "mosquitto.log"
        config = Path(workdir) / "mosquitto.conf"

        def arguments(port: int) -> list[str]:
            config.write_text(MOSQUITTO_CONFIG.format(port=port, log=log) + extra_config)
            return [binary, "-c", str(config)]

        with _serving(arguments, log) as endpoint:
            yield endpoint


def redis_major_version(binary: str) -> int:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.", output.stdout)
    if not match:
        raise ServiceError(f"cannot read the version of {binary}: {output.stdout!r}")
    return int(match.group(1))


def built_redis_servers() -> list[Path]:
    """The redis-server binaries scripts/install-redis8 built into the cache, newest first."""
    cache = os.environ.get("RLLFPR_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rllfpr"
    )
    found = Path(cache).expanduser().glob("redis-*/bin/redis-server")
    version = re.compile(r"redis-(\d+)\.(\d+)\.(\d+)$")

    def release(binary: Path) -> tuple[int, ...]:
        match = version.search(binary.parent.parent.name)
        return tuple(int(part) for part in match.groups()) if match else (0,)

    return sorted(found, key=release, reverse=True)


def find_redis_server() -> str:
    """A redis-server >= 8: ``RLLFPR_REDIS_SERVER`` if set (it must be one), else the first of
    ``PATH`` and the cache's builds that is."""
    chosen = os.environ.get("RLLFPR_REDIS_SERVER")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise ServiceError(f"RLLFPR_REDIS_SERVER={chosen} is not an executable file")
        if (major := redis_major_version(chosen)) < 8:
            raise ServiceError(
                f"{chosen} is Redis {major}; vector sets need Redis >= 8 "
                "(run scripts/install-redis8)"
            )
        return chosen
    seen = []
    for candidate in [shutil.which("redis-server"), *map(str, built_redis_servers())]:
        if candidate and os.access(candidate, os.X_OK):
            if redis_major_version(candidate) >= 8:
                return candidate
            seen.append(candidate)
    older = f" ({', '.join(seen)}: older than 8)" if seen else ""
    raise ServiceError(
        f"no redis-server >= 8 found{older}: run scripts/setup (it builds one into the "
        "cache), or set RLLFPR_REDIS_SERVER to a redis-server >= 8"
    )


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[Endpoint]:
    """Run a Redis >= 8 server (vector sets) on a free port, without persistence."""
    binary = find_redis_server()
    with tempfile.TemporaryDirectory(prefix="rllfpr-redis-") as workdir:
        log = Path(workdir) / "redis.log"

        def arguments(port: int) -> list[str]:
            arguments = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            arguments += ["--appendonly", "no", "--dir", workdir, "--logfile", str(log)]
            return arguments + (["--requirepass", password] if password else [])

        with _serving(arguments, log) as endpoint:
            yield endpoint


@dataclass
class RedisCluster:
    """A Redis Cluster on loopback ports: ``primaries`` primaries with ``replicas`` replicas
    each. ``kill`` and ``restart`` act on one node, as a crash and its return."""

    binary: str
    workdir: Path
    ports: list[int]
    bus_ports: dict[int, int]  # node port -> cluster bus port (not port + 10000: may be > 65535)
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """A URL naming one node: cluster clients discover the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def arguments(self, port: int) -> list[str]:
        directory = self.workdir / str(port)
        directory.mkdir(exist_ok=True)
        return [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(self.bus_ports[port]),
            "--cluster-node-timeout",
            "1000",  # ms without an answer before a primary is failed over
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(directory),
            "--logfile",
            "redis.log",
        ]

    def start_node(self, port: int) -> None:
        process = subprocess.Popen(self.arguments(port), stdout=subprocess.DEVNULL)
        self.processes[port] = process
        _wait_for_port(Endpoint("127.0.0.1", port), process, self.workdir / str(port) / "redis.log")

    def stop(self) -> None:
        """Stop every running node."""
        for process in self.processes.values():
            _stop(process)

    def kill(self, port: int) -> None:
        """SIGKILL one node (no shutdown, no save)."""
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins from its nodes.conf and append-only file."""
        self.start_node(port)

    def cli(self, *arguments: str, port: int | None = None) -> str:
        result = subprocess.run(
            [self.cli_binary, "-p", str(port or self.ports[0]), *arguments],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout

    @property
    def cli_binary(self) -> str:
        return str(Path(self.binary).with_name("redis-cli"))

    def primaries(self) -> list[int]:
        """Ports of the primaries that serve slots now."""
        ports = []
        for line in self.cli("cluster", "nodes", port=self.alive()[0]).splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(ports)

    def alive(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says the cluster is ok and all slots are served."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for port in self.alive():
                with contextlib.suppress(subprocess.SubprocessError):
                    states.append(self.cli("cluster", "info", port=port))
            if states and all(
                "cluster_state:ok" in state and "cluster_slots_ok:16384" in state
                for state in states
            ):
                return
            time.sleep(0.2)
        raise ServiceError(f"Redis Cluster not healthy within {timeout_s} s")


@contextlib.contextmanager
def redis_cluster(primaries: int = 3, replicas: int = 1) -> Iterator[RedisCluster]:
    """Run a Redis >= 8 Cluster on free loopback ports for the duration of the block (plain
    ``redis-server --cluster-enabled yes`` nodes joined by ``redis-cli --cluster create``)."""
    binary = _find_binary("RLLFPR_REDIS_SERVER", "redis-server")
    if (major := redis_major_version(binary)) < 8:
        raise ServiceError(f"{binary} is Redis {major}; vector sets need Redis >= 8")
    nodes = primaries * (1 + replicas)
    with tempfile.TemporaryDirectory(prefix="rllfpr-redis-cluster-") as workdir:

        def start_nodes(picked: list[int]) -> RedisCluster:
            ports, bus_ports = picked[:nodes], picked[nodes:]
            cluster = RedisCluster(
                binary, Path(workdir), ports, dict(zip(ports, bus_ports, strict=True)), {}
            )
            try:
                for port in ports:
                    cluster.start_node(port)
            except BaseException:
                cluster.stop()
                raise
            return cluster

        cluster = start_on_free_ports(2 * nodes, start_nodes)
        ports = cluster.ports
        try:
            subprocess.run(
                [
                    cluster.cli_binary,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas",
                    str(replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                check=True,
                timeout=60,
            )
            cluster.wait_healthy()
            yield cluster
        finally:
            cluster.stop()
