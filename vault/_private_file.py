"""Reading the vault's private files (KEK keyring, transit token, AppRole secret id).

The same rules as the service's own secret files: only the owner may have any access (chmod 600),
the file must hold text, and every refusal is a :class:`~vault.errors.KekError` naming the
provider and the file but never its content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vault.errors import KekError


def read_private_file(path: Path, *, label: str, missing_hint: str = "") -> str:
    """The stripped text of ``path``, refused unless group and others have no access.

    ``label`` starts every message (``"transit KEK: token file"``); ``missing_hint`` is added
    when the file does not exist. The mode is checked on the opened file itself, so a file
    swapped between the check and the read cannot slip through.
    """
    where = f"{label} {path}"
    try:
        fd = os.open(path, os.O_RDONLY)  # not inherited by children (PEP 446)
    except FileNotFoundError:
        raise KekError(f"{where} does not exist{missing_hint}") from None
    except OSError as exc:
        raise KekError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KekError(
                f"{where} has mode {stat.S_IMODE(mode):04o}; "
                "group and others must have no access (chmod 600)"
            )
        with open(fd, "rb", closefd=False) as fh:
            raw = fh.read()
    except OSError as exc:
        raise KekError(f"{where} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KekError(f"{where} is not UTF-8 text") from None
    if not text:
        raise KekError(f"{where} is empty")
    return text
