"""The ``transit`` KEK provider: HashiCorp Vault / OpenBao transit engine.

The KEK never leaves the server: wrapping is ``encrypt``, unwrapping ``decrypt``, and after a key
version rotation on the server, ``rewrap`` moves wrapped keys to the newest version without the
data key passing through pcns. Auth is a token file or AppRole (role id + secret id file).
"""

from __future__ import annotations

import base64
import binascii
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from vault._private_file import read_private_file
from vault.errors import KekError
from vault.kek import WrappedKey, wrap_context


@dataclass(frozen=True)
class TransitConfig:
    url: str
    key: str = "pcns"
    mount: str = "transit"
    token_file: Path | None = None
    approle_role_id: str | None = None
    approle_secret_id_file: Path | None = None
    approle_mount: str = "approle"
    ca_file: Path | None = None
    namespace: str | None = None
    timeout: float = 10.0


def _read_secret(path: Path, what: str) -> str:
    return read_private_file(path, label=f"transit KEK: {what} file")


def _version(blob: bytes) -> int:
    try:
        prefix, version, _ = blob.decode("ascii").split(":", 2)
        if prefix != "vault" or not version.startswith("v"):
            raise ValueError(version)
        return int(version[1:])
    except (UnicodeDecodeError, ValueError):
        raise KekError("transit KEK: stored wrapped key is not a transit ciphertext") from None


class TransitKek:
    """Wraps data keys with the server's transit key; the token or secret id file is mode 0600."""

    name = "transit"

    def __init__(self, config: TransitConfig) -> None:
        if (config.token_file is None) == (config.approle_role_id is None):
            raise KekError("transit KEK: configure exactly one of token_file and approle_role_id")
        if config.approle_role_id is not None and config.approle_secret_id_file is None:
            raise KekError("transit KEK: approle_role_id needs approle_secret_id_file")
        self._config = config
        self._ref = f"transit:{config.mount}/{config.key}"
        self._token: str | None = None
        self._session: aiohttp.ClientSession | None = None
        # Check the credential file now, so an unsafe or missing one stops the start; it is
        # read again at every login, which picks up a rotated token or secret id.
        if config.token_file is not None:
            self._token = _read_secret(config.token_file, "token")
        else:
            assert config.approle_secret_id_file is not None
            _read_secret(config.approle_secret_id_file, "AppRole secret id")

    def __repr__(self) -> str:
        return f"TransitKek(url={self._config.url!r}, key={self._ref!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx: ssl.SSLContext | bool = True
            if self._config.ca_file is not None:
                ctx = ssl.create_default_context(cafile=str(self._config.ca_file))
            self._session = aiohttp.ClientSession(
                base_url=self._config.url.rstrip("/") + "/",
                timeout=aiohttp.ClientTimeout(total=self._config.timeout),
                connector=aiohttp.TCPConnector(ssl=ctx),
            )
        return self._session

    async def _login(self) -> str:
        c = self._config
        if c.token_file is not None:
            return _read_secret(c.token_file, "token")
        assert c.approle_secret_id_file is not None
        body = {
            "role_id": c.approle_role_id,
            "secret_id": _read_secret(c.approle_secret_id_file, "AppRole secret id"),
        }
        data = await self._call("POST", f"v1/auth/{c.approle_mount}/login", body, auth=False)
        try:
            token: str = data["auth"]["client_token"]
        except (KeyError, TypeError):
            raise KekError("transit KEK: AppRole login returned no token") from None
        return token

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, auth: bool = True
    ) -> dict[str, Any]:
        for attempt in range(2):
            headers = {}
            if self._config.namespace:
                headers["X-Vault-Namespace"] = self._config.namespace
            if auth:
                if self._token is None:
                    self._token = await self._login()
                headers["X-Vault-Token"] = self._token
            try:
                async with self._client().request(method, path, json=body, headers=headers) as r:
                    status = r.status
                    payload: Any = await r.json(content_type=None) if r.content_length != 0 else {}
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise KekError(
                    f"transit KEK: cannot reach {self._config.url}: {type(exc).__name__}"
                ) from None
            if status == 403 and auth and attempt == 0:
                self._token = None  # expired or revoked token: log in again once
                continue
            if status >= 400:
                errors = payload.get("errors") if isinstance(payload, dict) else None
                detail = "; ".join(str(e)[:200] for e in errors or []) or "no detail"
                raise KekError(f"transit KEK: {method} {path} answered {status}: {detail}")
            return payload if isinstance(payload, dict) else {}
        raise KekError("transit KEK: permission denied after a fresh login")

    def _path(self, op: str) -> str:
        return f"v1/{self._config.mount}/{op}/{self._config.key}"

    async def wrap(self, dek_id: str, key: bytes) -> WrappedKey:
        plaintext = base64.b64encode(wrap_context(dek_id) + key).decode("ascii")
        data = await self._call("POST", self._path("encrypt"), {"plaintext": plaintext})
        return WrappedKey(self._ref, self._ciphertext(data))

    async def unwrap(self, dek_id: str, wrapped: WrappedKey) -> bytes:
        if wrapped.kek_ref != self._ref:
            raise KekError(
                f"transit KEK: data key {dek_id!r} is wrapped by {wrapped.kek_ref!r}, "
                f"but this service is configured for {self._ref!r}"
            )
        data = await self._call(
            "POST", self._path("decrypt"), {"ciphertext": wrapped.blob.decode("ascii")}
        )
        try:
            raw = base64.b64decode(data["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise KekError("transit KEK: decrypt returned no plaintext") from None
        context = wrap_context(dek_id)
        if not raw.startswith(context):
            raise KekError(f"transit KEK: wrapped key stored for {dek_id!r} belongs to another id")
        return raw[len(context) :]

    async def rewrap(self, dek_id: str, wrapped: WrappedKey) -> WrappedKey:
        data = await self._call(
            "POST", self._path("rewrap"), {"ciphertext": wrapped.blob.decode("ascii")}
        )
        return WrappedKey(self._ref, self._ciphertext(data))

    async def is_current(self, wrapped: WrappedKey) -> bool:
        data = await self._call("GET", f"v1/{self._config.mount}/keys/{self._config.key}")
        try:
            latest = int(data["data"]["latest_version"])
        except (KeyError, TypeError, ValueError):
            raise KekError("transit KEK: key info has no latest_version") from None
        return _version(wrapped.blob) == latest

    @staticmethod
    def _ciphertext(data: dict[str, Any]) -> bytes:
        try:
            return str(data["data"]["ciphertext"]).encode("ascii")
        except (KeyError, TypeError):
            raise KekError("transit KEK: response has no ciphertext") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
