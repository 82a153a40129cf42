"""What a process says about its configuration and its targets: /readyz reports each target's
health on a worker, and every role refuses a target table with an unknown key."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from pcns.app import running_service
from pcns.errors import ConfigError
from pcns.secret_files import read_webhook_secret
from tests.support import ServiceFiles, eventually, htpasswd_target


async def test_readyz_reports_a_failing_target_on_a_worker(tmp_path: Path, db_url: str) -> None:
    """A worker whose htpasswd directory does not exist still starts and serves, and /readyz
    names the target as failing with the reason while the process stays ready."""
    good = htpasswd_target("wiki", tmp_path / "wiki.htpasswd")
    bad = htpasswd_target("erp", tmp_path / "missing" / "erp.htpasswd")
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[good, bad])
    async with running_service(files.settings()), aiohttp.ClientSession() as session:

        async def checked() -> dict[str, object] | None:
            async with session.get(files.url + "/readyz") as resp:
                doc: dict[str, object] = await resp.json()
                assert resp.status == 200
            targets = doc["targets"]
            assert isinstance(targets, dict)
            return doc if "unchecked" not in targets.values() else None

        doc = await eventually(checked)
    assert doc["status"] == "ready"
    assert doc["targets"] == {
        "erp": f"failing: directory {tmp_path / 'missing'} does not exist",
        "wiki": "ok",
    }


@pytest.mark.parametrize("role", ["receiver", "worker", "all"])
async def test_every_role_refuses_an_unknown_key_in_a_target(
    tmp_path: Path, db_url: str, role: str
) -> None:
    """A misspelt adapter key stops a receiver as it stops a worker, naming the target and key."""
    target = {**htpasswd_target("wiki", tmp_path / "wiki.htpasswd"), "bcrypt_cots": 5}
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[target])
    with pytest.raises(ConfigError, match=r"targets\.0 \(wiki\).*bcrypt_cots"):
        async with running_service(files.settings(), role=role):  # type: ignore[arg-type]
            pass


async def test_the_running_parts_never_show_a_secret_in_their_repr(
    tmp_path: Path, db_url: str
) -> None:
    """The objects a reload holds (and an exception or debugger would print) show neither a
    source's webhook secret nor the admin token."""
    files = ServiceFiles(tmp_path / "svc", db_url)
    async with running_service(files.settings()) as service:
        reloader = service.reloader
        shown = repr(reloader) + repr(reloader.context) + repr(service)
    key = read_webhook_secret(files.secret_file)  # what the receiver holds: the decoded bytes
    assert files.secret.removeprefix("whsec_") not in shown
    assert repr(key)[2:-1] not in shown
    assert files.admin_token not in shown
