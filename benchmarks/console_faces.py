"""What keeping scrambled faces for the console's Live page costs Redis.

The recognizer keeps each recognition face message in Redis (``recognizer_service.recent_faces``,
one pipelined ``SET EX`` per micro-batch) for ``console.face_retention_s``. This measures, against
a Redis 8 started on a free loopback port: the time of one ``keep`` of a batch (p50/p95, with a
``PING`` round trip in the same run as the baseline) and Redis memory per kept face, hence what the
retention holds at a given face rate.

    python benchmarks/console_faces.py --output docs/results/console-faces.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import redis

from recognizer_service.recent_faces import RecentFaces
from rllfpr.local_services import redis_server
from rllfpr.wire import codec
from rllfpr.wire.messages import CropBox, FaceHeader, PixelFormat


def face_message(rng: np.random.Generator, size: int) -> bytes:
    """A wire face message of ``size`` px with random (incompressible) scrambled pixels."""
    header = FaceHeader(
        agent="agent-1",
        site="lobby",
        camera="cam-0",
        captured_at=datetime.now(timezone.utc),
        key_epoch=1,
        track_id=1,
        detection_score=0.99,
        quality=100.0,
        crop=CropBox(x=0, y=0, width=size, height=size, frame_width=640, frame_height=480),
        height=size,
        width=size,
        pixel_format=PixelFormat.UINT8,
    )
    return codec.encode(header, rng.integers(0, 256, (size, size), dtype=np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32, help="faces per micro-batch")
    parser.add_argument("--size", type=int, default=64, help="face side in pixels")
    parser.add_argument("--rate", type=float, default=30.0, help="faces/s for the memory figure")
    parser.add_argument("--retention", type=int, default=300, help="console.face_retention_s")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    payloads = [face_message(rng, args.size) for _ in range(args.batch)]
    with redis_server() as endpoint:
        client = redis.Redis(host=endpoint.host, port=endpoint.port)
        faces = RecentFaces(client, "p", args.retention)
        before = int(client.info("memory")["used_memory"])
        keeps, pings = [], []
        for batch in range(args.batches):
            ids = [f"{batch}-{i}" for i in range(args.batch)]
            started = time.perf_counter()
            assert faces.keep(list(zip(ids, payloads, strict=True)))
            keeps.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.ping()
            pings.append(time.perf_counter() - started)
        kept = args.batches * args.batch
        assert int(client.dbsize()) == kept
        per_face = (int(client.info("memory")["used_memory"]) - before) / kept
    result = {
        "command": "python benchmarks/console_faces.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "face_message_bytes": len(payloads[0]),
        "faces_per_batch": args.batch,
        "keep_ms_p50": float(np.percentile(keeps, 50) * 1e3),
        "keep_ms_p95": float(np.percentile(keeps, 95) * 1e3),
        "ping_ms_p50": float(np.percentile(pings, 50) * 1e3),
        "redis_bytes_per_face": per_face,
        "retained_mb_at_rate": per_face * args.rate * args.retention / 1e6,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
