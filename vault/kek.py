"""Key-encryption keys (KEKs): what wraps the data keys stored in the database.

A provider wraps and unwraps 256-bit data keys; the KEK itself never leaves it (a local file
read only by the service, or a Vault/OpenBao transit key that never leaves the server). Every
wrapped key is bound to its data-key id, so a wrapped key copied to another id fails to unwrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key as stored: which KEK wrapped it (``kek_ref``) and the wrapped bytes."""

    kek_ref: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(kek_ref={self.kek_ref!r}, {len(self.blob)} bytes)"


class KekProvider(Protocol):
    """Wraps data keys under the current KEK and unwraps them under any KEK it still holds."""

    @property
    def name(self) -> str:
        """``file`` or ``transit``: named in every error so operators know where to look."""
        ...

    async def wrap(self, dek_id: str, key: bytes) -> WrappedKey: ...

    async def unwrap(self, dek_id: str, wrapped: WrappedKey) -> bytes: ...

    async def rewrap(self, dek_id: str, wrapped: WrappedKey) -> WrappedKey:
        """The same data key, wrapped under the current KEK (version)."""
        ...

    async def is_current(self, wrapped: WrappedKey) -> bool:
        """Whether ``wrapped`` is already under the current KEK (version)."""
        ...

    async def close(self) -> None: ...


def wrap_context(dek_id: str) -> bytes:
    """What binds a wrapped key to its id: associated data, or a prefix of the plaintext."""
    raw = dek_id.encode("utf-8")
    return b"pcns-dek-v1\x00" + len(raw).to_bytes(2, "big") + raw
