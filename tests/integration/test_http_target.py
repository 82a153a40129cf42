"""The http adapter against a small real REST app (aiohttp.web) started in each test.

The app records every request it receives and stores the JSON body per account; a test proves
delivery by what the app stored: the exact plaintext, or a hash that argon2-cffi or bcrypt (the
app's own verifiers) accept.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import argon2
import bcrypt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import JsonValue, ValidationError

from targets.base import Password, PermanentError, TransientError
from targets.http import HttpSettings, HttpTarget
from tests.support import write_secret

UNICODE = "Пароль-密码-🔑-ß"
LONG = "aB3$" * 32  # 128 characters
# JSON-significant characters, and text that looks like the templates' own placeholders.
TRICKY = 'q"uo\\te/\ttab-{account}-{password}-{{x}}-\u0000-\u2028'
BODY: dict[str, JsonValue] = {"user": "{account}", "password": "{password}"}


@dataclass
class Received:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes
    client_cn: str | None
    content_types: list[str]


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    hang: bool = False


class UserApp:
    """A REST app: ``PUT|POST|PATCH /api/users/<account>/password`` with a JSON body stores
    that body for the account and answers 204; queued replies override the answer."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.stored: dict[str, Any] = {}
        self.replies: list[Reply] = []
        self.required_auth: str | None = None
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = dict(item[0] for item in peer["subject"]).get("commonName") if peer else None
        self.received.append(
            Received(
                request.method,
                request.raw_path,
                dict(request.headers),
                body,
                cn,
                request.headers.getall("Content-Type", []),
            )
        )
        if self.required_auth and request.headers.get("Authorization") != self.required_auth:
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.replies:
            reply = self.replies.pop(0)
            if reply.hang:
                await self.release.wait()
            return web.Response(status=reply.status, headers=reply.headers, text=reply.text)
        segments = request.raw_path.split("?")[0].split("/")
        if request.method == "GET" or segments[1:3] != ["api", "users"]:
            return web.json_response({"status": "ok"})
        self.stored[unquote(segments[3])] = json.loads(body)
        return web.Response(status=204)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    directory: Path,
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(True, False, False, False, False, False, False, False, False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate ``pcns-client``."""
    directory = tmp_path_factory.mktemp("pki")
    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    ca = _issue(
        directory,
        "ca",
        None,
        [(x509.BasicConstraints(ca=True, path_length=None), True), (ca_usage, True)],
    )
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True), (_leaf_usage(), True)]
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    server_eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    client_eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    _issue(directory, "server", ca, [*leaf, (san, False), (server_eku, False)])
    _issue(directory, "pcns-client", ca, [*leaf, (client_eku, False)])
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "pcns-client.pem",
        client_key=directory / "pcns-client.key",
    )


async def _serve(app_state: UserApp, context: ssl.SSLContext | None) -> AsyncIterator[UserApp]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", app_state.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    app_state.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    try:
        yield app_state
    finally:
        app_state.release.set()
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[UserApp]:
    """The REST app over plain http on a free loopback port."""
    async for state in _serve(UserApp(), None):
        yield state


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[UserApp]:
    """The REST app over https, requiring a client certificate issued by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(pki.ca)
    async for state in _serve(UserApp(), context):
        yield state


@pytest.fixture
async def plain(server: UserApp) -> AsyncIterator[Callable[..., HttpTarget]]:
    """Targets for ``server`` over plain http (allow_insecure), closed after the test."""
    made: list[HttpTarget] = []

    def build(**overrides: Any) -> HttpTarget:
        settings: dict[str, Any] = {
            "url": server.url + "/api/users/{account}/password",
            "allow_insecure": True,
            "method": "PUT",
            "body": BODY,
            **overrides,
        }
        target = HttpTarget("app", HttpSettings.model_validate(settings))
        made.append(target)
        return target

    yield build
    for target in made:
        await target.close()


@pytest.mark.parametrize("password", ["s3cret-Pa55", UNICODE, LONG, TRICKY])
async def test_app_stores_exactly_the_password(
    server: UserApp, plain: Callable[..., HttpTarget], password: str
) -> None:
    """The app receives the exact password, Unicode, 128 characters and JSON escapes included."""
    await plain().set_password("alice", Password(password))
    assert server.stored == {"alice": {"user": "alice", "password": password}}
    request = server.received[0]
    assert request.method == "PUT"
    assert request.headers["Content-Type"] == "application/json"
    json.loads(request.body.decode("utf-8"))  # well-formed UTF-8 JSON


async def test_nested_body_keeps_structure_and_types(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """Placeholders fill strings at any depth; numbers, booleans and null pass through."""
    body = {
        "user": {"name": "{account}", "ref": "acct-{account}"},
        "credentials": [{"type": "password", "value": "{password}", "temporary": False}],
        "notify": None,
        "version": 3,
        "literal": "{{not a placeholder}}",
    }
    await plain(body=body).set_password("bob", Password(UNICODE))
    assert server.stored["bob"] == {
        "user": {"name": "bob", "ref": "acct-bob"},
        "credentials": [{"type": "password", "value": UNICODE, "temporary": False}],
        "notify": None,
        "version": 3,
        "literal": "{not a placeholder}",
    }


def argon2_verifies(hashed: str, password: str) -> bool:
    try:
        return argon2.PasswordHasher().verify(hashed, password)
    except argon2.exceptions.VerifyMismatchError:
        return False


def bcrypt_verifies(hashed: str, password: str) -> bool:
    return bcrypt.checkpw(password.encode(), hashed.encode())


async def test_configured_headers_and_content_type(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """Headers are templated over the account; a configured Content-Type replaces the default."""
    headers = {"content-type": "application/vnd.api+json", "X-Acting-For": "pcns:{account}"}
    await plain(headers=headers, method="POST").set_password("dave", Password("pw"))
    request = server.received[0]
    assert request.method == "POST"
    assert request.content_types == ["application/vnd.api+json"]
    assert request.headers["X-Acting-For"] == "pcns:dave"
    assert server.stored["dave"]["password"] == "pw"


@pytest.mark.parametrize(
    ("scheme", "verify"), [("argon2id", argon2_verifies), ("bcrypt", bcrypt_verifies)]
)
async def test_app_stores_a_hash_its_own_verifier_accepts(
    server: UserApp,
    plain: Callable[..., HttpTarget],
    scheme: str,
    verify: Callable[[str, str], bool],
) -> None:
    """With ``hash`` set the app gets only a hash, which its own library verifies."""
    body = {"user": "{account}", "password_hash": "{password_hash}"}
    await plain(body=body, hash=scheme).set_password("carol", Password(UNICODE))
    hashed = server.stored["carol"]["password_hash"]
    assert verify(hashed, UNICODE)
    assert not verify(hashed, "Пароль-密码-🔑-ss")
    assert UNICODE.encode() not in server.received[0].body


async def test_account_is_percent_encoded_in_the_url(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """Every reserved character of the account is escaped, so it stays one path segment."""
    account = "ann/o'hara?x=1&y=#é +"
    target = plain(url=server.url + "/api/users/{account}/password?for={account}")
    await target.set_password(account, Password("pw"))
    encoded = "ann%2Fo%27hara%3Fx%3D1%26y%3D%23%C3%A9%20%2B"
    assert server.received[0].raw_path == f"/api/users/{encoded}/password?for={encoded}"
    assert account in server.stored


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, None),
        (201, None),
        (204, None),
        (400, PermanentError),
        (404, PermanentError),
        (409, PermanentError),
        (422, PermanentError),
        (408, TransientError),
        (429, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (401, PermanentError),
        (403, PermanentError),
        (302, PermanentError),
        (418, PermanentError),
    ],
)
async def test_default_status_classification(
    server: UserApp, plain: Callable[..., HttpTarget], status: int, outcome: type[Exception] | None
) -> None:
    """2xx is done; 400/404/409/422 and unlisted codes permanent; 408, 429 and 5xx transient."""
    server.replies.append(Reply(status, headers={"Location": "http://127.0.0.1:9/elsewhere"}))
    target = plain()
    if outcome is None:
        await target.set_password("alice", Password("pw"))
    else:
        with pytest.raises(outcome, match=f"HTTP {status}"):
            await target.set_password("alice", Password("pw"))
    assert len(server.received) == 1  # redirects are not followed


async def test_configured_classification_exact_code_beats_class(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """Configured lists replace the defaults, and an exact code wins over its class."""
    target = plain(done=[200, 202], permanent=["5xx"], transient=[503, 401])
    for status, outcome in [
        (500, PermanentError),
        (503, TransientError),
        (401, TransientError),
        (204, PermanentError),
    ]:
        server.replies.append(Reply(status))
        with pytest.raises(outcome):
            await target.set_password("alice", Password("pw"))
    server.replies.append(Reply(202))
    await target.set_password("alice", Password("pw"))


async def test_retry_after_seconds_and_http_date(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """A transient answer's Retry-After, in seconds or as an HTTP-date, becomes retry_after."""
    target = plain()
    server.replies.append(Reply(429, headers={"Retry-After": "7"}))
    with pytest.raises(TransientError) as seconds:
        await target.set_password("alice", Password("pw"))
    assert seconds.value.retry_after == 7

    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    server.replies.append(
        Reply(503, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)})
    )
    with pytest.raises(TransientError) as date:
        await target.set_password("alice", Password("pw"))
    assert date.value.retry_after is not None
    assert 100 <= date.value.retry_after <= 121

    server.replies.append(Reply(503, headers={"Retry-After": "soon"}))
    with pytest.raises(TransientError) as junk:
        await target.set_password("alice", Password("pw"))
    assert junk.value.retry_after is None


async def test_permanent_reason_quotes_a_short_excerpt_of_the_body(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """A refusal's body is quoted on one line and cut to 200 characters."""
    message = "password too weak:\n  needs a digit " + "x" * 500
    server.replies.append(Reply(422, text=message))
    with pytest.raises(PermanentError) as refused:
        await plain().set_password("alice", Password("pw"))
    assert "HTTP 422 Unprocessable" in refused.value.reason
    assert "password too weak: needs a digit xxx" in refused.value.reason
    assert "x" * 201 not in refused.value.reason


@pytest.mark.parametrize("echo", [lambda pw: pw, lambda pw: json.dumps({"got": pw})])
async def test_body_echoing_the_password_is_withheld(
    server: UserApp, plain: Callable[..., HttpTarget], echo: Callable[[str], str]
) -> None:
    """A refusal whose body echoes the password (raw or JSON-escaped) is reported without it."""
    server.replies.append(Reply(400, text=f"rejected {echo(UNICODE)} as too common"))
    with pytest.raises(PermanentError) as refused:
        await plain().set_password("alice", Password(UNICODE))
    assert "withheld" in refused.value.reason
    assert "rejected" not in refused.value.reason
    assert "Пароль" not in str(refused.value)


async def test_body_repeating_part_of_the_password_is_withheld(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """A refusal quoting a piece of the password (its first four characters, upper-cased) is
    reported without the body."""
    server.replies.append(Reply(422, text=f"{UNICODE[:4].upper()}... is too common"))
    with pytest.raises(PermanentError) as refused:
        await plain().set_password("alice", Password(UNICODE))
    assert refused.value.reason.endswith("(body withheld: it echoes the password)")
    assert "common" not in refused.value.reason


async def test_basic_auth(
    server: UserApp, plain: Callable[..., HttpTarget], tmp_path: Path
) -> None:
    """basic_user and basic_password_file authenticate; a wrong password gets 401, permanent."""
    secret = tmp_path / "basic.secret"
    write_secret(secret, "svc-Pässword\n")
    server.required_auth = "Basic " + base64.b64encode("pcns-svc:svc-Pässword".encode()).decode()
    target = plain(basic_user="pcns-svc", basic_password_file=secret)
    await target.set_password("alice", Password("pw"))
    assert server.stored["alice"]["password"] == "pw"

    write_secret(secret, "rotated-wrong\n")  # re-read per request: a rotated file needs no restart
    with pytest.raises(PermanentError, match="HTTP 401"):
        await target.set_password("alice", Password("pw2"))


async def test_bearer_auth(
    server: UserApp, plain: Callable[..., HttpTarget], tmp_path: Path
) -> None:
    """bearer_token_file sends ``Authorization: Bearer <token>``; without it the app refuses."""
    token = tmp_path / "token"
    write_secret(token, "tok-123.abc\n")
    server.required_auth = "Bearer tok-123.abc"
    await plain(bearer_token_file=token).set_password("alice", Password("pw"))
    assert server.stored["alice"]["password"] == "pw"
    with pytest.raises(PermanentError, match="HTTP 401"):
        await plain().set_password("bob", Password("pw"))
    assert "bob" not in server.stored


async def test_client_certificate_over_tls(tls_server: UserApp, pki: Pki) -> None:
    """Over https with a client certificate the app sees the certificate and stores the password;
    without one the TLS server refuses the connection and nothing is delivered."""
    common = {
        "url": tls_server.url + "/api/users/{account}/password",
        "body": BODY,
        "ca_file": pki.ca,
    }
    with_cert = HttpTarget(
        "app",
        HttpSettings.model_validate(
            {**common, "client_cert": pki.client_cert, "client_key": pki.client_key}
        ),
    )
    without_cert = HttpTarget("app", HttpSettings.model_validate(common))
    try:
        await with_cert.set_password("alice", Password(UNICODE))
        assert tls_server.stored["alice"]["password"] == UNICODE
        assert tls_server.received[0].client_cn == "pcns-client"
        await with_cert.check()

        with pytest.raises(TransientError):
            await without_cert.set_password("bob", Password("pw"))
        assert "bob" not in tls_server.stored
    finally:
        await with_cert.close()
        await without_cert.close()


async def test_untrusted_server_certificate_is_transient(tls_server: UserApp, pki: Pki) -> None:
    """A server certificate outside the trusted CAs stops the request before anything is sent."""
    settings = {
        "url": tls_server.url + "/api/users/{account}/password",
        "body": BODY,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }
    target = HttpTarget("app", HttpSettings.model_validate(settings))
    try:
        with pytest.raises(TransientError, match="certificate"):
            await target.set_password("alice", Password("pw"))
        with pytest.raises(TransientError, match="certificate"):
            await target.check()
    finally:
        await target.close()
    assert tls_server.received == []


async def test_connection_refused_and_timeout_are_transient(
    server: UserApp, plain: Callable[..., HttpTarget]
) -> None:
    """A closed port and an app that does not answer within ``timeout`` are both transient."""
    closed = plain(url="http://127.0.0.1:9/api/users/{account}/password")
    with pytest.raises(TransientError, match="cannot connect"):
        await closed.set_password("alice", Password("pw"))
    with pytest.raises(TransientError):
        await closed.check()

    server.replies.append(Reply(204, hang=True))
    with pytest.raises(TransientError, match="did not answer"):
        await plain(timeout=0.3).set_password("alice", Password("pw"))


async def test_check_url_and_tcp_probe(server: UserApp, plain: Callable[..., HttpTarget]) -> None:
    """check() GETs check_url (2xx ready, 503 transient) or, without one, connects to the host."""
    target = plain(check_url=server.url + "/health", headers={"X-Tenant": "blue"})
    await target.check()
    assert server.received[-1].method == "GET"
    assert server.received[-1].raw_path == "/health"
    assert server.received[-1].headers["X-Tenant"] == "blue"
    server.replies.append(Reply(503, headers={"Retry-After": "30"}))
    with pytest.raises(TransientError) as busy:
        await target.check()
    assert busy.value.retry_after == 30
    before = len(server.received)
    await plain().check()
    assert len(server.received) == before  # the TCP probe sends no request
    assert server.stored == {}


async def test_password_never_in_url_headers_or_logs(
    server: UserApp, plain: Callable[..., HttpTarget], caplog: pytest.LogCaptureFixture
) -> None:
    """Across a success, a refusal and a transient failure, the password appears only in bodies."""
    caplog.set_level(logging.DEBUG)
    password = "Sentinel-" + UNICODE
    target = plain(headers={"X-Account": "{account}"}, body={"u": "{account}", "p": "{password}"})
    await target.set_password("alice", Password(password))
    server.replies += [Reply(400, text=password), Reply(503)]
    errors = []
    for _ in range(2):
        with pytest.raises((PermanentError, TransientError)) as failed:
            await target.set_password("alice", Password(password))
        errors.append(failed.value)

    forms = [password, json.dumps(password)[1:-1], "Sentinel-"]
    for request in server.received:
        assert request.headers["X-Account"] == "alice"
        assert not any(f in request.raw_path or f in str(request.headers) for f in forms)
        assert json.loads(request.body)["p"] == password
    assert not any(f in caplog.text for f in forms)
    assert not any(f in str(e) or f in repr(e) for e in errors for f in forms)
    assert "Sentinel" not in repr(target)


def test_plain_http_needs_allow_insecure() -> None:
    """An http:// url or check_url is refused unless allow_insecure is set, naming the field."""
    with pytest.raises(ValidationError, match=r"url\n.*allow_insecure"):
        HttpSettings(url="http://app.example/api/{account}", body=BODY)
    with pytest.raises(ValidationError, match=r"check_url\n.*allow_insecure"):
        HttpSettings(url="https://app.example/{account}", check_url="http://x/", body=BODY)
    HttpSettings(url="http://app.example/api/{account}", body=BODY, allow_insecure=True)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "https://a/{password}"}, r"url\n.*only in body"),
        ({"headers": {"X-P": "{password}"}}, r"headers\n.*only in body"),
        ({"headers": {"X-H": "{password_hash}"}, "hash": "bcrypt"}, r"headers\n.*only in body"),
        ({"body": {"user": "{account}"}}, r"body\n.*must use \{password\}"),
        ({"body": {"p": "{password_hash}"}}, r"body\n.*needs a hash scheme"),
        ({"hash": "argon2id"}, r"body\n.*hash is set"),
        ({"body": {"p": "{password!r}"}}, r"body\n.*not allowed"),
        ({"url": "https://{account}.example/"}, r"url\n.*not the host"),
        ({"url": "https://u:p@a/{account}"}, r"url\n.*no credentials"),
        ({"url": "ftp://a/{account}"}, r"url\n.*https://"),
        ({"permanent": [503], "transient": ["503"]}, r"503 is listed in both"),
        ({"transient": ["6xx"]}, r"transient\n.*neither a status code"),
        ({"basic_user": "svc"}, r"basic_password_file: set both"),
        ({"client_key": "/nonexistent.key"}, r"client_key: needs client_cert"),
        ({"bearer_token_file": "/nonexistent/token"}, r"bearer_token_file: cannot read"),
        ({"method": "GET"}, r"method"),
        ({"colour": "red"}, r"colour"),
    ],
)
def test_settings_refuse_bad_configuration(settings: dict[str, Any], message: str) -> None:
    """Misplaced password placeholders, unknown fields and conflicting rules are load errors."""
    base: dict[str, Any] = {"url": "https://app.example/api/{account}", "body": BODY}
    with pytest.raises(ValidationError, match=message):
        HttpSettings.model_validate({**base, **settings})


def test_validation_errors_never_echo_input() -> None:
    """A refused setting is named, but its value (it may be an API key) is not repeated."""
    with pytest.raises(ValidationError) as refused:
        HttpSettings.model_validate(
            {
                "url": "https://app.example/{account}",
                "body": BODY,
                "headers": {"X-Api-Key": "key-Sentinel-{password}"},
            }
        )
    assert "Sentinel" not in str(refused.value)
