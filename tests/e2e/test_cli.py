"""The `pcns` command line as an operator meets it: clear one-line errors and honest exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from tests.e2e.conftest import PCNS, pcns_process, wait_for_text
from tests.support import Client, ServiceFiles, eventually, fetch_all, to_toml


def pcns(
    *args: str, cwd: Path, stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*PCNS, *args], cwd=cwd, input=stdin, capture_output=True, check=False, timeout=timeout
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """A wrong value stops `pcns serve` with exit 2 and a message naming the key, no traceback."""
    config = tmp_path / "pcns.toml"
    config.write_text('[delivery]\nmax_attempts = 0\nbackoff_max = "1s"\nbackoff_initial = "5s"\n')
    done = pcns("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert "delivery.max_attempts" in done.stderr
    assert "Traceback" not in done.stderr


def test_keyring_readable_by_others_is_refused(tmp_path: Path) -> None:
    """`pcns serve` refuses a keyring that group or others can read, saying how to fix it."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused@127.0.0.1:1/x")
    os.chmod(files.keyring, 0o644)
    done = pcns("serve", "--config", str(files.write_config()), cwd=tmp_path)
    assert done.returncode == 2
    assert "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    """`pcns serve` against a PostgreSQL that does not answer exits 3 with a one-line error."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://postgres@127.0.0.1:1/x")
    doc = files.document()
    doc["database"]["connect_wait"] = "1s"
    config = tmp_path / "down.toml"
    config.write_text(to_toml(doc))
    done = pcns("serve", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 3
    assert "PostgreSQL is unreachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_keys_init_creates_once(tmp_path: Path) -> None:
    """`pcns keys init` writes a 0600 keyring and never overwrites one."""
    config = tmp_path / "pcns.toml"
    config.write_text(f'[vault]\nkeyring = "{tmp_path / "k" / "keyring.json"}"\n')
    first = pcns("keys", "init", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "k" / "keyring.json").stat().st_mode & 0o777 == 0o600
    second = pcns("keys", "init", "--config", str(config), cwd=tmp_path)
    assert second.returncode == 2
    assert "already exists" in second.stderr


def test_db_migrate(tmp_path: Path, empty_database_url: str) -> None:
    """`pcns db migrate` applies the schema once and is a no-op the second time."""
    config = tmp_path / "pcns.toml"
    config.write_text(f'[database]\nurl = "{empty_database_url}"\n')
    first = pcns("db", "migrate", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "001_queue.sql" in first.stdout
    second = pcns("db", "migrate", "--config", str(config), cwd=tmp_path)
    assert "up to date" in second.stdout


async def test_db_prune(tmp_path: Path, db_url: str) -> None:
    """`pcns db prune` deletes finished history older than --older-than and says how much; a
    cut-off under an hour is refused with a message naming the flag."""
    config = tmp_path / "pcns.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    short = pcns("db", "prune", "--config", str(config), "--older-than", "30s", cwd=tmp_path)
    assert short.returncode == 2
    assert "--older-than" in short.stderr
    assert "Traceback" not in short.stderr
    conn = await asyncpg.connect(db_url)
    try:
        change_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO pcns_changes (id, source, webhook_id, user_name, response, received_at)"
            " VALUES ($1, 'dc01', 'msg_old', 'alice', '{}', now() - interval '40 days')",
            change_id,
        )
        await conn.execute(
            "INSERT INTO pcns_deliveries (id, change_id, target, account, order_at, state,"
            " created_at, finished_at) VALUES ($1, $2, 'wiki', 'alice', now(), 'superseded',"
            " now() - interval '40 days', now() - interval '40 days')",
            uuid.uuid4(),
            change_id,
        )
        done = pcns("db", "prune", "--config", str(config), "--older-than", "30d", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "deleted 1 finished deliveries and 1 changes older than 30d" in done.stdout
        assert await conn.fetchval("SELECT count(*) FROM pcns_changes") == 0
    finally:
        await conn.close()


def test_notify_exit_codes(tmp_path: Path) -> None:
    """notify: no password -> 2; receiver unreachable -> 3 after its retry budget."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused@127.0.0.1:1/x")
    config = str(files.write_config())
    base = ["notify", "--config", config, "--source", "dc01", "--user", "alice"]
    assert pcns(*base, cwd=tmp_path).returncode == 2
    down = pcns(*base, "--retry-for", "1", cwd=tmp_path, stdin=b"Pw-1")
    assert down.returncode == 3
    assert "not accepted" in down.stderr
    assert "Pw-1" not in down.stderr + down.stdout


async def test_notify_rejected_and_status(tmp_path: Path, db_url: str) -> None:
    """notify with the wrong secret exits 1 (401); `pcns status` prints the delivery state."""
    root = tmp_path / "svc"
    files = ServiceFiles(root, db_url)
    config = files.write_config()
    with pcns_process("serve", "--config", str(config), cwd=root) as proc:
        await asyncio.to_thread(wait_for_text, root / "pcns.log", "service_started", proc)
        wrong = root / "wrong.whsec"
        wrong.write_text(ServiceFiles(tmp_path / "other", db_url).secret)
        wrong.chmod(0o600)
        rejected = await asyncio.to_thread(
            pcns,
            "notify",
            "--url",
            files.url,
            "--secret-file",
            str(wrong),
            "--source",
            "dc01",
            "--user",
            "alice",
            cwd=root,
            stdin=b"Pw-2",
        )
        assert rejected.returncode == 1
        assert "bad-signature" in rejected.stdout
        sent = await asyncio.to_thread(
            pcns,
            "notify",
            "--config",
            str(config),
            "--source",
            "dc01",
            "--user",
            "alice",
            "--domain",
            "CORP",
            cwd=root,
            stdin=b"Pw-3\n",
        )
        assert sent.returncode == 0, sent.stderr
        change_id = json.loads(sent.stdout)["id"]

        async def delivered() -> bool:
            shown = await asyncio.to_thread(
                pcns, "status", change_id, "--config", str(config), cwd=root
            )
            return shown.returncode == 0 and '"state": "delivered"' in shown.stdout

        await eventually(delivered)


async def test_sigterm_releases_unfinished_deliveries(tmp_path: Path, db_url: str) -> None:
    """SIGTERM stops claiming; a delivery still running after the grace period is given back
    to the queue (pending, due now, the interrupted attempt not counted) and the process exits 0."""
    root = tmp_path / "svc"
    files = ServiceFiles(
        root,
        db_url,
        targets=[{"name": "slow", "type": "noop", "delay": 20.0}],
        delivery={"shutdown_grace": "1s"},
    )
    config = files.write_config()
    with pcns_process("serve", "--config", str(config), cwd=root) as proc:
        await asyncio.to_thread(wait_for_text, root / "pcns.log", "service_started", proc)
        async with aiohttp.ClientSession() as session:
            _, body = await Client(files, session).send("alice", "Pw-4")

        async def row() -> dict[str, object]:
            rows = await fetch_all(
                db_url,
                "SELECT state, attempts FROM pcns_deliveries WHERE change_id = $1",
                uuid.UUID(body["id"]),
            )
            return dict(rows[0])

        async def in_flight() -> bool:
            return (await row())["state"] == "in_flight"

        await eventually(in_flight)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    final = await row()
    assert final == {"state": "pending", "attempts": 0}
    assert "deliveries_released" in (root / "pcns.log").read_text()


def test_targets_check(tmp_path: Path) -> None:
    """`pcns targets check` probes each target without changing a password: a writable
    htpasswd directory passes, an SQL target whose server is down fails, exit code 1."""
    files = ServiceFiles(
        tmp_path / "svc",
        "postgresql://unused@127.0.0.1:1/x",
        targets=[
            {"name": "wiki", "type": "htpasswd", "path": str(tmp_path / "wiki.htpasswd")},
            {
                "name": "erp",
                "type": "sql",
                "dsn": "postgresql://postgres@127.0.0.1:1/erp",
                "query": "UPDATE users SET pw = :hash WHERE login = :account",
                "timeout": 2,
            },
        ],
    )
    config = str(files.write_config())
    done = pcns("targets", "check", "--config", config, cwd=tmp_path)
    assert done.returncode == 1
    assert "wiki: ok" in done.stdout
    assert "erp: FAILED" in done.stdout
    assert not (tmp_path / "wiki.htpasswd").exists()
    only = pcns("targets", "check", "wiki", "--config", config, cwd=tmp_path)
    assert only.returncode == 0
    assert "erp" not in only.stdout
    assert pcns("targets", "check", "nope", "--config", config, cwd=tmp_path).returncode == 2


async def test_cancel_ends_pending_deliveries(tmp_path: Path, db_url: str) -> None:
    """`pcns cancel ID` ends a change's pending deliveries as cancelled, deletes their
    ciphertext, and a second cancel changes nothing."""
    root = tmp_path / "svc"
    files = ServiceFiles(root, db_url)
    config = files.write_config()
    with pcns_process("serve", "--config", str(config), "--role", "receiver", cwd=root) as proc:
        await asyncio.to_thread(wait_for_text, root / "pcns.log", "service_started", proc)
        async with aiohttp.ClientSession() as session:
            _, body = await Client(files, session).send("alice", "Never-Sent-1")
        done = await asyncio.to_thread(
            pcns, "cancel", body["id"], "--config", str(config), cwd=root
        )
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert [d["state"] for d in shown["deliveries"]] == ["cancelled"]
        again = await asyncio.to_thread(
            pcns, "cancel", body["id"], "--config", str(config), cwd=root
        )
        assert json.loads(again.stdout)["deliveries"] == shown["deliveries"]
    rows = await fetch_all(
        db_url,
        "SELECT state, ciphertext FROM pcns_deliveries WHERE change_id = $1",
        uuid.UUID(body["id"]),
    )
    assert [(r["state"], r["ciphertext"]) for r in rows] == [("cancelled", None)]
