"""The reference hook client: sign one password change and post it until pcns answers.

Transport failures, 429 and 5xx are retried with exponential backoff and full jitter under the
same webhook-id, so the receiver dedupes a resend; any other answer is final.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from pcns.errors import ConfigError
from pcns.receiver.signature import sign
from vault import HookPublicKey, KeyringError, parse_public_key, seal_for_hook
from vault.hook_seal import KEY_ID_PATTERN


def stable_webhook_id(secret: bytes, *parts: str | bytes) -> str:
    """A webhook-id that is the same for the same ``parts`` and unguessable without ``secret``.

    A hook that may be asked to send one change twice (a restart replays it) derives the id from
    what identifies the change, so pcns dedupes the resend. The parts are length-prefixed, so no
    two different lists give the same input; the key is derived from the source secret, so an id
    reveals nothing about its parts to anyone without that secret.
    """
    key = hmac.new(secret, b"pcns webhook-id v1", hashlib.sha256).digest()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        mac.update(len(data).to_bytes(4, "big") + data)
    return "pcns_" + mac.hexdigest()[:40]


@dataclass(frozen=True)
class NotifyResult:
    status: int
    body: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.status == 202


class _Retryable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotifyFailed(Exception):
    """pcns could not be reached, or kept answering 429/5xx, for the whole retry budget."""


@dataclass(frozen=True)
class Sender:
    url: str
    source: str
    secret: bytes
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 10.0
    max_delay: float = 60.0
    # When set, the password is sealed to this hook key and sent as ``sealed``.
    recipient: HookPublicKey | None = None

    async def send(self, change: dict[str, Any], *, webhook_id: str | None = None) -> NotifyResult:
        """Post ``change`` (with its ``password``), retrying transient failures."""
        wid = webhook_id or f"msg_{uuid.uuid4().hex}"
        if self.recipient is not None:
            change = self._sealed(change, wid, self.recipient)
        body = json.dumps(change, ensure_ascii=False).encode("utf-8")
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Retryable),
                wait=wait_random_exponential(multiplier=0.5, max=10),
                stop=stop_after_delay(self.max_delay),
                reraise=True,
            ):
                with attempt:
                    return await self._post_once(wid, body)
        except _Retryable as exc:
            raise NotifyFailed(exc.detail) from None
        raise NotifyFailed("no attempt made")  # pragma: no cover - tenacity reraises

    def _sealed(
        self, change: dict[str, Any], webhook_id: str, recipient: HookPublicKey
    ) -> dict[str, Any]:
        """``change`` with its password replaced by the password sealed to ``recipient``."""
        sealed = dict(change)
        ct = seal_for_hook(
            recipient,
            sealed.pop("password"),
            source=self.source,
            webhook_id=webhook_id,
            user=change["user"],
        )
        sealed["sealed"] = {"key_id": recipient.key_id, "ciphertext": base64.b64encode(ct).decode()}
        return sealed

    async def _post_once(self, webhook_id: str, body: bytes) -> NotifyResult:
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self.secret, webhook_id, ts, body),
            "pcns-source": self.source,
        }
        endpoint = self.url.rstrip("/") + "/v1/password-changes"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s,
                s.post(endpoint, data=body, headers=headers, ssl=self.ssl_context or True) as r,
            ):
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retryable(f"cannot reach {endpoint}: {type(exc).__name__}") from None
        if status == 429 or status >= 500:
            raise _Retryable(f"pcns answered {status}")
        try:
            parsed = json.loads(text) if text else {}
        except json.JSONDecodeError:
            parsed = {"detail": "response was not JSON"}
        return NotifyResult(status, parsed if isinstance(parsed, dict) else {})


def client_ssl_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext | None:
    """TLS for talking to the receiver: system CAs plus ``ca_file``, and a client certificate
    when the receiver wants mutual TLS. None when neither is configured."""
    if ca_file is None and cert_file is None:
        return None
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def load_recipient(key_id: str, path: Path) -> HookPublicKey:
    """The hook key to seal to: its id and its public half from ``path`` (the output of
    ``pcns keys hook export``, PEM or raw). :class:`ConfigError` names the file."""
    if not re.fullmatch(KEY_ID_PATTERN, key_id):
        raise ConfigError(f"recipient key id {key_id!r} is not a hook key id (hpk-...)")
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"recipient key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"recipient key file {path} cannot be read as text") from None
    try:
        return parse_public_key(key_id, text)
    except KeyringError as exc:
        raise ConfigError(f"recipient key file {path}: {exc}") from None
