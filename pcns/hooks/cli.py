"""``pcns hook samba|pam``: run by a directory or PAM for each password change.

``samba`` never loses a change: it answers ``DONE-EXIT: `` only once pcns has committed the
change (202), skipped it on purpose (no cleartext, or pcns refused the record itself with 400),
and otherwise exits non-zero without that line. syncpasswords then stops without advancing its
cache, and its next start (systemd restarts it) replays the change under the same webhook-id.
Nothing is spooled, so no password is ever written to the DC's disk by the hook.

``pam`` never blocks a password change: it gives up after ``timeout`` and exits 0 either way,
after reporting a change it could not deliver to syslog and stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import ssl
import sys
import syslog
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from pcns.client import NotifyFailed, NotifyResult, Sender
from pcns.errors import PcnsError
from pcns.hooks.config import HookSettings, load_hook_settings
from pcns.hooks.pam import PamInputError, pam_change
from pcns.hooks.samba import AccountRecord, LdifRecordError, parse_record
from pcns.logging import configure_logging
from pcns.secret_files import read_webhook_secret

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3
DONE = "DONE-EXIT: "


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hook = sub.add_parser("hook", help="password change hooks for domain controllers and PAM")
    hook_sub = hook.add_subparsers(dest="hook_command", required=True)
    samba = hook_sub.add_parser(
        "samba",
        help="the --script of samba-tool user syncpasswords: one LDIF record on stdin",
    )
    samba.add_argument("--config", type=Path, required=True, help="the hook's TOML file")
    pam = hook_sub.add_parser(
        "pam", help="for pam_exec.so expose_authtok on the password stack (fails open)"
    )
    pam.add_argument("--config", type=Path, required=True, help="the hook's TOML file")


async def run(args: argparse.Namespace) -> int:
    """Run one ``pcns hook`` command; returns the exit code."""
    if args.hook_command == "samba":
        return await _samba(args)
    return await _pam(args)


def _sender(settings: HookSettings, secret: bytes, *, max_delay: float) -> Sender:
    try:
        ctx = settings.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise PcnsError(f"hook config: cannot load ca_file/cert_file: {exc}") from None
    return Sender(
        url=settings.url,
        source=settings.source,
        secret=secret,
        ssl_context=ctx,
        timeout=settings.timeout,
        max_delay=max_delay,
        recipient=settings.recipient(),
    )


def _problem(result: NotifyResult) -> dict[str, Any]:
    """The fields of pcns' problem document worth logging (problems never echo the request)."""
    return {k: result.body.get(k) for k in ("type", "detail") if k in result.body}


# --- samba ---------------------------------------------------------------------------------


async def _samba(args: argparse.Namespace) -> int:
    # syncpasswords reads our stdout and stderr as one stream and wants it to *start* with the
    # answer, so every log line is held back and written after it.
    held = io.StringIO()
    configure_logging(level=args.log_level, stream=held)
    code, answer = await _samba_record(args.config)
    if answer is not None:
        sys.stdout.write(f"{DONE}{answer}\n")
    sys.stdout.flush()
    sys.stderr.write(held.getvalue())
    sys.stderr.flush()
    return code


async def _samba_record(config: Path) -> tuple[int, str | None]:
    log = structlog.get_logger("pcns.hook.samba")
    try:
        settings = load_hook_settings(config)
        secret = read_webhook_secret(settings.secret_file)
        sender = _sender(settings, secret, max_delay=settings.retry_for)
    except PcnsError as exc:
        log.error("hook_config_invalid", error=str(exc))
        return EXIT_CONFIG, None
    try:
        record = parse_record(sys.stdin.buffer.read())
    except LdifRecordError as exc:
        # Not acknowledged: syncpasswords stops, and the record is not lost.
        log.error("hook_record_invalid", error=str(exc))
        return EXIT_CONFIG, None
    log = log.bind(user=record.user, sid=record.sid)
    if record.password is None:
        reason = "deleted" if record.deleted else "no_cleartext"
        log.info("hook_change_skipped", reason=reason)
        return EXIT_OK, f"skipped {record.user}: {reason.replace('_', ' ')}"
    return await _send_record(record, settings, secret, sender, log)


async def _send_record(
    record: AccountRecord,
    settings: HookSettings,
    secret: bytes,
    sender: Sender,
    log: Any,
) -> tuple[int, str | None]:
    webhook_id = record.webhook_id(secret)
    log = log.bind(webhook_id=webhook_id)
    change = record.change(settings.domain)
    try:
        result = await sender.send(change, webhook_id=webhook_id)
    except NotifyFailed as exc:
        log.error(
            "hook_change_not_delivered",
            error=str(exc),
            retried_for=settings.retry_for,
            action="not acknowledged: syncpasswords stops and replays the change when restarted",
        )
        return EXIT_UNAVAILABLE, None
    if result.accepted:
        change_id = result.body.get("id")
        log.info("hook_change_sent", change_id=change_id)
        return EXIT_OK, f"sent {record.user} as change {change_id}"
    if result.status == 400:
        # The record itself can never be accepted (e.g. a password over 1024 characters);
        # stopping would hold every later change behind it forever.
        log.error(
            "hook_change_rejected", status=result.status, action="skipped", **_problem(result)
        )
        return EXIT_OK, f"skipped {record.user}: pcns refused the record ({result.status})"
    # 401, 404, 413, 415: this DC's hook is misconfigured; stop until an operator fixes it.
    log.error(
        "hook_change_refused",
        status=result.status,
        action="not acknowledged: fix url, source or secret_file, then restart syncpasswords",
        **_problem(result),
    )
    return EXIT_REFUSED, None


# --- pam -----------------------------------------------------------------------------------


def _report(priority: int, message: str) -> None:
    """To syslog (pam_exec sends stderr to /dev/null unless ``log=`` is set) and stderr."""
    syslog.openlog("pcns-hook", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(priority, message)
    print(f"pcns hook pam: {message}", file=sys.stderr, flush=True)


def _give_up(user: str, budget: float) -> None:
    def fire(_signum: int, _frame: FrameType | None) -> None:
        _report(syslog.LOG_ERR, f"password change of {user} NOT delivered: gave up after {budget}s")
        os._exit(EXIT_OK)

    signal.signal(signal.SIGALRM, fire)
    # The last resort, for whatever asyncio's own timeout cannot interrupt (a stuck resolver).
    signal.setitimer(signal.ITIMER_REAL, budget + 1.0)


async def _pam(args: argparse.Namespace) -> int:
    """Always exit 0: pam_exec turns any other status into PAM_SYSTEM_ERR."""
    try:
        settings = load_hook_settings(args.config)
    except PcnsError as exc:
        _report(syslog.LOG_ERR, f"password change NOT delivered: {exc}")
        return EXIT_OK
    _give_up(os.environ.get("PAM_USER", "?"), settings.timeout)
    try:
        found = pam_change(os.environ, sys.stdin.buffer.read())
    except PamInputError as exc:
        _report(syslog.LOG_ERR, f"password change NOT delivered: {exc}")
        return EXIT_OK
    if found is None:
        return EXIT_OK  # not the password stack: nothing to do
    what = f"password change of {found.user}"
    try:
        secret = read_webhook_secret(settings.secret_file)
        sender = _sender(settings, secret, max_delay=settings.timeout)
    except PcnsError as exc:
        _report(syslog.LOG_ERR, f"{what} NOT delivered: {exc}")
        return EXIT_OK
    change: dict[str, Any] = {"user": found.user, "password": found.password}
    if settings.domain:
        change["domain"] = settings.domain
    try:
        # A new random webhook-id per run: PAM never replays, and setting an earlier password
        # again is a new change. Retries inside the budget reuse the id.
        result = await asyncio.wait_for(sender.send(change), timeout=settings.timeout)
    except (NotifyFailed, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {settings.timeout}s"
        _report(syslog.LOG_ERR, f"{what} NOT delivered ({reason}); it was not sent to pcns")
        return EXIT_OK
    if result.accepted:
        _report(syslog.LOG_INFO, f"{what} delivered to pcns as change {result.body.get('id')}")
    else:
        problem = _problem(result)
        _report(
            syslog.LOG_ERR,
            f"{what} NOT delivered: pcns refused it ({result.status} {problem.get('type', '')})",
        )
    return EXIT_OK
