"""The main path: a signed change is accepted, delivered and verified by the target's own tool."""

from __future__ import annotations

from pcns.app import RunningService
from tests.integration.conftest import needs_htpasswd
from tests.support import Client, ServiceFiles, htpasswd_verifies, wait_terminal


@needs_htpasswd
async def test_signed_change_reaches_htpasswd(
    service: RunningService, client: Client, files: ServiceFiles
) -> None:
    """A change signed with the standardwebhooks library gets 202; `htpasswd -v` accepts it."""
    status, body = await client.send("alice", "Пароль-密码-🔑-ß", domain="CORP")
    assert status == 202
    assert body["deliveries"] == [{"target": "wiki", "state": "pending"}]
    assert await wait_terminal(client, body["id"]) == {"wiki": "delivered"}
    assert htpasswd_verifies(files.root / "wiki.htpasswd", "alice", "Пароль-密码-🔑-ß")
    assert not htpasswd_verifies(files.root / "wiki.htpasswd", "alice", "wrong")
