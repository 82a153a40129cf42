"""Fixtures that run the whole service in-process against a fresh, migrated database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pcns.app import RunningService, running_service
from tests.support import HTPASSWD, Client, ServiceFiles


@pytest.fixture
def files(tmp_path: Path, db_url: str) -> ServiceFiles:
    """Keyring, source secret, admin token and an htpasswd target under ``tmp_path``."""
    return ServiceFiles(tmp_path / "svc", db_url)


@pytest.fixture
async def service(files: ServiceFiles) -> AsyncIterator[RunningService]:
    """The service (receiver and workers) running on ``files``' settings."""
    async with running_service(files.settings()) as svc:
        yield svc


@pytest.fixture
async def client(files: ServiceFiles) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(files, session)


needs_htpasswd = pytest.mark.skipif(
    HTPASSWD is None, reason="Apache htpasswd (Debian apache2-utils) is not installed"
)
