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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be found or started."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
            raise ServiceError(
                f"service exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
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


@contextlib.contextmanager
def _serving(arguments: list[str], port: int, log: Path) -> Iterator[Endpoint]:
    """Start a server process, wait until it listens on ``port``, stop it afterwards."""
    log.touch()
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        endpoint = Endpoint("127.0.0.1", port)
        _wait_for_port(endpoint, process, log)
        yield endpoint
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
        port = free_port()
        log = Path(workdir) / "mosquitto.log"
        config = Path(workdir) / "mosquitto.conf"
        config.write_text(MOSQUITTO_CONFIG.format(port=port, log=log) + extra_config)
        with _serving([binary, "-c", str(config)], port, log) as endpoint:
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
        port = free_port()
        log = Path(workdir) / "redis.log"
        arguments = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        arguments += ["--appendonly", "no", "--dir", workdir, "--logfile", str(log)]
        if password:
            arguments += ["--requirepass", password]
        with _serving(arguments, port, log) as endpoint:
            yield endpoint
