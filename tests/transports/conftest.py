"""Fixtures for the transport tests: a real Dovecot IMAP server and a migrated store.

``dovecot`` (and ``dovecot_tls``) start a throwaway Dovecot per test
(tests/support/dovecot.py).  Without ``dovecot-imapd`` installed the test is skipped on a
developer machine but FAILS in CI (``CI=true``), so CI can never go green without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gateway.store import Store, migrate
from tests.support.dovecot import DovecotServer, DovecotUnavailable, running_dovecot

IMAP_USER = "alice"
IMAP_PASSWORD = "secret-alice"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# A Dovecot that advertises neither IDLE nor MOVE (but UIDPLUS), like many older servers.
PLAIN_CAPABILITIES = "IMAP4rev1 SASL-IR LITERAL+ UIDPLUS NAMESPACE ENABLE"


def _dovecot(tls: bool, imap_capability: str | None = None) -> Iterator[DovecotServer]:
    try:
        server_cm = running_dovecot(
            {IMAP_USER: IMAP_PASSWORD}, tls=tls, imap_capability=imap_capability
        )
        server = server_cm.__enter__()
    except DovecotUnavailable as exc:
        if _in_ci():
            pytest.fail(f"Dovecot is required in CI (CI=true): {exc}", pytrace=False)
        pytest.skip(f"dovecot-imapd is not installed: apt-get install dovecot-imapd ({exc})")
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    """A fresh Dovecot (plain IMAP on 127.0.0.1) with the user ``alice``."""
    yield from _dovecot(tls=False)


@pytest.fixture
def dovecot_tls() -> Iterator[DovecotServer]:
    """Like ``dovecot``, with a self-signed certificate: implicit TLS and STARTTLS."""
    yield from _dovecot(tls=True)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    """A Store on a migrated SQLite file."""
    migrate.upgrade(sqlite_url)
    s = Store(sqlite_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def dovecot_basic() -> Iterator[DovecotServer]:
    """Like ``dovecot``, advertising neither IDLE (RFC 2177) nor MOVE (RFC 6851)."""
    yield from _dovecot(tls=False, imap_capability=PLAIN_CAPABILITIES)
