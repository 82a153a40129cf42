"""The Windows side under Wine 10, in one run: the filter's call latency, and the sender's drain
rate against the same receiver's accept rate from one sequential keep-alive client.

    .venv/bin/python -m bench.windows [--rounds 3] [--changes 1000] [--calls 250]

(i) ``harness.exe`` loads ``pcnsflt.dll`` and calls ``PasswordChangeNotify`` from 4 threads as
LSASS would (each call: read the registry, convert, seal with CNG, write and flush the spool
record, rename it write-through, signal the sender); it reports p50/p99/max per call, once with
the calls back to back (a saturating stress: 4 callers on 2 cores) and once paced (each thread
``--interval`` ms apart, 200 changes/s by default, far above a real DC's peak). LSASS waits on
the filter: the target is p99 <= 5 ms.

(ii) ``changes`` changes are spooled by the filter, then one ``pcns-sender.exe run --once``
delivers them to a real ``pcns serve`` (noop target, so the receiver's own path is measured);
its rate is divided by the rate at which the same receiver accepts ``changes`` sealed, signed
changes from one sequential keep-alive Python client (aiohttp, one connection), measured right
after it. Target: >= 0.5x.

Needs the Windows build (``make -C windows``), the Wine 10 root (``windows/tools/wine10-root``),
root, and a PostgreSQL server (``--database-url``, default the machine's on 127.0.0.1:5432): each
round gets a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.harness.databases import with_database
from bench.harness.service import free_port, write_config
from pcns.receiver.signature import sign
from pcns.secret_files import new_admin_token, new_webhook_secret, read_webhook_secret
from vault import HookPublicKey, create_keyring_file, seal_for_hook

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "windows" / "build"
WINE10 = REPO / "windows" / "tools" / "wine10"
PCNS = [sys.executable, "-m", "pcns"]
KEY = r"HKLM\SOFTWARE\pcns\Sender"


class Wine:
    """A fresh prefix under ``root``; output to files (never pipes: Wine's helpers keep them)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = root / "prefix"
        self._n = 0

    def run(self, *args: str, timeout: float = 600) -> tuple[int, str, str]:
        self._n += 1
        out, err = self.root / f"{self._n}.out", self.root / f"{self._n}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WINE") and k != "DISPLAY"}
        env["WINEPREFIX"] = str(self.prefix)
        with out.open("wb") as o, err.open("wb") as e:
            code = subprocess.run(
                [str(WINE10), *args],
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
                env=env,
                timeout=timeout,
                check=False,
            ).returncode
        return code, out.read_text(errors="replace"), err.read_text(errors="replace")

    @staticmethod
    def path(p: Path) -> str:
        return "Z:" + str(p.resolve()).replace("/", "\\")


@dataclass
class Service:
    root: Path
    url: str
    config: Path
    secret: bytes
    key: HookPublicKey
    key_hex: Path


def pcns_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [*PCNS, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"pcns {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def make_service(root: Path, db_url: str) -> Service:
    root.mkdir(parents=True)
    keyring = root / "keyring.json"
    create_keyring_file(keyring)
    secret_file, token_file = root / "dc01.whsec", root / "admin.token"
    for path, text in ((secret_file, new_webhook_secret()), (token_file, new_admin_token())):
        path.write_text(text + "\n")
        path.chmod(0o600)
    port = free_port()
    doc: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "database": {"url": db_url, "pool_size": 6},
        "vault": {"keyring": str(keyring)},
        "admin": {"token_file": str(token_file)},
        "sources": [{"id": "dc01", "secret_file": str(secret_file), "require_sealed": True}],
        "targets": [{"name": "app", "type": "noop"}],
    }
    config = write_config(root / "pcns.toml", doc)
    pcns_cli("keys", "hook", "create", "--config", str(config), cwd=root)
    exported = json.loads(
        pcns_cli("keys", "hook", "export", "--config", str(config), "--format", "json", cwd=root)
    )
    key_hex = root / "hook.hex"
    key_hex.write_text(exported["public_point_hex"] + "\n")
    key = HookPublicKey(exported["key_id"], bytes.fromhex(exported["public_point_hex"]))
    return Service(
        root, f"http://127.0.0.1:{port}", config, read_webhook_secret(secret_file), key, key_hex
    )


@contextmanager
def serving(service: Service) -> Iterator[None]:
    log = service.root / "pcns.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*PCNS, "serve", "--config", str(service.config)],
            cwd=service.root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "service_started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pcns serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def configure(wine: Wine, service: Service, spool: Path) -> None:
    code, _, err = wine.run(
        str(BUILD / "pcns-sender.exe"),
        "configure",
        "--url",
        service.url,
        "--source",
        "dc01",
        "--secret-file",
        wine.path(service.root / "dc01.whsec"),
        "--recipient-key-id",
        service.key.key_id,
        "--recipient-key-file",
        wine.path(service.key_hex),
        "--domain-sid",
        "S-1-5-21-1-2-3",
        "--spool",
        wine.path(spool),
    )
    if code != 0:
        raise SystemExit(f"pcns-sender configure failed: {err}")


def filter_calls(wine: Wine, threads: int, calls: int, interval_ms: int = 0) -> dict[str, float]:
    """``threads`` x ``calls`` PasswordChangeNotify calls, back to back or ``interval_ms``
    apart in each thread; the harness's latency line."""
    code, out, err = wine.run(
        str(BUILD / "tests" / "harness.exe"),
        wine.path(BUILD / "pcnsflt.dll"),
        "--user",
        "bench",
        "--password",
        "Bench-Pässwörd-1!",
        "--threads",
        str(threads),
        "--calls",
        str(calls),
        "--latency",
        "--rid-per-call",
        "--interval-ms",
        str(interval_ms),
    )
    if code != 0:
        raise SystemExit(f"harness failed ({code}): {out}{err}")
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return {k: float(v) for k, v in fields.items()}


def sender_drain(wine: Wine) -> dict[str, int]:
    code, out, err = wine.run(str(BUILD / "pcns-sender.exe"), "run", "--once", "--stats")
    if code != 0:
        raise SystemExit(f"pcns-sender run --once failed ({code}): {out}{err}")
    pairs = (line.partition(": ") for line in out.splitlines())
    return {k: int(v) for k, _, v in pairs if v.strip().isdigit()}


async def python_accept(service: Service, n: int) -> float:
    """Seconds for one sequential keep-alive client to have ``n`` sealed changes accepted."""
    requests = []
    for i in range(n):
        wid = "pcns_" + secrets.token_hex(16)
        user = f"py{i}"
        ct = seal_for_hook(service.key, f"Pw-{i}!", source="dc01", webhook_id=wid, user=user)
        body = json.dumps(
            {
                "user": user,
                "sid": f"S-1-5-21-1-2-3-{1000 + i}",
                "changed_at": datetime.now(UTC).isoformat(),
                "sealed": {"key_id": service.key.key_id, "ciphertext": _b64(ct)},
            }
        ).encode()
        requests.append((wid, body))
    endpoint = service.url + "/v1/password-changes"
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        for wid, body in requests:
            ts = int(time.time())
            headers = {
                "content-type": "application/json",
                "pcns-source": "dc01",
                "webhook-id": wid,
                "webhook-timestamp": str(ts),
                "webhook-signature": sign(service.secret, wid, ts, body),
            }
            async with session.post(endpoint, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 202:
                    raise SystemExit(f"baseline request answered {resp.status}")
        return time.perf_counter() - started


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def database_op(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def one_round(args: argparse.Namespace, scratch: Path, wine: Wine, n: int) -> dict[str, Any]:
    name = "pcns_bench_win_" + uuid.uuid4().hex[:10]
    await database_op(args.database_url, f'CREATE DATABASE "{name}"')
    try:
        return await _measure(args, scratch, wine, n, with_database(args.database_url, name))
    finally:
        await database_op(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _measure(
    args: argparse.Namespace, scratch: Path, wine: Wine, n: int, db_url: str
) -> dict[str, Any]:
    service = make_service(scratch / f"svc{n}", db_url)
    spool = scratch / f"spool{n}"
    configure(wine, service, spool)
    latency = filter_calls(wine, 4, args.calls)
    for record in spool.glob("*.pcs"):
        record.unlink()
    paced = filter_calls(wine, 4, args.calls, interval_ms=args.interval)
    for record in spool.glob("*.pcs"):
        record.unlink()
    per_thread = args.changes // 4
    filter_calls(wine, 4, per_thread)
    spooled = len(list(spool.glob("*.pcs")))
    with serving(service):
        drain = sender_drain(wine)
        baseline = await python_accept(service, spooled)
    drain_rate = drain["delivered"] / (drain["elapsed_ms"] / 1000)
    accept_rate = spooled / baseline
    return {
        "p50_ms": latency["p50_us"] / 1000,
        "p99_ms": latency["p99_us"] / 1000,
        "max_ms": latency["max_us"] / 1000,
        "paced_p50_ms": paced["p50_us"] / 1000,
        "paced_p99_ms": paced["p99_us"] / 1000,
        "spooled": spooled,
        "delivered": drain["delivered"],
        "drain_rate": drain_rate,
        "accept_rate": accept_rate,
        "ratio": drain_rate / accept_rate,
    }


async def main(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="pcns-bench-win-"))
    wine = Wine(scratch)
    try:
        code, _, err = wine.run("wineboot", "--init")
        if code != 0:
            raise SystemExit(f"wineboot failed: {err}")
        rounds = [await one_round(args, scratch, wine, n) for n in range(args.rounds)]
    finally:
        wine.run("--server", "-k", timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
    offered = 4 * 1000 / args.interval
    print(
        f"rounds: {len(rounds)}; filter calls per round: 4 threads x {args.calls} back to back,"
        f" then 4 threads x {args.calls} {args.interval} ms apart ({offered:.0f} changes/s)"
    )
    print(
        "| round | back to back p50 ms | p99 ms | max ms | paced p50 ms | paced p99 ms"
        " | drained | sender /s | client /s | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(rounds, 1):
        print(
            f"| {i} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |"
            f" {r['paced_p50_ms']:.2f} | {r['paced_p99_ms']:.2f} |"
            f" {r['delivered']}/{r['spooled']} | {r['drain_rate']:.0f} | {r['accept_rate']:.0f} |"
            f" {r['ratio']:.2f}x |"
        )
    keys = ("p50_ms", "p99_ms", "paced_p50_ms", "paced_p99_ms", "ratio")
    med = {k: statistics.median(r[k] for r in rounds) for k in keys}
    print(
        f"median: filter back to back p50 {med['p50_ms']:.2f} ms, p99 {med['p99_ms']:.2f} ms;"
        f" paced p50 {med['paced_p50_ms']:.2f} ms, p99 {med['paced_p99_ms']:.2f} ms"
        f" (target p99 <= 5); sender/client rate {med['ratio']:.2f}x (target >= 0.5)"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.windows",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--changes", type=int, default=1000, help="(ii) spooled changes per round")
    p.add_argument("--calls", type=int, default=250, help="(i) calls per thread, 4 threads")
    p.add_argument(
        "--interval", type=int, default=20, help="(i) paced run: ms between calls per thread"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "PCNS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
