"""The scim adapter, checked by what the real ``scim2-server`` stored.

scim2-server never returns a password, so each delivery is proven by the store the server dumps
when it stops (``--dump-resources``). What scim2-server cannot produce on demand (429 and 5xx
with Retry-After, 400/409 with a scimType, an OAuth2 token endpoint, a redirect, a hang) comes
from a small real aiohttp server in this module, ``ScriptedScim``; it is not a mock object.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import write_secret

try:
    import scim2_server  # noqa: F401  (the oracle of these tests)
except ImportError:
    if os.environ.get("PCNS_REQUIRE_TOOLS") == "1":
        raise
    pytest.skip(
        "scim2-server (PyPI) is not installed; it is the oracle for these tests",
        allow_module_level=True,
    )

from pydantic import ValidationError

from targets.base import Password, PermanentError, TransientError
from targets.scim import ScimSettings, ScimTarget, safe_detail, user_filter
from tests.scim_server import ScimServer, free_port, running_scim_server

UNICODE = "Пароль-密码-🔑-ß"
LONG = ("Aa1!" + "x" * 60 + "Zz9?" + "y" * 60)[:128]
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


@pytest.fixture
def scim_server(tmp_path: Path) -> Iterator[ScimServer]:
    """A real scim2-server with bearer token ``scim-test-token``, stopped after the test."""
    with running_scim_server(tmp_path / "scim") as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for setting up users on the server."""
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.asynccontextmanager
async def scim_target(base_url: str, **fields: Any) -> AsyncIterator[ScimTarget]:
    """A scim target, on plain http (allowed explicitly) unless told otherwise; closed after."""
    settings = ScimSettings.model_validate({"base_url": base_url, "allow_insecure": True} | fields)
    target = ScimTarget("app", settings)
    try:
        yield target
    finally:
        await target.close()


# --- against the real scim2-server -----------------------------------------------------------


async def test_scim_server_stores_the_new_password(
    scim_server: ScimServer, http: aiohttp.ClientSession
) -> None:
    """After two changes the server holds the second password for the user and no one else's."""
    alice = await scim_server.create_user(http, "alice")
    bob = await scim_server.create_user(http, "bob")
    async with scim_target(scim_server.base_url, token=scim_server.token) as target:
        await target.set_password("alice", Password("first-Pa55"))
        await target.set_password("alice", Password("second-Pa55"))
    assert scim_server.stored_user(alice)["password"] == "second-Pa55"
    assert "password" not in scim_server.stored_user(bob)


@pytest.mark.parametrize("password", [UNICODE, LONG], ids=["unicode", "128-chars"])
async def test_unicode_and_long_passwords_are_stored_exactly(
    scim_server: ScimServer, http: aiohttp.ClientSession, password: str
) -> None:
    """A Cyrillic/CJK/emoji/ß password and a 128-character one are stored exactly as sent."""
    assert len(LONG) == 128
    user = await scim_server.create_user(http, "łukasz")
    async with scim_target(scim_server.base_url, token=scim_server.token) as target:
        await target.set_password("łukasz", Password(password))
    assert scim_server.stored_user(user)["password"] == password


async def test_external_id_matching(scim_server: ScimServer, http: aiohttp.ClientSession) -> None:
    """With match_attribute = externalId the user with that externalId is changed, by id alone."""
    alice = await scim_server.create_user(http, "alice", external_id="E-1001")
    bob = await scim_server.create_user(http, "bob", external_id="E-1002")
    async with scim_target(
        scim_server.base_url, token=scim_server.token, match_attribute="externalId"
    ) as target:
        await target.set_password("E-1002", Password("bob-Pa55"))
        with pytest.raises(PermanentError, match="no user with that externalId"):
            await target.set_password("bob", Password("bob-Pa55"))  # a userName, not an externalId
    assert scim_server.stored_user(bob)["password"] == "bob-Pa55"
    assert "password" not in scim_server.stored_user(alice)


async def test_user_names_needing_escapes_are_found(
    scim_server: ScimServer, http: aiohttp.ClientSession
) -> None:
    """Quotes, backslashes and non-ASCII in a userName are escaped so the filter finds that user."""
    tricky = await scim_server.create_user(http, 'o"brien\\x')
    decoy = await scim_server.create_user(http, "o")
    async with scim_target(scim_server.base_url, token=scim_server.token) as target:
        await target.set_password('o"brien\\x', Password("tricky-Pa55"))
    assert scim_server.stored_user(tricky)["password"] == "tricky-Pa55"
    assert "password" not in scim_server.stored_user(decoy)


async def test_unknown_user_is_permanent(
    scim_server: ScimServer, http: aiohttp.ClientSession
) -> None:
    """A userName the server does not know is a permanent error and changes nobody."""
    alice = await scim_server.create_user(http, "alice")
    async with scim_target(scim_server.base_url, token=scim_server.token) as target:
        with pytest.raises(PermanentError, match="no user with that userName"):
            await target.set_password("mallory", Password("Pa55"))
    assert "password" not in scim_server.stored_user(alice)


async def test_several_matches_are_permanent(
    scim_server: ScimServer, http: aiohttp.ClientSession
) -> None:
    """Two users sharing an externalId make the change permanent-fail instead of picking one."""
    first = await scim_server.create_user(http, "alice", external_id="shared")
    second = await scim_server.create_user(http, "alice2", external_id="shared")
    async with scim_target(
        scim_server.base_url, token=scim_server.token, match_attribute="externalId"
    ) as target:
        with pytest.raises(PermanentError, match="2 users match"):
            await target.set_password("shared", Password("Pa55"))
    assert "password" not in scim_server.stored_user(first)
    assert "password" not in scim_server.stored_user(second)


async def test_wrong_bearer_token_is_transient_with_reason(
    scim_server: ScimServer, http: aiohttp.ClientSession
) -> None:
    """A refused token is transient (an operator can fix it) and the reason says credentials."""
    alice = await scim_server.create_user(http, "alice")
    async with scim_target(scim_server.base_url, token="not-the-token") as target:
        with pytest.raises(TransientError, match="credentials") as caught:
            await target.set_password("alice", Password("Pa55-word"))
        assert "HTTP 401" in caught.value.reason
        assert "not-the-token" not in caught.value.reason
        with pytest.raises(TransientError, match="credentials"):
            await target.check()
    assert "password" not in scim_server.stored_user(alice)


async def test_rotated_token_file_is_picked_up(
    scim_server: ScimServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """After a 401 the token file is read again, so fixing the file fixes the next attempt."""
    alice = await scim_server.create_user(http, "alice")
    token_file = tmp_path / "scim.token"
    write_secret(token_file, "stale-token\n")
    async with scim_target(scim_server.base_url, token_file=token_file) as target:
        with pytest.raises(TransientError, match="credentials"):
            await target.set_password("alice", Password("Pa55-word"))
        write_secret(token_file, scim_server.token + "\n")
        await target.set_password("alice", Password("Pa55-word"))
    assert scim_server.stored_user(alice)["password"] == "Pa55-word"


async def test_server_down_is_transient() -> None:
    """Connection refused (nothing listening) is transient, for changes and for check()."""
    async with scim_target(f"http://127.0.0.1:{free_port()}/v2", token="t") as target:
        with pytest.raises(TransientError, match="cannot reach SCIM server"):
            await target.set_password("alice", Password("Pa55"))
        with pytest.raises(TransientError, match="cannot reach SCIM server"):
            await target.check()


async def test_check_passes_and_writes_nothing(
    scim_server: ScimServer, http: aiohttp.ClientSession
) -> None:
    """check() succeeds against a healthy server and leaves every stored user unchanged."""
    alice = await scim_server.create_user(http, "alice", external_id="E-1")
    async with http.get(
        f"{scim_server.base_url}/Users/{alice}",
        headers={"Authorization": f"Bearer {scim_server.token}"},
    ) as response:
        before = (await response.json(content_type=None))["meta"]["version"]
    for attribute in ("userName", "externalId"):
        async with scim_target(
            scim_server.base_url, token=scim_server.token, match_attribute=attribute
        ) as target:
            await target.check()
    stored = scim_server.stored_user(alice)
    assert "password" not in stored
    assert stored["meta"]["version"] == before


# --- behaviours scim2-server cannot produce on demand: a scripted real aiohttp server ----------


class ScriptedScim:
    """A real aiohttp SCIM endpoint and OAuth2 token endpoint with scripted answers.

    It exists because scim2-server cannot be told to answer 429/5xx with Retry-After, 400/409
    with a chosen scimType, a redirect or a hang, and has no token endpoint. It knows one user,
    ``alice`` (id ``u-1``), and accepts the bearer tokens in ``tokens``.
    """

    CLIENT_ID = "pcns"
    CLIENT_SECRET = "s3cr:et&+"  # characters RFC 6749's form-encoding before Basic must carry

    def __init__(self) -> None:
        self.tokens = {"static-token"}
        self.patch_answers: deque[web.Response] = deque()
        self.lookup_answers: deque[web.Response] = deque()
        self.token_answers: deque[web.Response] = deque()
        self.patched: list[dict[str, Any]] = []
        self.token_forms: list[dict[str, str]] = []
        self.expires_in: int | None = 3600
        self.issued = 0
        self.release = asyncio.Event()
        self.hang = False
        self.root = self.base_url = ""
        self.elsewhere_hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_get("/v2/Users", self._lookup)
        app.router.add_patch("/v2/Users/{id}", self._patch)
        app.router.add_get("/v2/ServiceProviderConfig", self._config)
        app.router.add_route("*", "/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.root = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v2"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def error(
        status: int, detail: str, scim_type: str | None = None, **headers: str
    ) -> web.Response:
        body: dict[str, Any] = {"schemas": [SCIM_ERROR], "status": str(status), "detail": detail}
        if scim_type:
            body["scimType"] = scim_type
        return web.json_response(
            body, status=status, headers=headers, content_type="application/scim+json"
        )

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and token in self.tokens

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Basic":
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            form |= {"client_id": unquote_plus(user), "client_secret": unquote_plus(password)}
        self.token_forms.append({k: str(v) for k, v in form.items()})
        if self.token_answers:
            return self.token_answers.popleft()
        if (form.get("client_id"), form.get("client_secret")) != (
            self.CLIENT_ID,
            self.CLIENT_SECRET,
        ) or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        self.issued += 1
        token = f"access-{self.issued}"
        self.tokens.add(token)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer)

    async def _lookup(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self.error(401, "Authorization failure")
        if self.lookup_answers:
            return self.lookup_answers.popleft()
        resources = []
        if request.query.get("filter") == 'userName eq "alice"':
            resources = [{"schemas": [USER_SCHEMA], "id": "u-1", "userName": "alice"}]
        return web.json_response(
            {"schemas": [LIST_RESPONSE], "totalResults": len(resources), "Resources": resources}
        )

    async def _patch(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self.error(401, "Authorization failure")
        if self.hang:
            await asyncio.wait_for(self.release.wait(), 30)
        self.patched.append(await request.json())
        if self.patch_answers:
            return self.patch_answers.popleft()
        return web.Response(status=204)

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response({"patch": {"supported": True}})

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere_hits += 1
        return web.Response(status=204)

    def revoke_all(self) -> None:
        self.tokens.clear()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedScim]:
    """The scripted aiohttp SCIM server, stopped after the test."""
    server = ScriptedScim()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def oauth_fields(server: ScriptedScim, **extra: Any) -> dict[str, Any]:
    return {
        "oauth2_token_url": f"{server.root}/oauth/token",
        "client_id": ScriptedScim.CLIENT_ID,
        "client_secret": ScriptedScim.CLIENT_SECRET,
        **extra,
    }


async def test_429_is_transient_with_retry_after_seconds(scripted: ScriptedScim) -> None:
    """429 with ``Retry-After: 120`` is transient and asks for at least 120 s before the retry."""
    scripted.patch_answers.append(scripted.error(429, "slow down", **{"Retry-After": "120"}))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(TransientError) as caught:
            await target.set_password("alice", Password("Pa55-word"))
    assert caught.value.retry_after == 120.0
    assert "HTTP 429" in caught.value.reason


async def test_503_retry_after_http_date(scripted: ScriptedScim) -> None:
    """A Retry-After given as an HTTP-date becomes the seconds until that date (here <= 90)."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    scripted.patch_answers.append(scripted.error(503, "maintenance", **{"Retry-After": when}))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(TransientError, match="HTTP 503") as caught:
            await target.set_password("alice", Password("Pa55-word"))
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 90


@pytest.mark.parametrize("status", [500, 502, 504, 408])
async def test_server_errors_are_transient(scripted: ScriptedScim, status: int) -> None:
    """5xx (and 408) without Retry-After are transient with no retry hint."""
    scripted.patch_answers.append(web.Response(status=status, text="<html>oops</html>"))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(TransientError, match=f"HTTP {status}") as caught:
            await target.set_password("alice", Password("Pa55-word"))
    assert caught.value.retry_after is None


async def test_lookup_rate_limit_is_transient(scripted: ScriptedScim) -> None:
    """A 429 to the user lookup is transient too, and nothing is patched."""
    scripted.lookup_answers.append(scripted.error(429, "busy", **{"Retry-After": "7"}))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(TransientError, match="user lookup: HTTP 429") as caught:
            await target.set_password("alice", Password("Pa55-word"))
    assert caught.value.retry_after == 7.0
    assert scripted.patched == []


@pytest.mark.parametrize(
    ("status", "scim_type", "detail"),
    [
        (400, "invalidValue", "Password must contain a digit and be 12 characters"),
        (409, "uniqueness", "Password was used recently"),
        (400, None, "Password policy violation"),
    ],
)
async def test_refusals_are_permanent_with_the_servers_detail(
    scripted: ScriptedScim, status: int, scim_type: str | None, detail: str
) -> None:
    """400/409 refusals are permanent and the reason carries the scimType and the detail."""
    scripted.patch_answers.append(scripted.error(status, detail, scim_type))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(PermanentError) as caught:
            await target.set_password("alice", Password("Qx7-zz-Kv9-jj"))
    assert f"HTTP {status}" in caught.value.reason
    assert detail in caught.value.reason
    if scim_type:
        assert scim_type in caught.value.reason


async def test_invalid_filter_is_permanent(scripted: ScriptedScim) -> None:
    """A server refusing the filter (400 invalidFilter) is permanent; nothing is patched."""
    scripted.lookup_answers.append(
        scripted.error(400, "externalId not filterable", "invalidFilter")
    )
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(PermanentError, match="invalidFilter"):
            await target.set_password("alice", Password("Pa55-word"))
    assert scripted.patched == []


SECRET = "Tr0ub4dor&3-horse"


@pytest.mark.parametrize(
    "echo",
    [
        f"password '{SECRET}' is too weak",
        f"PASSWORD {SECRET.upper()} REJECTED",
        f"value starting {SECRET[:5]}... rejected",
        "value " + "\u200b".join(SECRET) + " rejected",
        "value " + SECRET.replace("&", "%26") + " rejected",
    ],
    ids=["verbatim", "upper-case", "prefix", "zero-width-split", "percent-encoded"],
)
async def test_error_detail_never_echoes_the_password(scripted: ScriptedScim, echo: str) -> None:
    """A detail quoting all or part of the password is withheld from the reason entirely."""
    scripted.patch_answers.append(scripted.error(400, echo, "invalidValue"))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(PermanentError) as caught:
            await target.set_password("alice", Password(SECRET))
    reason = str(caught.value)
    assert "withheld" in reason
    assert "invalidValue" in reason
    for i in range(len(SECRET) - 3):
        assert SECRET[i : i + 4].casefold() not in reason.casefold()


def test_detail_sharing_a_word_with_the_password_is_withheld() -> None:
    """A detail is withheld even when the shared part is an ordinary word: safety over detail."""
    assert "withheld" in safe_detail("Password is too short", "MyPassword1!")
    assert safe_detail("Password is too short", "Qx7-zz-Kv9") == "Password is too short"


def test_detail_is_one_bounded_line() -> None:
    """A long multi-line detail becomes one line of at most 200 characters."""
    detail = safe_detail("line one\nline two\r\n\t" + "z" * 5000, "unrelated-Pa55")
    assert "\n" not in detail
    assert "\r" not in detail
    assert len(detail) <= 200
    assert detail.startswith("line one line two z")


async def test_501_is_permanent(scripted: ScriptedScim) -> None:
    """501 Not Implemented (no PATCH support) is permanent: waiting cannot add the feature."""
    scripted.patch_answers.append(scripted.error(501, "PATCH is not implemented"))
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(PermanentError, match="HTTP 501"):
            await target.set_password("alice", Password("Pa55-word"))


async def test_redirect_is_not_followed(scripted: ScriptedScim) -> None:
    """A redirect answer is permanent and the password is never sent to the redirect target."""
    scripted.patch_answers.append(
        web.Response(status=307, headers={"Location": f"{scripted.root}/elsewhere"})
    )
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(PermanentError, match="redirects are not followed"):
            await target.set_password("alice", Password("Pa55-word"))
    assert scripted.elsewhere_hits == 0


async def test_timeout_is_transient(scripted: ScriptedScim) -> None:
    """A server that does not answer within ``timeout`` gives a transient error."""
    scripted.hang = True
    async with scim_target(scripted.base_url, token="static-token", timeout=0.3) as target:
        with pytest.raises(TransientError, match="did not answer in time"):
            await target.set_password("alice", Password("Pa55-word"))
    scripted.release.set()


async def test_lookup_ignoring_the_filter_is_refused(scripted: ScriptedScim) -> None:
    """A lone user returned for a filter it does not match (filter ignored) is not changed."""
    resources = [{"schemas": [USER_SCHEMA], "id": "u-9", "userName": "someone-else"}]
    scripted.lookup_answers.append(
        web.json_response({"schemas": [LIST_RESPONSE], "totalResults": 1, "Resources": resources})
    )
    async with scim_target(scripted.base_url, token="static-token") as target:
        with pytest.raises(PermanentError, match="differs"):
            await target.set_password("alice", Password("Pa55-word"))
    assert scripted.patched == []


async def test_vendor_extensions_in_lookup_are_tolerated(scripted: ScriptedScim) -> None:
    """Extension schemas, unknown attributes and odd values in the lookup answer do not matter."""
    resource = {
        "schemas": [USER_SCHEMA, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "id": "u-1",
        "userName": "Alice",
        "emails": [{"value": "not-an-address"}],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "7"},
        "urn:example:vendor": {"x": 1},
    }
    scripted.lookup_answers.append(
        web.json_response({"totalResults": 1, "Resources": [resource], "vendorField": True})
    )
    async with scim_target(scripted.base_url, token="static-token") as target:
        await target.set_password("alice", Password(UNICODE))
    assert scripted.patched == [
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "password", "value": UNICODE}],
        }
    ]


async def test_oauth2_token_is_fetched_once_and_reused(scripted: ScriptedScim) -> None:
    """Client credentials (HTTP Basic, with scope) get one token, reused for later changes."""
    async with scim_target(
        scripted.base_url, **oauth_fields(scripted, scope="scim.write")
    ) as target:
        await target.set_password("alice", Password("first-Pa55"))
        await target.set_password("alice", Password("second-Pa55"))
        await target.check()
    assert scripted.issued == 1
    assert scripted.token_forms == [
        {
            "grant_type": "client_credentials",
            "scope": "scim.write",
            "client_id": ScriptedScim.CLIENT_ID,
            "client_secret": ScriptedScim.CLIENT_SECRET,
        }
    ]
    assert [p["Operations"][0]["value"] for p in scripted.patched] == ["first-Pa55", "second-Pa55"]


async def test_oauth2_token_is_refreshed_once_after_401(scripted: ScriptedScim) -> None:
    """A revoked access token is replaced after the 401 and the change goes through."""
    async with scim_target(scripted.base_url, **oauth_fields(scripted)) as target:
        await target.set_password("alice", Password("first-Pa55"))
        scripted.revoke_all()
        await target.set_password("alice", Password("second-Pa55"))
    assert scripted.issued == 2
    assert [p["Operations"][0]["value"] for p in scripted.patched] == ["first-Pa55", "second-Pa55"]


async def test_oauth2_expired_token_is_not_used(scripted: ScriptedScim) -> None:
    """A token whose expires_in has run out is replaced before the request, not after a 401."""
    scripted.expires_in = 0
    async with scim_target(scripted.base_url, **oauth_fields(scripted)) as target:
        await target.set_password("alice", Password("Pa55-word"))
    assert scripted.issued == 2  # one for the lookup, a fresh one for the PATCH


async def test_oauth2_persistent_401_is_transient_and_not_a_loop(scripted: ScriptedScim) -> None:
    """When even a fresh token is refused, the error is transient 'credentials' after one retry."""
    scripted.tokens = _Forgetful()
    async with scim_target(scripted.base_url, **oauth_fields(scripted)) as target:
        with pytest.raises(TransientError, match="credentials"):
            await target.set_password("alice", Password("Pa55-word"))
    assert scripted.issued == 2
    assert scripted.patched == []


class _Forgetful(set[str]):
    """A token set that never holds anything: every token is refused."""

    def add(self, element: str) -> None:
        pass


async def test_oauth2_wrong_client_secret_is_transient(
    scripted: ScriptedScim, tmp_path: Path
) -> None:
    """A refused client secret (invalid_client) is transient, says so, and sends no password."""
    secret_file = tmp_path / "client.secret"
    write_secret(secret_file, "wrong-secret\n")
    fields = oauth_fields(scripted, client_secret_file=secret_file)
    del fields["client_secret"]
    async with scim_target(scripted.base_url, **fields) as target:
        with pytest.raises(TransientError, match="client credentials") as caught:
            await target.set_password("alice", Password("Pa55-word"))
        assert "invalid_client" in caught.value.reason
        assert "wrong-secret" not in caught.value.reason
        with pytest.raises(TransientError, match="client credentials"):
            await target.check()
        write_secret(secret_file, ScriptedScim.CLIENT_SECRET)  # fixed by the operator
        await target.set_password("alice", Password("Pa55-word"))
    assert len(scripted.patched) == 1


async def test_oauth2_client_secret_post(scripted: ScriptedScim) -> None:
    """With oauth2_client_auth = post the client id and secret travel in the form body."""
    async with scim_target(
        scripted.base_url, **oauth_fields(scripted, oauth2_client_auth="post")
    ) as target:
        await target.set_password("alice", Password("Pa55-word"))
    assert scripted.token_forms[0]["client_secret"] == ScriptedScim.CLIENT_SECRET
    assert len(scripted.patched) == 1


async def test_oauth2_token_endpoint_unavailable(scripted: ScriptedScim) -> None:
    """A token endpoint answering 503 with Retry-After is transient with that delay."""
    scripted.token_answers.append(web.Response(status=503, headers={"Retry-After": "30"}))
    async with scim_target(scripted.base_url, **oauth_fields(scripted)) as target:
        with pytest.raises(TransientError, match="token endpoint answered HTTP 503") as caught:
            await target.set_password("alice", Password("Pa55-word"))
    assert caught.value.retry_after == 30.0


def make_ca_and_server_cert(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (in ``ca.pem``) and a server TLS context with a 127.0.0.1 cert it signed."""
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pcns test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(*[False] * 5, True, True, False, False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


async def test_https_with_ca_file(tmp_path: Path) -> None:
    """Over https the server's certificate is checked against ca_file; unknown CAs are refused."""
    ca_file, server_tls = make_ca_and_server_cert(tmp_path)
    server = ScriptedScim()
    await server.start(tls=server_tls)
    try:
        settings = {"base_url": server.base_url, "token": "static-token"}
        async with scim_target(**settings, ca_file=ca_file, allow_insecure=False) as target:
            await target.set_password("alice", Password("Pa55-word"))
        async with scim_target(**settings, allow_insecure=False) as target:
            with pytest.raises(TransientError, match="TLS with SCIM server failed"):
                await target.set_password("alice", Password("Pa55-word"))
    finally:
        await server.stop()
    assert len(server.patched) == 1


# --- configuration ----------------------------------------------------------------------------


def settings_error(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        ScimSettings.model_validate(fields)
    return str(caught.value)


def test_plain_http_needs_allow_insecure() -> None:
    """http:// is refused unless allow_insecure = true, and the error names the field."""
    message = settings_error(base_url="http://scim.example/v2", token="t0ken")
    assert "base_url" in message
    assert "allow_insecure" in message
    message = settings_error(
        base_url="https://scim.example/v2",
        oauth2_token_url="http://idp.example/token",
        client_id="c",
        client_secret="s",
    )
    assert "oauth2_token_url" in message
    ScimSettings(base_url="https://scim.example/v2/", token="t0ken")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "exactly one of token, token_file and oauth2_token_url"),
        ({"token": "a", "token_file": "/nonexistent"}, "token_file"),
        ({"token": "a", "client_id": "c"}, "client_id only apply with oauth2_token_url"),
        ({"oauth2_token_url": "https://idp.example/t", "client_id": "c"}, "client_secret"),
        ({"token": "two words"}, "token"),
        ({"token": "a", "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"token": "a", "match_attribute": "email"}, "match_attribute"),
        ({"token": "a", "colour": "red"}, "colour"),
    ],
)
def test_invalid_settings_name_the_field(fields: dict[str, Any], named: str) -> None:
    """Each inconsistent or unknown setting is refused with a message naming it."""
    assert named in settings_error(base_url="https://scim.example/v2", **fields)


def test_secrets_stay_out_of_errors_and_reprs(tmp_path: Path) -> None:
    """Tokens and client secrets appear in no validation error, settings repr or target repr."""
    message = settings_error(base_url="ftp://scim.example", token="Sup3r-Secret-Token")
    assert "Sup3r-Secret-Token" not in message
    settings = ScimSettings(
        base_url="https://scim.example/v2",
        oauth2_token_url="https://idp.example/token",
        client_id="pcns",
        client_secret="Sup3r-Client-Secret",
    )
    assert "Sup3r-Client-Secret" not in repr(settings)
    assert "Sup3r-Client-Secret" not in repr(ScimTarget("app", settings))


def test_filter_escapes_quotes_and_backslashes() -> None:
    """Filter values are JSON strings: quotes and backslashes escaped, non-ASCII kept."""
    assert user_filter("userName", 'a"b\\c') == 'userName eq "a\\"b\\\\c"'
    assert user_filter("externalId", "łukasz") == 'externalId eq "łukasz"'
