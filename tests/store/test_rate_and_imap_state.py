"""Automatic-reply rate limits (RFC 3834) and IMAP poller positions."""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.store import Store, imap_state, rate

UINT32_MAX = 4_294_967_295  # UIDVALIDITY and UIDs are unsigned 32-bit


def test_rate_limit_allows_up_to_limit_per_window(store: Store, now: datetime) -> None:
    allowed = [store.run_sync(rate.hit, "Bob@X", now, 3600, 3) for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    # Another correspondent has its own budget; the address is compared normalised.
    assert store.run_sync(rate.hit, "carol@x", now, 3600, 3) is True
    assert store.run_sync(rate.hit, "MAILTO:bob@x", now + timedelta(minutes=59), 3600, 3) is False


def test_rate_limit_window_resets(store: Store, now: datetime) -> None:
    for _ in range(2):
        store.run_sync(rate.hit, "bob@x", now, 60, 2)
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(seconds=59), 60, 2) is False
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(seconds=60), 60, 2) is True
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(seconds=61), 60, 2) is True
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(seconds=62), 60, 2) is False


def test_imap_state_is_absent_until_set_then_updated(store: Store, now: datetime) -> None:
    assert store.read_sync(imap_state.get, "acct", "INBOX") is None
    store.run_sync(imap_state.set, "acct", "INBOX", uidvalidity=UINT32_MAX, last_uid=7, now=now)
    later = now + timedelta(minutes=1)
    store.run_sync(
        imap_state.set, "acct", "INBOX", uidvalidity=UINT32_MAX, last_uid=UINT32_MAX, now=later
    )
    state = store.read_sync(imap_state.get, "acct", "INBOX")
    assert state == imap_state.ImapState(
        uidvalidity=UINT32_MAX, last_uid=UINT32_MAX, updated_at=later
    )
    assert store.read_sync(imap_state.get, "acct", "Archive") is None


def test_rate_limit_of_zero_refuses_every_reply(store: Store, now: datetime) -> None:
    assert store.run_sync(rate.hit, "bob@x", now, 3600, 0) is False
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(hours=2), 3600, 0) is False
    # The correspondent's window is still counted from its first hit once a limit applies.
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(hours=2), 3600, 1) is True
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(hours=2), 3600, 1) is False


def test_refused_hits_do_not_move_the_window(store: Store, now: datetime) -> None:
    assert store.run_sync(rate.hit, "bob@x", now, 60, 1) is True
    for seconds in (10, 30, 59):
        assert store.run_sync(rate.hit, "bob@x", now + timedelta(seconds=seconds), 60, 1) is False
    # The window started at the first hit, not at a refused one.
    assert store.run_sync(rate.hit, "bob@x", now + timedelta(seconds=60), 60, 1) is True
