"""A steady signed load that remembers what the service acknowledged.

Changes go out at ``rate`` per second, each for an account picked at random among those with
no change on its way, each with a password never used before that carries the change's sequence
number. An account's next change is sent only once its last was acknowledged, so the order of
an account's acknowledged changes is the order the service received them in. Each change is
sent to the receivers in turn until one answers 202: after a connection error, a timeout or a
503 the same request (same ``webhook-id``, signed afresh) goes to the next receiver, and a
receiver that committed it before dying answers the resend with the same change id. Only a 202
counts.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from pcns.receiver.signature import sign

SOURCE = "dc01"
RETRY_PAUSE = 0.1  # s between tries of one change: the next receiver, or this one restarted


@dataclass(frozen=True)
class Sent:
    """A change as the load made it (``seq`` orders an account's changes)."""

    account: str
    seq: int
    password: str
    webhook_id: str


@dataclass(frozen=True)
class Ack:
    """An acknowledged change: what was sent, the change id of the 202, seconds to the ack."""

    sent: Sent
    change_id: str
    tries: int
    latency: float


@dataclass
class SignedLoad:
    """Run with :meth:`run`; afterwards ``acks`` holds every acknowledged change, ``unsettled``
    every change still without an answer when the load gave up on it."""

    urls: list[str]
    secret: bytes
    accounts: list[str]
    rate: float
    rng: random.Random
    request_timeout: float = 10.0
    acks: list[Ack] = field(default_factory=list)
    unsettled: list[Sent] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # answers that end a change unsent
    retries: Counter[str] = field(default_factory=Counter)  # why a change was sent again
    busy_ticks: int = 0  # ticks with every account's change still on its way
    _seq: int = 0
    _next_url: int = 0

    def _make(self, account: str) -> Sent:
        self._seq += 1
        password = f"Soak-{self._seq:07d}-{secrets.token_hex(6)}"
        return Sent(account, self._seq, password, f"msg_soak-{self._seq}-{secrets.token_hex(4)}")

    def _signed(self, change: Sent) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"user": change.account, "password": change.password}).encode()
        now = int(time.time())
        return body, {
            "content-type": "application/json",
            "pcns-source": SOURCE,
            "webhook-id": change.webhook_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(self.secret, change.webhook_id, now, body),
        }

    async def _send(
        self, session: aiohttp.ClientSession, change: Sent, give_up: asyncio.Event
    ) -> None:
        started = time.monotonic()
        tries = 0
        while not give_up.is_set():
            tries += 1
            url = self.urls[self._next_url % len(self.urls)] + "/v1/password-changes"
            self._next_url += 1
            body, headers = self._signed(change)
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.retries[type(exc).__name__] += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if status == 202:
                change_id = json.loads(text)["id"]
                self.acks.append(Ack(change, change_id, tries, time.monotonic() - started))
                return
            if status == 503:
                self.retries["503"] += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.refused[f"{status} {text[:120]}"] += 1
            return
        self.unsettled.append(change)

    async def run(self, stop: asyncio.Event, give_up: asyncio.Event) -> None:
        """Send until ``stop``; then wait for the changes on their way, until ``give_up``."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        idle = list(self.accounts)
        sending: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(account: str) -> None:
                try:
                    await self._send(session, self._make(account), give_up)
                finally:
                    idle.append(account)

            start, tick = loop.time(), 0
            while not stop.is_set():
                tick += 1
                delay = start + tick / self.rate - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                        break
                    except TimeoutError:
                        pass
                if not idle:
                    self.busy_ticks += 1
                    continue
                account = idle.pop(self.rng.randrange(len(idle)))
                task = asyncio.create_task(one(account))
                sending.add(task)
                task.add_done_callback(sending.discard)
            if sending:
                await asyncio.gather(*sending)
