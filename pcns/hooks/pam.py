"""What ``pam_exec.so expose_authtok`` hands a command on the ``password`` stack.

pam_exec runs the command once per password change, in the ``PAM_UPDATE_AUTHTOK`` phase (it
skips ``PAM_PRELIM_CHECK``), with ``PAM_TYPE=password`` and ``PAM_USER`` in the environment and
the new password on stdin followed by one NUL byte (at most ``PAM_MAX_RESP_SIZE`` bytes of it).
A person testing the hook by hand types it with a newline instead; both are accepted. pam_exec
exposes the token on the password stack only from Linux-PAM 1.6.0 on (Debian 12's 1.5.2 leaves
stdin empty: checked with pamtester).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class PamInputError(ValueError):
    """The environment or stdin is not a password change (the message never shows the token)."""


@dataclass(frozen=True)
class PamChange:
    user: str
    service: str | None
    password: str = field(repr=False)


def read_authtok(data: bytes) -> str:
    """The password from pam_exec's stdin: up to the first NUL, else minus one trailing newline."""
    if b"\0" in data:
        data = data.split(b"\0", 1)[0]
    elif data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        # Linux-PAM before 1.6.0 exposes the token only on the auth stack: stdin stays empty.
        raise PamInputError(
            "no password on stdin: needs pam_exec expose_authtok, on the password stack "
            "from Linux-PAM 1.6.0 on"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PamInputError("the password on stdin is not UTF-8") from None


def pam_change(env: Mapping[str, str], stdin: bytes) -> PamChange | None:
    """The change pam_exec describes, or None when this is not the password stack."""
    if env.get("PAM_TYPE") != "password":
        return None
    user = env.get("PAM_USER", "")
    if not user:
        raise PamInputError("PAM_USER is not set")
    return PamChange(user=user, service=env.get("PAM_SERVICE"), password=read_authtok(stdin))
