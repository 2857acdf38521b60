"""Gallery scale: bulk enrollment to 1,000,000 templates in Redis 8, and search at that size.

Two stages, each writing JSON:

``methods``: how to load fast. The same templates are inserted into a fresh vector set with
each insertion method: ``VADD`` pipelined on one connection, with ``CAS`` (the neighbour search
runs on Redis' threads, the insertion in its main thread), over several connections, with a
smaller build exploration factor (``VADD ... EF``), and with ``REDUCE`` (random projection to
fewer dimensions). Reported: templates/s, memory per template, and recall@1 against exact
search, so that a faster method is only taken if recall allows.

``scale``: one gallery grown to each size in turn (10k, 100k, 1M by default) for each
quantization (Q8, NOQUANT) with the chosen method, as ``Gallery.enroll_many`` writes it
(element ``{subject}/{template id}``, attributes, the per-subject index). At each size: the
load time of that step and the rate, memory per template (``INFO memory`` of a server holding
only this gallery), ``VSIM`` latency p50/p99 with 1 and with 8 concurrent clients, and
recall@1 against exact search (numpy, float32) at several EF; at the largest size, the time a
restarted Redis takes to load the gallery from its RDB file.

Templates are synthetic 512-d unit vectors in identity clusters (10 per identity, each at
cosine ~0.8 from its identity's centre: ``bench_recognizer.py``'s generator); probes are new
samples of enrolled identities. recall@1: the top template equals the exact nearest template;
identity recall@1: it belongs to the nearest template's identity.

Usage:
    python benchmarks/gallery_scale.py methods --size 20000 --output docs/results/gallery-scale-methods.json
    python benchmarks/gallery_scale.py scale --quantization Q8 --output docs/results/gallery-scale-q8.json
Quick check: ``scale --sizes 2000 5000 --queries 50``. Results and the commands of the recorded
runs: ``docs/results/reliability.md``, section 6.
"""  # noqa: E501

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import redis

from recognizer_service.gallery import Gallery, Template
from rllfpr import local_services
from rllfpr.local_services import Endpoint

DIM = 512
PER_IDENTITY = 10
CLUSTER_NOISE = 0.033
EFS = (50, 100, 200, 500, 1000)
CHUNK = 200  # VADDs per pipeline round trip


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class Templates:
    """Clustered templates generated in chunks (deterministic), with probes."""

    def __init__(self, size: int, queries: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        identities = max(1, size // PER_IDENTITY)
        self.centres = unit(rng.standard_normal((identities, DIM)))
        self.labels = np.repeat(np.arange(identities), PER_IDENTITY)[:size]
        self.vectors = np.empty((size, DIM), np.float32)
        for start in range(0, size, 100_000):
            stop = min(size, start + 100_000)
            noise = np.random.default_rng(seed + 1 + start).standard_normal((stop - start, DIM))
            self.vectors[start:stop] = unit(
                self.centres[self.labels[start:stop]] + CLUSTER_NOISE * noise
            )
        self.probe_rng = np.random.default_rng(seed + 7)

    def probes(self, size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """New samples of identities among the first ``size`` templates."""
        labels = self.probe_rng.integers(0, max(1, size // PER_IDENTITY), count)
        noise = self.probe_rng.standard_normal((count, DIM))
        return unit(self.centres[labels] + CLUSTER_NOISE * noise), labels


def exact_top1(vectors: np.ndarray, probes: np.ndarray) -> np.ndarray:
    best = np.full(len(probes), -np.inf, np.float32)
    index = np.zeros(len(probes), np.int64)
    for start in range(0, len(vectors), 200_000):
        scores = probes @ vectors[start : start + 200_000].T
        top = scores.argmax(axis=1)
        value = scores[np.arange(len(probes)), top]
        better = value > best
        best[better], index[better] = value[better], top[better] + start
    return index


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
    }


# A Redis server of our own (its memory is the gallery's) --------------------------------------


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[Endpoint, Callable[[], float]]]:
    """A Redis 8 with RDB persistence in ``workdir`` (saved only when asked); yields its
    endpoint and a function that restarts it and returns the seconds it took to load."""
    binary = local_services._find_binary("RLLFPR_REDIS_SERVER", "redis-server")
    port = local_services.free_port()
    arguments = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    arguments += ["--appendonly", "no", "--dir", str(workdir), "--logfile", "redis.log"]
    endpoint = Endpoint("127.0.0.1", port)
    state: dict[str, subprocess.Popen[bytes]] = {}

    def start() -> float:
        started = time.monotonic()
        state["process"] = subprocess.Popen(arguments, stdout=subprocess.DEVNULL)
        client = redis.Redis(host=endpoint.host, port=port)
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping() and int(client.info("persistence")["loading"]) == 0:
                    return time.monotonic() - started
            time.sleep(0.05)

    def restart() -> float:
        client = redis.Redis(host=endpoint.host, port=port, socket_timeout=None)
        client.save()
        client.shutdown(nosave=True)
        state["process"].wait(60)
        return start()

    start()
    try:
        yield endpoint, restart
    finally:
        state["process"].terminate()
        state["process"].wait(60)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def server_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (all its threads, user + system): unlike wall
    time, this does not depend on what else runs on the machine."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# Stage 1: insertion methods --------------------------------------------------------------------


def vadd_arguments(
    key: str, vector: np.ndarray, element: str, options: dict[str, Any]
) -> list[Any]:
    arguments: list[Any] = ["VADD", key]
    if options.get("reduce"):
        arguments += ["REDUCE", options["reduce"]]
    arguments += ["FP32", vector.tobytes(), element]
    if options.get("cas"):
        arguments.append("CAS")
    arguments.append(options.get("quantization", "Q8"))
    if options.get("build_ef"):
        arguments += ["EF", options["build_ef"]]
    return arguments


def load_raw(
    endpoint: Endpoint, key: str, vectors: np.ndarray, offset: int, options: dict[str, Any]
) -> float:
    """Insert ``vectors`` (elements ``offset + i``) over ``options['connections']`` connections,
    pipelined; returns the seconds it took."""
    connections = int(options.get("connections", 1))
    if options.get("reduce") and offset == 0 and len(vectors):
        # REDUCE fixes the projection when the set is created: create it before the threads.
        client = redis.Redis(host=endpoint.host, port=endpoint.port)
        client.execute_command(*vadd_arguments(key, vectors[0], str(offset), options))
        vectors, offset = vectors[1:], offset + 1
    slices = np.array_split(np.arange(len(vectors)), connections)

    def work(indices: np.ndarray) -> None:
        client = redis.Redis(host=endpoint.host, port=endpoint.port, socket_timeout=None)
        for start in range(0, len(indices), CHUNK):
            with client.pipeline(transaction=False) as pipe:
                for i in indices[start : start + CHUNK]:
                    pipe.execute_command(
                        *vadd_arguments(key, vectors[i], str(offset + int(i)), options)
                    )
                pipe.execute()

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(part,)) for part in slices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def search(
    endpoint: Endpoint,
    keys: list[str],
    probes: np.ndarray,
    ef: int,
    clients: int,
    parse: Callable[[bytes], int],
) -> tuple[list[float], list[int]]:
    """Each probe's top element over ``keys`` (merged) and each query's seconds; ``clients``
    threads, each with its own connection, share the probes."""
    seconds: list[float] = [0.0] * len(probes)
    top: list[int] = [-1] * len(probes)
    order = np.array_split(np.arange(len(probes)), clients)

    def work(indices: np.ndarray) -> None:
        client = redis.Redis(host=endpoint.host, port=endpoint.port, socket_timeout=None)
        for i in indices:
            blob = probes[i].tobytes()
            started = time.perf_counter()
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.execute_command(
                        "VSIM", key, "FP32", blob, "WITHSCORES", "COUNT", 10, "EF", ef
                    )
                replies = pipe.execute()
            seconds[i] = time.perf_counter() - started
            merged = [(float(s), e) for reply in replies for e, s in _pairs(reply)]
            top[i] = parse(max(merged)[1]) if merged else -1

    threads = [threading.Thread(target=work, args=(part,)) for part in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seconds, top


def _pairs(reply: Any) -> list[tuple[bytes, bytes]]:
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2], strict=True))


METHODS: dict[str, dict[str, Any]] = {
    "pipelined": {"connections": 1},
    "pipelined CAS": {"connections": 1, "cas": True},
    "pipelined CAS, 4 connections": {"connections": 4, "cas": True},
    "pipelined CAS, 4 connections, build EF 100": {"connections": 4, "cas": True, "build_ef": 100},
    "pipelined CAS, 4 connections, build EF 50": {"connections": 4, "cas": True, "build_ef": 50},
    "pipelined CAS, 4 connections, REDUCE 256": {"connections": 4, "cas": True, "reduce": 256},
    "pipelined CAS, 4 connections, REDUCE 128": {"connections": 4, "cas": True, "reduce": 128},
}


def methods(size: int, queries: int, only: list[str] | None) -> dict[str, Any]:
    data = Templates(size, queries)
    probes, _ = data.probes(size, queries)
    truth = exact_top1(data.vectors, probes)
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="rllfpr-gallery-") as workdir,
        redis_server(Path(workdir)) as (endpoint, _restart),
    ):
        client = redis.Redis(host=endpoint.host, port=endpoint.port)
        for name, options in METHODS.items():
            if only and name not in only:
                continue
            key = f"bench:{len(results)}"
            before = used_memory(client)
            seconds = load_raw(endpoint, key, data.vectors, 0, options)
            memory = used_memory(client) - before
            entry: dict[str, Any] = {
                **options,
                "seconds": round(seconds, 1),
                "templates_per_s": round(size / seconds, 1),
                "memory_bytes_per_template": round(memory / size, 1),
            }
            for ef in (100, 200, 500):
                _, top = search(endpoint, [key], probes, ef, 1, int)
                entry[f"recall_at_1_ef_{ef}"] = round(float(np.mean(np.array(top) == truth)), 4)
            results[name] = entry
            print(name, json.dumps(entry), flush=True)
            client.unlink(key)
            time.sleep(1)  # the unlinked set is freed in the background
    return results


# Stage: restart (how long a crashed Redis takes to load a gallery) -------------------------


def restart(size: int, build_ef: int | None) -> dict[str, Any]:
    """A Redis with an append-only file (fsync always, as the soak runs it) holding ``size``
    templates is killed and started again: once with the templates as VADD commands in the
    AOF (every one is inserted into the HNSW graph again on load), once after BGREWRITEAOF
    (the AOF then starts with an RDB image, which holds the graph itself)."""
    data = Templates(size, 10)
    binary = local_services._find_binary("RLLFPR_REDIS_SERVER", "redis-server")
    results: dict[str, Any] = {"templates": size}
    with tempfile.TemporaryDirectory(prefix="rllfpr-gallery-aof-") as workdir:
        port = local_services.free_port()
        arguments = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
        arguments += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        arguments += ["--logfile", "redis.log"]

        def start() -> tuple[subprocess.Popen[bytes], float]:
            started = time.monotonic()
            process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL)
            client = redis.Redis(port=port)
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping() and int(client.info("persistence")["loading"]) == 0:
                        return process, time.monotonic() - started
                if process.poll() is not None:
                    raise RuntimeError(f"redis exited while loading; see {workdir}/redis.log")
                time.sleep(0.05)

        process, _ = start()
        client = redis.Redis(port=port, socket_timeout=None)
        started = time.monotonic()
        for start_index in range(0, size, CHUNK):
            gallery = Gallery(client, "bench", build_ef=build_ef)  # no CAS: it has an AOF
            gallery.enroll_many(
                "fleet",
                1,
                [
                    Template(
                        f"s{data.labels[i]:07d}",
                        str(uuid.UUID(int=i + 1)),
                        data.vectors[i],
                        "bench",
                        datetime(2026, 12, 1, tzinfo=timezone.utc),
                    )
                    for i in range(start_index, min(size, start_index + CHUNK))
                ],
            )
        results["enroll_seconds"] = round(time.monotonic() - started, 1)
        for name in ("aof_of_commands", "after_bgrewriteaof"):
            if name == "after_bgrewriteaof":
                client.bgrewriteaof()
                while int(client.info("persistence")["aof_rewrite_in_progress"]):
                    time.sleep(0.2)
            aof_bytes = sum(
                p.stat().st_size for p in Path(workdir, "appendonlydir").glob("*") if p.is_file()
            )
            process.kill()
            process.wait()
            process, seconds = start()
            client = redis.Redis(port=port, socket_timeout=None)
            results[name] = {
                "aof_mb": round(aof_bytes / 2**20, 1),
                "load_seconds": round(seconds, 1),
            }
            assert Gallery(client, "bench").size("fleet", 1) == size
            print(name, results[name], flush=True)
        process.kill()
        process.wait()
    return results


# Stage 2: scale --------------------------------------------------------------------------------


def enroll_all(
    endpoint: Endpoint,
    prefix: str,
    quantization: str,
    data: Templates,
    start: int,
    stop: int,
    connections: int,
    build_ef: int | None,
) -> float:
    """Enroll templates ``start:stop`` through ``Gallery.enroll_many`` over several connections."""
    enrolled_at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    slices = np.array_split(np.arange(start, stop), connections)

    def work(indices: np.ndarray) -> None:
        client = redis.Redis(host=endpoint.host, port=endpoint.port, socket_timeout=None)
        gallery = Gallery(
            client,
            prefix,
            quantization=quantization,  # type: ignore[arg-type]
            build_ef=build_ef,
            cas=True,  # this server keeps no append-only file (see Gallery.enroll_many)
        )
        for offset in range(0, len(indices), CHUNK):
            batch = indices[offset : offset + CHUNK]
            gallery.enroll_many(
                "fleet",
                1,
                [
                    Template(
                        subject=f"s{data.labels[i]:07d}",
                        template_id=str(uuid.UUID(int=int(i) + 1)),
                        vector=data.vectors[i],
                        site="bench",
                        enrolled_at=enrolled_at,
                    )
                    for i in batch
                ],
            )

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(part,)) for part in slices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def scale(
    sizes: list[int],
    quantizations: list[str],
    queries: int,
    connections: int,
    build_ef: int | None,
    efs: list[int],
    reload: bool,
    checkpoint: Callable[[dict[str, Any]], None] = lambda _results: None,
) -> dict[str, Any]:
    """Grow one gallery per quantization through ``sizes``; ``checkpoint`` gets the results so
    far after every size (a run of hours keeps what it measured if it is cut short)."""
    largest = max(sizes)
    data = Templates(largest, queries)
    probe_sets = {size: data.probes(size, queries) for size in sizes}
    truths = {size: exact_top1(data.vectors[:size], probe_sets[size][0]) for size in sizes}
    results: dict[str, Any] = {}
    for quantization in quantizations:
        with (
            tempfile.TemporaryDirectory(prefix="rllfpr-gallery-") as workdir,
            redis_server(Path(workdir)) as (endpoint, restart),
        ):
            client = redis.Redis(host=endpoint.host, port=endpoint.port)
            gallery = Gallery(client, "bench", quantization=quantization)  # type: ignore[arg-type]
            empty = used_memory(client)
            loaded = 0
            for size in sorted(sizes):
                load_average = os.getloadavg()[0]
                cpu_before, client_cpu_before = server_cpu(client), time.process_time()
                seconds = enroll_all(
                    endpoint, "bench", quantization, data, loaded, size, connections, build_ef
                )
                added = size - loaded
                entry: dict[str, Any] = {
                    "templates": gallery.size("fleet", 1),
                    "load_seconds_this_step": round(seconds, 1),
                    "templates_per_s_this_step": round(added / seconds, 1),
                    "load_average_at_start": round(load_average, 2),
                    "load_average_at_end": round(os.getloadavg()[0], 2),
                    "redis_cpu_ms_per_template": round(
                        (server_cpu(client) - cpu_before) * 1000 / added, 3
                    ),
                    "client_cpu_ms_per_template": round(
                        (time.process_time() - client_cpu_before) * 1000 / added, 3
                    ),
                    "memory_bytes_per_template": round((used_memory(client) - empty) / size, 1),
                }
                loaded = size
                print(quantization, size, json.dumps(entry), flush=True)
                probes, labels = probe_sets[size]
                keys = [gallery.set_key("fleet", 1, shard) for shard in range(gallery.shards)]
                for ef in efs:
                    row: dict[str, Any] = {}
                    for clients in (1, 8):
                        runs = 1 if clients == 1 else 4  # 8 clients: each probe 4 times
                        seconds_all: list[float] = []
                        top: list[int] = []
                        cpu_before = server_cpu(client)
                        started = time.monotonic()
                        for _ in range(runs):
                            spent, top = search(endpoint, keys, probes, ef, clients, _template)
                            seconds_all += spent
                        wall = time.monotonic() - started
                        row[f"clients_{clients}"] = {
                            **percentiles(seconds_all),
                            "queries_per_s": round(len(seconds_all) / wall, 1),
                            "redis_cpu_ms_per_query": round(
                                (server_cpu(client) - cpu_before) * 1000 / len(seconds_all), 3
                            ),
                        }
                    hits = np.array(top)
                    row["recall_at_1"] = round(float(np.mean(hits == truths[size])), 4)
                    row["identity_recall_at_1"] = round(
                        float(np.mean(data.labels[np.maximum(hits, 0)] == labels)), 4
                    )
                    entry[f"ef_{ef}"] = row
                    print(quantization, size, ef, json.dumps(row), flush=True)
                results.setdefault(quantization, {})[str(size)] = entry
                checkpoint(results)
            if reload:
                seconds = restart()
                results[quantization]["restart_load_seconds"] = round(seconds, 1)
                print(quantization, "restart load", seconds, flush=True)
    return results


def _template(element: bytes) -> int:
    """Template index from an element ``{subject}/{uuid of index + 1}``."""
    return uuid.UUID(element.decode().split("/", 1)[1]).int - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["methods", "scale", "restart"])
    parser.add_argument("--size", type=int, default=20_000, help="methods: templates")
    parser.add_argument("--only", nargs="+", choices=list(METHODS), help="methods: these")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--quantization", nargs="+", default=["Q8", "NOQUANT"])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--build-ef", type=int, default=100, help="VADD EF (0: Redis' 200)")
    parser.add_argument("--efs", type=int, nargs="+", default=list(EFS))
    parser.add_argument("--no-reload", action="store_true", help="skip the restart timing")
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args()
    load_before = os.getloadavg()
    started = time.monotonic()
    version = subprocess.run(
        [local_services._find_binary("RLLFPR_REDIS_SERVER", "redis-server"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    def write(results: dict[str, Any], finished: bool) -> None:
        document = {
            "stage": arguments.stage,
            "command": "python benchmarks/gallery_scale.py " + " ".join(sys.argv[1:]),
            "finished": finished,
            "arguments": {k: str(v) for k, v in vars(arguments).items()},
            "elapsed_s": round(time.monotonic() - started, 1),
            "hardware": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_now": [round(x, 2) for x in os.getloadavg()],
                "redis": version,
            },
            "results": results,
        }
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        temporary = arguments.output.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        temporary.replace(arguments.output)

    if arguments.stage == "methods":
        results = methods(arguments.size, arguments.queries, arguments.only)
    elif arguments.stage == "restart":
        results = restart(arguments.size, arguments.build_ef or None)
    else:
        results = scale(
            arguments.sizes,
            arguments.quantization,
            arguments.queries,
            arguments.connections,
            arguments.build_ef or None,
            arguments.efs,
            not arguments.no_reload,
            checkpoint=lambda partial: write(partial, finished=False),
        )
    write(results, finished=True)
    print(f"-> {arguments.output}")


if __name__ == "__main__":
    main()
