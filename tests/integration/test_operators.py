"""Operators' tools against a running service: parked deliveries and their retry, expiry and
supersede, holds, bulk cancel, the audit trail, and refusals of bad requests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pcns.app import running_service
from tests.integration.conftest import needs_htpasswd
from tests.support import (
    PG_DUMP,
    Client,
    ServiceFiles,
    admin_call,
    eventually,
    fetch_all,
    htpasswd_target,
    htpasswd_verifies,
    wait_terminal,
)


@asynccontextmanager
async def service(
    files: ServiceFiles,
) -> AsyncIterator[Client]:
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        yield Client(files, session)


async def states(client: Client, change_id: str) -> dict[str, str]:
    doc = (await client.status(change_id))["deliveries"]
    return {d["target"]: d["state"] for d in doc}


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs the test can remount read-only and back, as an operator's mistake would."""
    where = tmp_path / "ro"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


@needs_htpasswd
async def test_read_only_target_parks_then_retry_delivers(
    tmp_path: Path, db_url: str, read_only_dir: Path
) -> None:
    """An htpasswd file on a file system remounted read-only parks every change with the reason;
    once it is writable again, one retry by target delivers each, verified by htpasswd -v."""
    path = read_only_dir / "wiki.htpasswd"
    path.write_text("")
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[htpasswd_target("wiki", path)],
        delivery={"max_attempts": 2, "backoff_initial": "50ms", "backoff_max": "100ms"},
    )
    remount(read_only_dir, "ro")
    passwords = {f"user{i}": f"Parked-Pw-{i}!" for i in range(3)}
    async with service(files) as client:
        ids = [(await client.send(u, pw))[1]["id"] for u, pw in passwords.items()]
        for change_id in ids:
            assert await wait_terminal(client, change_id) == {"wiki": "parked"}
        status, page = await admin_call(client, "GET", "/v1/deliveries?state=parked&target=wiki")
        assert status == 200
        assert {d["account"] for d in page["deliveries"]} == set(passwords)
        assert all("Read-only file system" in d["last_error"] for d in page["deliveries"])
        remount(read_only_dir, "rw")
        status, done = await admin_call(
            client, "POST", "/v1/deliveries/retry", {"target": "wiki"}, actor="ops@test"
        )
        assert (status, done["count"], done["targets"]) == (200, 3, {"wiki": 3})
        for change_id in ids:
            assert await wait_terminal(client, change_id) == {"wiki": "delivered"}
        _, audit = await admin_call(client, "GET", "/v1/audit")
    for user, password in passwords.items():
        assert htpasswd_verifies(path, user, password)
    retry = audit["actions"][0]
    assert (retry["actor"], retry["action"], retry["filter"], retry["count"]) == (
        "ops@test",
        "retry",
        {"target": "wiki"},
        3,
    )


async def park(files: ServiceFiles, client: Client, user: str, password: str) -> str:
    """Send a change the failing target refuses permanently; its id once it is parked."""
    _, body = await client.send(user, password)
    assert await wait_terminal(client, body["id"]) == {"app": "parked"}
    return str(body["id"])


def failing_app(tmp_path: Path) -> dict[str, Any]:
    """A command target whose script refuses permanently until ``ok`` exists beside it."""
    script = tmp_path / "set-password"
    ok = tmp_path / "ok"
    script.write_text(
        "#!/bin/sh\n"
        f'[ -e "{ok}" ] || {{ echo "login refused" >&2; exit 2; }}\n'
        f'cat >> "{tmp_path}/written"; echo >> "{tmp_path}/written"\n'
    )
    script.chmod(0o755)
    return {"name": "app", "type": "command", "argv": [str(script), "{account}"]}


async def test_parked_past_max_age_expires_and_its_ciphertext_is_gone(
    tmp_path: Path, db_url: str
) -> None:
    """A parked delivery ends expired at delivery.max_age, and its ciphertext is deleted: the
    bytes are in no row and not in pg_dump."""
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        targets=[failing_app(tmp_path)],
        # A short lease makes the reaper (which also expires parked rows) run every 1.5 s.
        delivery={"max_age": "3s", "lease": "6s", "attempt_timeout": "2s"},
    )
    async with service(files) as client:
        change_id = await park(files, client, "alice", "Expire-Me-1!")
        rows = await fetch_all(
            db_url,
            "SELECT ciphertext FROM pcns_deliveries WHERE change_id = $1",
            uuid.UUID(change_id),
        )
        sealed = bytes(rows[0]["ciphertext"])

        async def expired() -> bool:
            return await states(client, change_id) == {"app": "expired"}

        await eventually(expired, timeout=30)
        doc = await client.status(change_id)
    assert "parked until delivery.max_age" in doc["deliveries"][0]["last_error"]
    rows = await fetch_all(
        db_url,
        "SELECT ciphertext, nonce FROM pcns_deliveries WHERE change_id = $1",
        uuid.UUID(change_id),
    )
    assert (rows[0]["ciphertext"], rows[0]["nonce"]) == (None, None)
    dump = await asyncio.to_thread(
        subprocess.run,
        [str(PG_DUMP), "--data-only", "--dbname", db_url],
        capture_output=True,
        check=True,
    )
    assert sealed.hex().encode() not in dump.stdout


async def test_a_newer_change_supersedes_a_parked_one(tmp_path: Path, db_url: str) -> None:
    """When a newer change for the same account is delivered, the parked older one ends
    superseded and is never written after it."""
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[failing_app(tmp_path)])
    async with service(files) as client:
        old = await park(files, client, "alice", "Old-Pw-1!")
        (tmp_path / "ok").touch()
        _, new = await client.send("alice", "New-Pw-2!")
        assert await wait_terminal(client, new["id"]) == {"app": "delivered"}
        assert await states(client, old) == {"app": "superseded"}
        status, done = await admin_call(
            client, "POST", "/v1/deliveries/retry", {"account": "alice"}
        )
        assert (status, done["count"]) == (200, 0)
    assert (tmp_path / "written").read_text().split() == ["New-Pw-2!"]


async def test_a_held_target_delivers_nothing_until_released(tmp_path: Path, db_url: str) -> None:
    """While a target is held its deliveries wait (listed as held, not claimed); released, they
    are delivered."""
    (tmp_path / "ok").touch()
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[failing_app(tmp_path)])
    async with service(files) as client:
        status, hold = await admin_call(
            client,
            "PUT",
            "/v1/targets/app/hold",
            {"until": "2030-01-01T00:00:00Z", "reason": "maintenance"},
            actor="ops@test",
        )
        assert (status, hold["target"], hold["actor"]) == (200, "app", "ops@test")
        _, change = await client.send("bob", "Held-Pw-1!")
        await asyncio.sleep(1.5)  # several poll intervals: a worker would have claimed it
        assert await states(client, change["id"]) == {"app": "pending"}
        _, page = await admin_call(client, "GET", "/v1/deliveries?account=bob")
        assert [(d["state"], d["held"]) for d in page["deliveries"]] == [("pending", True)]
        assert not (tmp_path / "written").exists()
        status, _ = await admin_call(client, "DELETE", "/v1/targets/app/hold")
        assert status == 200
        assert await wait_terminal(client, change["id"]) == {"app": "delivered"}
        status, _ = await admin_call(client, "DELETE", "/v1/targets/app/hold")
        assert status == 404
        _, audit = await admin_call(client, "GET", "/v1/audit")
    assert [a["action"] for a in audit["actions"][:2]] == ["release", "hold"]


async def test_bulk_cancel_by_account_counts_and_audits(tmp_path: Path, db_url: str) -> None:
    """Cancelling by account ends that account's parked deliveries (ciphertexts deleted) and no
    one else's; a dry run first says how many, changing nothing; both counts match the audit."""
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[failing_app(tmp_path)])
    async with service(files) as client:
        carol = [await park(files, client, "carol", f"Carol-{i}!") for i in range(2)]
        dave = await park(files, client, "dave", "Dave-1!")
        status, dry = await admin_call(
            client, "POST", "/v1/deliveries/cancel", {"account": "carol", "dry_run": True}
        )
        assert (status, dry["count"], dry["dry_run"]) == (200, 1, True)
        status, done = await admin_call(
            client, "POST", "/v1/deliveries/cancel", {"account": "car*"}, actor="helpdesk"
        )
        assert (status, done["count"]) == (200, 1)
        assert await states(client, carol[1]) == {"app": "cancelled"}
        assert await states(client, carol[0]) == {"app": "superseded"}
        assert await states(client, dave) == {"app": "parked"}
        _, audit = await admin_call(client, "GET", "/v1/audit?limit=5")
    assert [(a["action"], a["actor"], a["filter"], a["count"]) for a in audit["actions"]] == [
        ("cancel", "helpdesk", {"account": "car*"}, 1)
    ]


async def test_pages_are_complete_and_ordered(tmp_path: Path, db_url: str) -> None:
    """Paging a target's deliveries by ``next`` visits each exactly once, newest first."""
    (tmp_path / "ok").touch()
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[failing_app(tmp_path)])
    async with service(files) as client:
        sent = [(await client.send(f"u{i}", f"Pw-{i}!"))[1]["id"] for i in range(7)]
        seen: list[str] = []
        path = "/v1/deliveries?target=app&limit=3"
        while path:
            status, page = await admin_call(client, "GET", path)
            assert status == 200
            seen += [d["change_id"] for d in page["deliveries"]]
            path = (
                f"/v1/deliveries?target=app&limit=3&before={page['next']}" if page["next"] else ""
            )
    assert seen == list(reversed(sent))


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/deliveries?state=lost", None, 400),
        ("GET", "/v1/deliveries?limit=0", None, 400),
        ("GET", "/v1/deliveries?limit=x", None, 400),
        ("GET", "/v1/deliveries?since=yesterday", None, 400),
        ("GET", "/v1/deliveries?since=2026-01-01T00:00:00", None, 400),
        ("GET", "/v1/deliveries?change_id=nope", None, 400),
        ("GET", "/v1/deliveries?before=nope", None, 400),
        ("GET", "/v1/deliveries?colour=red", None, 400),
        ("GET", "/v1/deliveries?account=%00x", None, 400),
        ("GET", "/v1/deliveries/not-a-uuid", None, 404),
        ("GET", f"/v1/deliveries/{uuid.uuid4()}", None, 404),
        ("POST", "/v1/deliveries/retry", {}, 400),
        ("POST", "/v1/deliveries/retry", [], 400),
        ("POST", "/v1/deliveries/retry", {"state": ["nope"]}, 400),
        ("POST", "/v1/deliveries/cancel", {"target": 5}, 400),
        ("POST", "/v1/deliveries/cancel", {"surprise": 1}, 400),
        ("PUT", "/v1/targets/nowhere/hold", {}, 404),
        ("PUT", "/v1/targets/app/hold", {"until": "soon"}, 400),
        ("DELETE", "/v1/targets/app/hold", None, 404),
        ("GET", "/v1/audit?limit=-1", None, 400),
    ],
)
async def test_bad_requests_get_problem_json(
    tmp_path: Path, db_url: str, method: str, path: str, body: Any, status: int
) -> None:
    """Bad filters, bodies and ids get a problem+json answer naming the field, never a 500."""
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[failing_app(tmp_path)])
    async with service(files) as client:
        got, doc = await admin_call(client, method, path, body)
        _, bad_json = await admin_call(client, "POST", "/v1/deliveries/retry", raw=b"{nope")
    assert got == status, doc
    assert doc["type"].startswith("urn:pcns:problem:")
    assert bad_json["detail"] == "body is not valid JSON"
