"""The operators' commands as an operator runs them: the installed `pcns` executable against a
running service (`pcns deliveries`, `pcns targets hold|release|holds`, `pcns audit`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pcns.app import running_service
from tests.support import Client, ServiceFiles, free_port, wait_terminal

PCNS_EXECUTABLE = Path(sys.executable).with_name("pcns")  # the console script (.venv/bin/pcns)


def failing_app(root: Path) -> dict[str, Any]:
    """A command target whose script refuses permanently until ``ok`` exists beside it, and
    appends each password it accepts to ``written``."""
    script = root / "set-password"
    script.write_text(
        "#!/bin/sh\n"
        f'[ -e "{root}/ok" ] || {{ echo "login refused" >&2; exit 2; }}\n'
        f'cat >> "{root}/written"; echo >> "{root}/written"\n'
    )
    script.chmod(0o755)
    return {"name": "app", "type": "command", "argv": [str(script), "{account}"]}


async def pcns(files: ServiceFiles, *args: str) -> subprocess.CompletedProcess[str]:
    """`pcns ARGS --config FILE` with no terminal; no output shows the admin token or a
    traceback."""
    argv = [str(PCNS_EXECUTABLE), *args, "--config", str(files.write_config())]
    done = await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=files.root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert files.admin_token not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


@dataclass
class Operator:
    """Runs `pcns` commands against one running service, as the operator at a shell would."""

    files: ServiceFiles
    client: Client

    @property
    def config(self) -> Path:
        return self.files.write_config()

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await pcns(self.files, *args)

    async def ok(self, *args: str) -> str:
        done = await self.run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def json_lines(self, *args: str) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in (await self.ok(*args, "--output", "json")).splitlines()
        ]

    async def park(self, user: str, password: str) -> str:
        """Send a change the app refuses; its change id once its delivery is parked."""
        status, body = await self.client.send(user, password)
        assert status == 202, body
        assert await wait_terminal(self.client, body["id"]) == {"app": "parked"}
        return str(body["id"])


@asynccontextmanager
async def operator(tmp_path: Path, db_url: str) -> AsyncIterator[Operator]:
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[failing_app(tmp_path)])
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        yield Operator(files, Client(files, session))


def written(tmp_path: Path) -> list[str]:
    path = tmp_path / "written"
    return path.read_text().split() if path.exists() else []


async def test_list_filters_pages_and_show_in_table_and_json(tmp_path: Path, db_url: str) -> None:
    """`pcns deliveries list` finds deliveries by state, account glob and time, as a table or
    JSON lines, pages with --before (or --all-pages), and `show` prints one in full."""
    async with operator(tmp_path, db_url) as op:
        await op.park("alice", "Alice-Pw-1!")
        await op.park("bob", "Bob-Pw-1!")
        (tmp_path / "ok").touch()
        _, carol = await op.client.send("carol", "Carol-Pw-1!")
        assert await wait_terminal(op.client, carol["id"]) == {"app": "delivered"}

        table = (await op.ok("deliveries", "list", "--state", "parked")).splitlines()
        assert table[0].split() == [
            "id", "state", "target", "account", "attempts", "updated", "last_error"
        ]  # fmt: skip
        rows = {line.split()[3]: line.split() for line in table[1:]}
        assert set(rows) == {"alice", "bob"}
        assert rows["alice"][1:3] == ["parked", "app"]
        assert "login refused" in table[1]

        parked = await op.json_lines("deliveries", "list", "--state", "parked,delivered")
        assert sorted((d["account"], d["state"]) for d in parked) == [
            ("alice", "parked"),
            ("bob", "parked"),
            ("carol", "delivered"),
        ]
        only = await op.json_lines("deliveries", "list", "--account", "car*", "--since", "1h")
        assert [(d["account"], d["change_id"]) for d in only] == [("carol", carol["id"])]
        none = await op.ok("deliveries", "list", "--until=-1h")
        assert none.strip() == "no deliveries match"

        first = await op.run("deliveries", "list", "--limit", "2", "--output", "json")
        page = [json.loads(line) for line in first.stdout.splitlines()]
        assert [d["account"] for d in page] == ["carol", "bob"]
        assert f"--before {page[-1]['id']}" in first.stderr
        rest = await op.json_lines("deliveries", "list", "--limit", "2", "--before", page[-1]["id"])
        assert [d["account"] for d in rest] == ["alice"]
        every = await op.run("deliveries", "list", "--limit", "1", "--all-pages")
        assert [line.split()[3] for line in every.stdout.splitlines()[1:]] == [
            "carol",
            "bob",
            "alice",
        ]
        assert "--before" not in every.stderr

        shown = await op.ok("deliveries", "show", rows["bob"][0])
        assert "state:        parked" in shown
        assert "login refused" in shown
        assert f"change:       {parked[1]['change_id']}" in shown
        (doc,) = await op.json_lines("deliveries", "show", rows["bob"][0])
        assert (doc["id"], doc["account"], doc["held"]) == (rows["bob"][0], "bob", False)

        too_long = await op.run("deliveries", "list", "--account", "x" * 300)
        assert too_long.returncode == 2
        assert too_long.stderr.startswith("pcns deliveries list: --account: String should")
        missing = await op.run("deliveries", "show", "01a2259b-04b6-718d-9b02-7aefe524421f")
        assert missing.returncode == 1
        assert missing.stderr == "pcns deliveries show: no delivery with that id (404)\n"


async def test_retry_with_yes_delivers_parked_deliveries_and_is_audited(
    tmp_path: Path, db_url: str
) -> None:
    """Once the app is fixed, `pcns deliveries retry --target app --yes` makes its parked
    deliveries due: both are delivered, and the audit trail names the actor and the count."""
    async with operator(tmp_path, db_url) as op:
        ids = [await op.park(user, f"{user}-Retry-1!") for user in ("alice", "bob")]
        (tmp_path / "ok").touch()
        out = await op.ok("deliveries", "retry", "--target", "app", "--yes", "--actor", "ops@test")
        assert out == "retried 2 deliveries (app: 2)\n"
        for change_id in ids:
            assert await wait_terminal(op.client, change_id) == {"app": "delivered"}
        again = await op.ok("deliveries", "retry", "--state", "parked", "--yes")
        assert again == "retried 0 deliveries\n"
        (action, *_) = await op.json_lines("audit")
        audit = (await op.ok("audit", "--limit", "2")).splitlines()
    assert sorted(written(tmp_path)) == ["alice-Retry-1!", "bob-Retry-1!"]
    assert action["action"] == "retry"
    assert (action["filter"], action["count"]) == ({"state": ["parked"]}, 0)
    assert audit[0].split() == ["at", "actor", "action", "count", "filter"]
    assert audit[2].split()[1:] == ["ops@test", "retry", "2", "target=app"]


async def test_cancel_dry_run_changes_nothing_and_off_a_terminal_needs_yes(
    tmp_path: Path, db_url: str
) -> None:
    """`cancel --dry-run` counts and changes nothing; without --yes off a terminal, or without
    a filter, cancel refuses with one line and exit 2; nothing is cancelled or audited."""
    async with operator(tmp_path, db_url) as op:
        change_id = await op.park("alice", "Alice-Keep-1!")
        dry = await op.ok("deliveries", "cancel", "--account", "alice", "--dry-run")
        assert dry == "would cancel 1 delivery (app: 1); nothing changed (dry run)\n"
        refused = await op.run("deliveries", "cancel", "--account", "alice")
        assert refused.returncode == 2
        assert refused.stderr.count("\n") == 1
        assert "not on a terminal" in refused.stderr
        assert "--yes" in refused.stderr
        unfiltered = await op.run("deliveries", "cancel", "--yes")
        assert unfiltered.returncode == 2
        assert "--all" in unfiltered.stderr
        assert await wait_terminal(op.client, change_id) == {"app": "parked"}
        audit = await op.json_lines("audit")
    assert audit == []


def answer_on_a_terminal(argv: list[str], cwd: Path, answer: bytes) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal, answer its prompt; (exit code, everything shown)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the command exits and the terminal closes
        while b"[y/N] " not in shown:
            chunk = os.read(leader, 1024)
            if not chunk:
                break
            shown += chunk
        os.write(leader, answer)
        while chunk := os.read(leader, 1024):
            shown += chunk
    code = proc.wait(timeout=60)
    os.close(leader)
    return code, shown.decode()


async def test_on_a_terminal_cancel_asks_with_the_count_and_no_keeps_everything(
    tmp_path: Path, db_url: str
) -> None:
    """On a terminal, cancel asks "cancel 1 delivery (app: 1)? [y/N]": "n" changes nothing
    (exit 1), "y" cancels it."""
    async with operator(tmp_path, db_url) as op:
        change_id = await op.park("alice", "Alice-Ask-1!")
        argv = [str(PCNS_EXECUTABLE), "deliveries", "cancel", "--account", "alice"]
        argv += ["--config", str(op.config)]
        code, shown = await asyncio.to_thread(answer_on_a_terminal, argv, tmp_path, b"n\n")
        assert "cancel 1 delivery (app: 1)? [y/N]" in shown
        assert code == 1
        assert await wait_terminal(op.client, change_id) == {"app": "parked"}
        code, shown = await asyncio.to_thread(answer_on_a_terminal, argv, tmp_path, b"y\n")
        assert code == 0
        assert "cancelled 1 delivery (app: 1)" in shown
        assert await wait_terminal(op.client, change_id) == {"app": "cancelled"}


async def test_hold_and_release_a_target_with_the_audit_trail(tmp_path: Path, db_url: str) -> None:
    """`pcns targets hold` keeps a target's deliveries waiting (listed as held, shown by
    `targets holds`) until `targets release`; both are audited under --actor."""
    (tmp_path / "ok").touch()
    async with operator(tmp_path, db_url) as op:
        held = await op.ok(
            "targets", "hold", "app", "--until", "+2h", "--reason", "upgrade", "--actor", "ops@t"
        )
        assert held.startswith("held app (announced until 20")
        holds = (await op.ok("targets", "holds")).splitlines()
        assert holds[0].split() == ["target", "held", "since", "until", "by", "reason"]
        assert holds[1].split()[0] == "app"
        assert holds[1].split()[-2:] == ["ops@t", "upgrade"]
        (hold,) = await op.json_lines("targets", "holds")
        assert (hold["target"], hold["reason"]) == ("app", "upgrade")
        _, change = await op.client.send("dave", "Dave-Held-1!")
        await asyncio.sleep(1)  # several poll intervals: a worker would have claimed it
        waiting = await op.ok("deliveries", "list", "--account", "dave")
        assert "pending (held)" in waiting
        assert written(tmp_path) == []

        released = await op.ok("targets", "release", "app", "--actor", "ops@t")
        assert released == "released app: its pending deliveries are due now\n"
        assert await wait_terminal(op.client, change["id"]) == {"app": "delivered"}
        assert (await op.ok("targets", "holds")).strip() == "no target is held"
        again = await op.run("targets", "release", "app")
        assert (again.returncode, again.stderr) == (
            1,
            "pcns targets release: that target is not held (404)\n",
        )
        unknown = await op.run("targets", "hold", "nowhere")
        assert unknown.returncode == 1
        assert "no configured target with that name" in unknown.stderr
        actions = await op.json_lines("audit", "--limit", "2")
    assert [(a["action"], a["actor"], a["count"]) for a in actions] == [
        ("release", "ops@t", 1),
        ("hold", "ops@t", 1),
    ]
    assert actions[1]["filter"]["reason"] == "upgrade"
    assert written(tmp_path) == ["Dave-Held-1!"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["deliveries", "list", "--state", "lost"], "--state"),
        (["deliveries", "list", "--since", "yesterday"], "--since"),
        (["deliveries", "list", "--until", "2026-01-01T00:00:00"], "--until"),
        (["deliveries", "list", "--change-id", "nope"], "--change-id"),
        (["deliveries", "list", "--limit", "0"], "--limit"),
        (["deliveries", "retry", "--target", "app", "--since", "0h", "--yes"], "--since"),
        (["targets", "hold", "app", "--until", "soon"], "--until"),
        (["audit", "--limit", "5000"], "--limit"),
    ],
)
async def test_a_bad_option_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, args: list[str], option: str
) -> None:
    """A bad filter, time or limit stops the command before it calls pcns (none runs here)
    with exit 2 and one line naming the option."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused@127.0.0.1:1/x")
    done = await pcns(files, *args)
    assert done.returncode == 2
    name = " ".join(a for a in args[:2] if not a.startswith("-"))
    assert done.stderr.startswith(f"pcns {name}: {option}: ")
    assert done.stderr.count("\n") == 1


async def test_an_unreachable_receiver_exits_3(tmp_path: Path) -> None:
    """Nothing listening at --url: the command says it cannot reach it, in one line, exit 3."""
    files = ServiceFiles(tmp_path / "svc", "postgresql://unused@127.0.0.1:1/x")
    url = f"http://127.0.0.1:{free_port()}"
    done = await pcns(files, "deliveries", "list", "--state", "parked", "--url", url)
    assert done.returncode == 3
    assert done.stderr == f"pcns deliveries list: cannot reach {url}: ClientConnectorError\n"
