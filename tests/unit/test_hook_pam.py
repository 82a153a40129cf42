"""What the PAM hook takes from pam_exec: the token on stdin, the user and type from the
environment."""

from __future__ import annotations

import pytest

from pcns.hooks.pam import PamInputError, pam_change, read_authtok

ENV = {"PAM_TYPE": "password", "PAM_USER": "alice", "PAM_SERVICE": "passwd"}


@pytest.mark.parametrize(
    ("stdin", "password"),
    [
        (b"N3w-Passw0rd!\0", "N3w-Passw0rd!"),  # pam_exec: the token and its NUL
        (b"N3w-Passw0rd!\n", "N3w-Passw0rd!"),  # typed by hand
        (b"N3w-Passw0rd!\r\n", "N3w-Passw0rd!"),
        (b"N3w-Passw0rd!", "N3w-Passw0rd!"),
        (b"ends in newline\n\0", "ends in newline\n"),  # NUL-terminated: the newline is data
        ("Пароль-密码-🔑-ß\0".encode(), "Пароль-密码-🔑-ß"),
    ],
)
def test_authtok_nul_or_newline_terminated(stdin: bytes, password: str) -> None:
    """Both terminators pam_exec and a person use are removed, nothing else."""
    assert read_authtok(stdin) == password


@pytest.mark.parametrize("stdin", [b"", b"\0", b"\n", b"\xff\xfe\0"])
def test_blank_or_undecodable_token_is_refused(stdin: bytes) -> None:
    """pam_exec writes a lone NUL for a missing token; that is no password to send."""
    with pytest.raises(PamInputError):
        read_authtok(stdin)


def test_change_from_pam_environment() -> None:
    """PAM_USER names the account; PAM_SERVICE is kept for the log."""
    change = pam_change(ENV, b"N3w-Passw0rd!\0")
    assert change is not None
    assert (change.user, change.service, change.password) == ("alice", "passwd", "N3w-Passw0rd!")
    assert "N3w" not in repr(change)


@pytest.mark.parametrize("pam_type", ["auth", "account", "open_session", None])
def test_other_stacks_are_ignored(pam_type: str | None) -> None:
    """Only the password stack carries a new password; anything else is not a change."""
    env = {k: v for k, v in ENV.items() if k != "PAM_TYPE"}
    if pam_type:
        env["PAM_TYPE"] = pam_type
    assert pam_change(env, b"whatever\0") is None


def test_missing_user_is_refused() -> None:
    """Without PAM_USER there is no account to change."""
    with pytest.raises(PamInputError, match="PAM_USER"):
        pam_change({"PAM_TYPE": "password"}, b"x\0")
