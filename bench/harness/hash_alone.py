"""Hashes alone, as a worker process's hashing pool makes them: the baseline of a delivery run.

``python -m bench.harness.hash_alone '<JSON>'`` with ``{"jobs": [[scheme, rounds, count], ...],
"concurrency": N}`` computes every job's hashes through :func:`targets.hashing.hash_password_async`
(this process's pool: all cores but one, nice 19), ``N`` at a time, and prints the seconds it
took. Run several at once to stand for several worker processes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.harness.loadgen import PASSWORD


async def hash_jobs(jobs: list[list[Any]], concurrency: int) -> float:
    from targets.base import Password
    from targets.hashing import hash_password_async

    work = iter((scheme, rounds, i) for scheme, rounds, count in jobs for i in range(int(count)))

    async def hasher() -> None:
        for scheme, rounds, i in work:
            await hash_password_async(scheme, Password(f"{PASSWORD}{i}"), rounds=rounds)

    started = time.perf_counter()
    await asyncio.gather(*(hasher() for _ in range(concurrency)))
    return time.perf_counter() - started


async def hashed_in_processes(jobs: list[list[Any]], processes: int, concurrency: int) -> float:
    """Wall-clock seconds for ``processes`` processes, each hashing its share of ``jobs``."""
    shares = [
        [
            [scheme, rounds, count // processes + (p < count % processes)]
            for scheme, rounds, count in jobs
        ]
        for p in range(processes)
    ]
    started = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.harness.hash_alone",
            json.dumps({"jobs": share, "concurrency": concurrency}),
            stdout=asyncio.subprocess.DEVNULL,
        )
        for share in shares
    ]
    for proc in procs:
        if await proc.wait() != 0:
            raise RuntimeError("a hashing process failed")
    return time.perf_counter() - started


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(f"{asyncio.run(hash_jobs(spec['jobs'], spec['concurrency'])):.3f}")
