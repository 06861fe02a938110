"""The processing pipeline end to end on a real store (SQLite and PostgreSQL).

Mail in (as the ``ingest`` command and the listeners hand it over) -> journal ->
extraction -> engine -> one transaction with state, outbox rows and outcomes.
"""

from __future__ import annotations

import email

import pytest

from gateway.services import queries
from gateway.services.runtime import GatewayServices
from gateway.store import journal
from tests.services.helpers import (
    ATTENDEE,
    ORGANIZER,
    OUTSIDER,
    REMOTE_ORGANIZER,
    ROOM,
    FrozenClock,
    drain,
    imip_mail,
    open_services,
    outbox_rows,
    payload_of,
    vevent,
)
from tests.support.locks import file_lock_free


def _outcomes(result: tuple[int, bool, list[dict[str, object]]]) -> list[str]:
    return [str(o["outcome"]) for o in result[2]]


def test_request_to_auto_accepting_user_stores_event_and_queues_accepted_reply(
    db_url: str,
) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(organizer=REMOTE_ORGANIZER),
            sender=REMOTE_ORGANIZER,
            to=ATTENDEE,
            message_id="<inv-1@client.test>",
        )
        journal_id, duplicate, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert not duplicate
        assert [o["outcome"] for o in outcomes] == ["applied"]
        assert outcomes[0]["uid"] == "evt-1@example.org"

        events = svc.store.read_sync(queries.event_detail, "evt-1@example.org", ATTENDEE)
        assert events[0]["role"] == "attendee"
        bob = next(a for a in events[0]["instances"][0]["attendees"] if a["address"] == ATTENDEE)
        assert bob["partstat"] == "ACCEPTED"

        rows = outbox_rows(svc)
        assert [(r["method"], r["recipient"]) for r in rows] == [("REPLY", REMOTE_ORGANIZER)]
        mail = email.message_from_bytes(payload_of(svc, rows[0]["id"]))
        assert mail["In-Reply-To"] == "<inv-1@client.test>"
        assert mail["Auto-Submitted"] == "auto-replied"
        cal = next(p for p in mail.walk() if p.get_content_type() == "text/calendar")
        body = cal.get_payload(decode=True).decode()
        assert "METHOD:REPLY" in body
        assert "PARTSTAT=ACCEPTED" in body

        detail = svc.store.read_sync(queries.message_detail, journal_id)
        assert detail is not None
        assert detail["status"] == "done"


def test_duplicate_delivery_is_recognised_and_not_applied_twice(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(organizer=REMOTE_ORGANIZER),
            sender=REMOTE_ORGANIZER,
            to=ATTENDEE,
            message_id="<dup@client.test>",
        )
        first = svc.ingest_now(raw, recipients=[ATTENDEE])
        second = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert second[1] is True
        assert second[0] == first[0]
        assert _outcomes(second) == ["applied"]  # the first delivery's recorded outcome
        assert len(outbox_rows(svc)) == 1


def test_mail_without_calendar_gets_explicit_ignored_outcome(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = (
            b"From: someone@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n"
            b"Message-ID: <plain@x>\r\n\r\nJust text.\r\n"
        )
        journal_id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["ignored-no-calendar"]
        detail = svc.store.read_sync(queries.message_detail, journal_id)
        assert detail is not None
        assert detail["status"] == "done"


def test_unparseable_calendar_is_quarantined_with_reason_and_kept(db_url: str) -> None:
    with open_services(db_url) as svc:
        broken = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:x\r\nEND:VCALENDAR\r\n"
        raw = imip_mail(broken, sender=ORGANIZER, to=ATTENDEE)
        journal_id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["quarantined-invalid"]
        assert "does not close" in str(outcomes[0]["reason"])
        detail = svc.store.read_sync(queries.message_detail, journal_id, with_raw=True)
        assert detail is not None
        assert detail["status"] == "quarantined"
        assert "BEGIN:VEVENT" in detail["raw"]  # the message is kept, never lost


def test_message_for_no_local_user_is_ignored_with_reason(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(attendees=((OUTSIDER, "NEEDS-ACTION"),)), sender=ORGANIZER, to=OUTSIDER
        )
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=[OUTSIDER])
        assert [o["outcome"] for o in outcomes] == ["ignored-not-local"]


def test_our_own_mail_coming_back_is_ignored_as_loop(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(), sender=ORGANIZER, to=ATTENDEE, extra_headers="X-IMIP-Gateway: gw.test\r\n"
        )
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["ignored-loop"]
        assert outbox_rows(svc) == []


def test_auto_replied_request_is_applied_but_never_answered_automatically(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(),
            sender=ORGANIZER,
            to=ATTENDEE,
            extra_headers="Auto-Submitted: auto-replied\r\n",
        )
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["applied"]
        assert outbox_rows(svc) == []  # RFC 3834: no automatic answer to an auto-reply


def test_request_from_someone_else_than_the_organizer_is_refused(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(vevent(), sender=OUTSIDER, to=ATTENDEE)
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["rejected-unauthorised"]
        assert svc.store.read_sync(queries.event_list, ATTENDEE) == []


def test_alias_recipient_is_processed_for_the_primary_address(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(vevent(), sender=ORGANIZER, to="b@example.net")
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=["B@Example.NET"])
        assert [(o["recipient"], o["outcome"]) for o in outcomes] == [(ATTENDEE, "applied")]


def test_room_declines_a_conflicting_booking_and_accepts_a_free_slot(db_url: str) -> None:
    with open_services(db_url) as svc:
        first = imip_mail(
            vevent(uid="r1@x", organizer=REMOTE_ORGANIZER, attendees=((ROOM, "NEEDS-ACTION"),)),
            sender=REMOTE_ORGANIZER,
            to=ROOM,
        )
        assert _outcomes(svc.ingest_now(first, recipients=[ROOM])) == ["applied"]
        clash = imip_mail(
            vevent(
                uid="r2@x",
                organizer=REMOTE_ORGANIZER,
                start="20260110T103000Z",
                end="20260110T113000Z",
                attendees=((ROOM, "NEEDS-ACTION"),),
            ),
            sender=REMOTE_ORGANIZER,
            to=ROOM,
        )
        assert _outcomes(svc.ingest_now(clash, recipients=[ROOM])) == ["applied"]
        replies = {r["uid"]: payload_of(svc, r["id"]).decode() for r in outbox_rows(svc)}
        assert "PARTSTAT=ACCEPTED" in replies["r1@x"]
        assert "PARTSTAT=DECLINED" in replies["r2@x"]


def test_organiser_send_then_replies_are_aggregated_and_stale_ones_discarded(
    db_url: str,
) -> None:
    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        ics = vevent(
            method="REQUEST",
            uid="org-1@example.org",
            attendees=((ATTENDEE, "NEEDS-ACTION"), (OUTSIDER, "NEEDS-ACTION")),
        ).encode()
        _jid, sent = svc.send(ics)
        assert [o["outcome"] for o in sent] == ["applied"]
        # The remote attendee's REQUEST leaves through the outbox; the local one's copy is
        # journaled for bob directly (it never travels out and back through the relay).
        requests = [r for r in outbox_rows(svc) if r["method"] == "REQUEST"]
        assert [str(r["recipient"]) for r in requests] == [OUTSIDER]
        local = [m for m in svc.store.read_sync(queries.message_list) if m["source"] == "local"]
        assert [m["envelope_to"] for m in local] == [[ATTENDEE]]

        def reply(partstat: str, dtstamp: str, mid: str) -> list[str]:
            cal = vevent(
                method="REPLY",
                uid="org-1@example.org",
                dtstamp=dtstamp,
                attendees=((OUTSIDER, partstat),),
            )
            raw = imip_mail(cal, sender=OUTSIDER, to=ORGANIZER, method="REPLY", message_id=mid)
            return _outcomes(svc.ingest_now(raw, recipients=[ORGANIZER]))

        assert reply("ACCEPTED", "20260105T100000Z", "<r1@x>") == ["applied"]
        # An older reply arriving late (RFC 5546 section 2.1.5) must not win.
        assert reply("DECLINED", "20260105T090000Z", "<r0@x>") == ["ignored-stale"]

        stored = svc.store.read_sync(queries.load_for_owner, "org-1@example.org", ORGANIZER)
        report = svc.aggregate(stored[0])
        series = report["series"]
        assert series["not_answered"] == [ATTENDEE]  # bob's copy is not processed yet
        # Processing the local deliveries: bob (policy accept) accepts, and his REPLY is
        # journaled for alice and aggregated - all without the relay.
        assert drain(svc) == 2
        stored = svc.store.read_sync(queries.load_for_owner, "org-1@example.org", ORGANIZER)
        series = svc.aggregate(stored[0])["series"]
        assert series["not_answered"] == []
        assert [r["method"] for r in outbox_rows(svc)] == ["REQUEST"]  # nothing else left


def test_reply_before_the_organiser_copy_exists_is_held_then_applied(db_url: str) -> None:
    with open_services(db_url) as svc:
        early = vevent(method="REPLY", uid="late@example.org", attendees=((OUTSIDER, "ACCEPTED"),))
        raw = imip_mail(early, sender=OUTSIDER, to=ORGANIZER, method="REPLY")
        assert _outcomes(svc.ingest_now(raw, recipients=[ORGANIZER])) == ["held-pending"]
        ics = vevent(uid="late@example.org", attendees=((OUTSIDER, "NEEDS-ACTION"),)).encode()
        _jid, outcomes = svc.send(ics)
        assert "applied" in [o["outcome"] for o in outcomes]
        events = svc.store.read_sync(queries.event_detail, "late@example.org", ORGANIZER)
        who = {a["address"]: a["partstat"] for a in events[0]["instances"][0]["attendees"]}
        assert who[OUTSIDER] == "ACCEPTED"
        assert events[0]["held"] == []


def test_delivery_report_for_a_sent_request_marks_the_attendee(db_url: str) -> None:
    with open_services(db_url) as svc:
        ics = vevent(uid="dsn@example.org", attendees=((OUTSIDER, "NEEDS-ACTION"),)).encode()
        svc.send(ics)
        sent = next(r for r in outbox_rows(svc) if r["method"] == "REQUEST")
        bounce = (
            "From: MAILER-DAEMON@example.org\r\n"
            f"To: {ORGANIZER}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <bounce-1@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n'
            "\r\n--r\r\nContent-Type: text/plain\r\n\r\nIt bounced.\r\n"
            "--r\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.example.org\r\n\r\n"
            f"Final-Recipient: rfc822; {OUTSIDER}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n"
            "--r\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Message-ID: {sent['message_id']}\r\nSubject: Invitation\r\n\r\n--r--\r\n"
        ).encode()
        _id, _dup, outcomes = svc.ingest_now(bounce, recipients=[ORGANIZER], sender="")
        assert [o["outcome"] for o in outcomes] == ["applied"]
        events = svc.store.read_sync(queries.event_detail, "dsn@example.org", ORGANIZER)
        att = next(a for a in events[0]["instances"][0]["attendees"] if a["address"] == OUTSIDER)
        assert att["schedule_status"] == "3.7"  # RFC 6638: invalid calendar user
        assert "5.1.1" in att["request_status"]


def test_crashed_processing_is_resumed_after_the_lease_and_applied_once(db_url: str) -> None:
    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        raw = imip_mail(vevent(organizer=REMOTE_ORGANIZER), sender=REMOTE_ORGANIZER, to=ATTENDEE)
        row, _dup = svc.store.run_sync(
            journal.record_inbound,
            raw,
            message_id="<crash@x>",
            source="smtp",
            envelope_from=ORGANIZER,
            envelope_to=[ATTENDEE],
            now=clock(),
        )
        # A worker claims the row and dies before processing it.
        assert svc.store.run_sync(svc.processor.claim, clock(), 10) == [row.id]
        assert svc.store.run_sync(svc.processor.claim, clock(), 10) == []  # still leased
        clock.advance(seconds=31)
        ids = svc.store.run_sync(svc.processor.claim, clock(), 10)
        assert ids == [row.id]
        results = svc.store.run_sync(svc.processor.process_row, row.id, clock())
        assert [r.outcome for r in results] == ["applied"]
        clock.advance(seconds=60)
        assert svc.store.run_sync(svc.processor.claim, clock(), 10) == []  # done: never again
        assert len(outbox_rows(svc)) == 1


def test_a_message_that_keeps_failing_is_quarantined_with_the_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.domain import engine

    def boom(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("engine exploded")

    with open_services(db_url) as svc:
        monkeypatch.setattr(engine, "process", boom)
        raw = imip_mail(vevent(), sender=ORGANIZER, to=ATTENDEE)
        jid, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        # The message is journaled (durable); the failure is reported, not raised.
        assert [o["outcome"] for o in outcomes] == ["processing-failed"]
        assert "engine exploded" in str(outcomes[0]["reason"])
        for _ in range(2):
            assert svc.store.run_sync(svc.processor.claim, svc.clock(), 10) == [jid]
            with pytest.raises(RuntimeError):
                svc.store.run_sync(svc.processor.process_row, jid, svc.clock())
            svc.store.run_sync(
                svc.processor.fail_row, jid, "RuntimeError: engine exploded", svc.clock()
            )
        detail = svc.store.read_sync(queries.message_detail, jid)
        assert detail is not None
        assert detail["status"] == "quarantined"
        assert "engine exploded" in str(detail["reason"])
        assert svc.store.run_sync(svc.processor.claim, svc.clock(), 10) == []


def test_an_absurdly_long_uid_is_rejected_with_a_reason_not_a_crash(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(vevent(uid="u" * 5000), sender=ORGANIZER, to=ATTENDEE)
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["rejected-invalid"]
        assert "5000 bytes" in str(outcomes[0]["reason"])


def test_relay_mode_records_the_organiser_copy_and_forwards_the_mail_unchanged(
    db_url: str,
) -> None:
    # Issue 3, organiser copies source 2: a local organiser's own REQUEST passing through
    # the gateway on its way out is recorded, then forwarded byte for byte.
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(uid="relay-1@example.org", attendees=((OUTSIDER, "NEEDS-ACTION"),)),
            sender=ORGANIZER,
            to=OUTSIDER,
            message_id="<relay-1@client.test>",
        )
        _id, _dup, outcomes = svc.ingest_now(
            raw, recipients=[OUTSIDER], sender=ORGANIZER, source="relay"
        )
        assert sorted(o["outcome"] for o in outcomes) == ["applied", "applied"]
        events = svc.store.read_sync(queries.event_detail, "relay-1@example.org", ORGANIZER)
        assert events[0]["role"] == "organizer"
        rows = outbox_rows(svc)
        assert [(r["method"], r["recipient"]) for r in rows] == [("FORWARD", OUTSIDER)]
        assert payload_of(svc, rows[0]["id"]) == raw  # unchanged
        # The attendee's answer is then aggregated on the recorded copy.
        reply = imip_mail(
            vevent(
                method="REPLY",
                uid="relay-1@example.org",
                dtstamp="20260105T100000Z",
                attendees=((OUTSIDER, "TENTATIVE"),),
            ),
            sender=OUTSIDER,
            to=ORGANIZER,
            method="REPLY",
        )
        assert _outcomes(svc.ingest_now(reply, recipients=[ORGANIZER])) == ["applied"]
        events = svc.store.read_sync(queries.event_detail, "relay-1@example.org", ORGANIZER)
        who = {a["address"]: a["partstat"] for a in events[0]["instances"][0]["attendees"]}
        assert who[OUTSIDER] == "TENTATIVE"


def test_relay_mode_from_a_non_local_sender_only_forwards(db_url: str) -> None:
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(uid="relay-2@x", organizer=OUTSIDER), sender=OUTSIDER, to="z@far.example"
        )
        _id, _dup, outcomes = svc.ingest_now(
            raw, recipients=["z@far.example"], sender=OUTSIDER, source="relay"
        )
        assert [o["outcome"] for o in outcomes] == ["applied"]
        assert "forwarded unchanged to 1" in str(outcomes[0]["reason"])
        assert svc.store.read_sync(queries.event_list) == []


def test_group_commit_isolates_a_failing_message_from_the_rest_of_its_batch(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.domain import engine

    real = engine.process

    def flaky(msg, stored, ctx):  # type: ignore[no-untyped-def]
        if msg.uid == "bad@x":
            raise RuntimeError("only this one breaks")
        return real(msg, stored, ctx)

    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        monkeypatch.setattr(engine, "process", flaky)
        ids = _journal(svc, clock, ["good-1@x", "bad@x", "good-2@x"], envelope_from=ORGANIZER)
        claimed = svc.store.run_sync(svc.processor.claim, clock(), 10)
        assert claimed == ids
        items = svc.store.run_sync(svc.processor.process_batch, claimed, clock())
        assert [(i.journal_id, bool(i.error), i.queued) for i in items] == [
            (ids[0], False, 1),
            (ids[1], True, 0),
            (ids[2], False, 1),
        ]
        statuses = {m["id"]: m["status"] for m in svc.store.read_sync(queries.message_list)}
        assert statuses == {ids[0]: "done", ids[1]: "pending", ids[2]: "done"}
        # The failed one left no half-applied state behind.
        uids = {e["uid"] for e in svc.store.read_sync(queries.event_list)}
        assert uids == {"good-1@x", "good-2@x"}
        assert sorted(r["uid"] for r in outbox_rows(svc)) == ["good-1@x", "good-2@x"]


def _journal(
    svc: GatewayServices,
    clock: FrozenClock,
    uids: list[str],
    *,
    envelope_from: str = REMOTE_ORGANIZER,
) -> list[int]:
    """Journal one invitation per UID as the SMTP intake does; returns the row ids."""
    ids = []
    for uid in uids:
        row, _dup = svc.store.run_sync(
            journal.record_inbound,
            imip_mail(
                vevent(uid=uid, organizer=REMOTE_ORGANIZER), sender=REMOTE_ORGANIZER, to=ATTENDEE
            ),
            message_id=f"<{uid}>",
            source="smtp",
            envelope_from=envelope_from,
            envelope_to=[ATTENDEE],
            now=clock(),
        )
        ids.append(row.id)
    return ids


def _journal_and_claim(
    svc: GatewayServices, clock: FrozenClock, prefix: str, count: int
) -> list[int]:
    """Journal ``count`` invitations (UIDs ``<prefix><n>@x``) and claim them for
    processing; returns the claimed journal ids."""
    _journal(svc, clock, [f"{prefix}{n}@x" for n in range(count)])
    return list(svc.store.run_sync(svc.processor.claim, clock(), 10))


def test_group_commit_is_bounded_by_time_and_leaves_the_rest_claimed(db_url: str) -> None:
    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        ids = _journal_and_claim(svc, clock, "t", 3)
        # A zero budget still makes progress: one message per group.
        first = svc.store.run_sync(svc.processor.process_batch, ids, clock(), 0.0)
        assert [i.journal_id for i in first] == ids[:1]
        rest = svc.store.run_sync(svc.processor.process_batch, ids[1:], clock(), None)
        assert [i.journal_id for i in rest] == ids[1:]
        assert {m["status"] for m in svc.store.read_sync(queries.message_list)} == {"done"}


def test_group_commit_ends_early_when_another_writer_waits_for_the_sqlite_lock(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 5: with a long budget the group would hold the write lock for every row;
    a writer queued behind it (the SMTP intake journaling a message before its 250)
    makes it commit after the row in hand, and the writer gets in next."""
    import threading
    import time

    from sqlalchemy import text

    from gateway.domain import engine
    from gateway.store import Store

    clock = FrozenClock()
    real = engine.process
    order: list[str] = []
    database = sqlite_url.split("///", 1)[1]

    def waiter_announced() -> bool:
        return not file_lock_free(f"{database}.write-wait")

    threads: list[threading.Thread] = []

    def journal_elsewhere(s: object) -> None:
        s.execute(text("SELECT 1"))  # type: ignore[attr-defined]
        order.append("other writer")

    def first_starts_a_writer(msg, stored, ctx):  # type: ignore[no-untyped-def]
        order.append(msg.uid)
        if not threads:
            thread = threading.Thread(target=other.run_sync, args=(journal_elsewhere,))
            threads.append(thread)
            thread.start()
            deadline = time.monotonic() + 10
            while not waiter_announced() and time.monotonic() < deadline:
                time.sleep(0.002)
        return real(msg, stored, ctx)

    with open_services(sqlite_url, clock) as svc:
        other = Store(sqlite_url)  # a second writer on the file, like the intake process
        try:
            monkeypatch.setattr(engine, "process", first_starts_a_writer)
            ids = _journal_and_claim(svc, clock, "w", 3)
            first = svc.store.run_sync(svc.processor.process_batch, ids, clock(), 60.0)
            assert [i.journal_id for i in first] == ids[:1]
            threads[0].join(10)
            rest = svc.store.run_sync(svc.processor.process_batch, ids[1:], clock(), 60.0)
            assert [i.journal_id for i in rest] == ids[1:]
        finally:
            other.close()
    assert order == ["w0@x", "other writer", "w1@x", "w2@x"]


def test_mail_from_another_gateway_installation_is_processed_not_a_loop(db_url: str) -> None:
    # Two organisations both running imip-gateway: the partner's marker is not ours.
    with open_services(db_url) as svc:
        raw = imip_mail(
            vevent(organizer=REMOTE_ORGANIZER),
            sender=REMOTE_ORGANIZER,
            to=ATTENDEE,
            extra_headers="X-IMIP-Gateway: gw.partner.example\r\n",
        )
        _id, _dup, outcomes = svc.ingest_now(raw, recipients=[ATTENDEE])
        assert [o["outcome"] for o in outcomes] == ["applied"]
        reply = payload_of(svc, outbox_rows(svc)[0]["id"])
        assert b"X-IMIP-Gateway: gw.test" in reply  # ours is stamped on what we send


# --- preparation outside the write transaction (issue 5) ---------------------------------


class _Counting:
    """Counts calls of a module function it replaces, and whether SQLite's write lock
    file was held at each call."""

    def __init__(self, real, lock_file: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.lock_file = lock_file
        self.calls = 0
        self.under_lock = 0

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.lock_file is not None and not file_lock_free(self.lock_file):
            self.under_lock += 1
        return self.real(*args, **kwargs)


def test_a_prepared_group_is_neither_extracted_nor_parsed_again_inside_its_transaction(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.domain import validate as validate_module
    from gateway.services import processor as processor_module

    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        ids = _journal_and_claim(svc, clock, "p", 3)
        claimed = svc.store.read_sync(svc.processor.claimed_messages, ids)
        assert sorted(claimed) == ids
        prepared = svc.processor.prepare(claimed)
        assert sorted(prepared) == ids
        extract = _Counting(processor_module.extract)
        parse = _Counting(processor_module.parse_itip)
        check = _Counting(validate_module.validate)
        monkeypatch.setattr(processor_module, "extract", extract)
        monkeypatch.setattr(processor_module, "parse_itip", parse)
        monkeypatch.setattr(validate_module, "validate", check)
        items = svc.store.run_sync(svc.processor.process_batch, ids, clock(), None, prepared)
        assert (extract.calls, parse.calls, check.calls) == (0, 0, 0)
        assert prepared == {}  # consumed
        assert [(i.journal_id, i.error, i.queued) for i in items] == [(j, "", 1) for j in ids]
        assert [r.outcome for i in items for r in i.results] == ["applied"] * 3
        assert sorted(r["uid"] for r in outbox_rows(svc)) == ["p0@x", "p1@x", "p2@x"]


def test_a_prepared_entry_is_used_once_so_a_failed_row_is_parsed_afresh_next_time(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.domain import engine
    from gateway.services import processor as processor_module

    real = engine.process
    failures = []

    def fails_once(msg, stored, ctx):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(msg.uid)
            raise RuntimeError("first attempt breaks")
        return real(msg, stored, ctx)

    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        ids = _journal_and_claim(svc, clock, "f", 1)
        prepared = svc.store.read_sync(svc.processor.prepare_claimed, ids)
        monkeypatch.setattr(engine, "process", fails_once)
        parse = _Counting(processor_module.parse_itip)
        monkeypatch.setattr(processor_module, "parse_itip", parse)
        first = svc.store.run_sync(svc.processor.process_batch, ids, clock(), None, prepared)
        assert first[0].error == "RuntimeError: first attempt breaks"
        assert (prepared, parse.calls) == ({}, 0)
        # The retry must not reuse objects the failed attempt may have changed.
        again = svc.store.run_sync(svc.processor.claim, clock(), 10)
        assert again == ids
        second = svc.store.run_sync(svc.processor.process_batch, again, clock(), None, prepared)
        assert parse.calls == 1
        assert [r.outcome for r in second[0].results] == ["applied"]


def test_a_prepared_entry_for_other_bytes_is_ignored(db_url: str) -> None:
    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        ids = _journal_and_claim(svc, clock, "b", 2)
        prepared = svc.store.read_sync(svc.processor.prepare_claimed, ids)
        # Row 0 is handed row 1's preparation: processing must go by the row's own bytes.
        swapped = {ids[0]: prepared[ids[1]], ids[1]: prepared[ids[0]]}
        items = svc.store.run_sync(svc.processor.process_batch, ids, clock(), None, swapped)
        assert [(i.journal_id, i.results[0].uid) for i in items] == [
            (ids[0], "b0@x"),
            (ids[1], "b1@x"),
        ]


def test_claimed_messages_reads_only_rows_still_leased_for_processing(db_url: str) -> None:
    clock = FrozenClock()
    with open_services(db_url, clock) as svc:
        ids = _journal_and_claim(svc, clock, "c", 2)
        svc.store.run_sync(svc.processor.process_batch, ids[:1], clock())
        claimed = svc.store.read_sync(svc.processor.claimed_messages, ids)
        assert list(claimed) == ids[1:]
        source, raw = claimed[ids[1]]
        assert source == "smtp"
        assert b"UID:c1@x" in raw


def test_the_worker_extracts_and_parses_while_the_sqlite_write_lock_is_free(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 5: the SMTP intake waits for the write lock to journal a message, so the
    processing worker does the lock-free half of its work before it takes the lock."""
    import asyncio

    from gateway.services import processor as processor_module
    from gateway.workers.processing import ProcessingWorker

    lock_file = f"{sqlite_url.split('///', 1)[1]}.write-lock"
    clock = FrozenClock()
    with open_services(sqlite_url, clock) as svc:
        _journal(svc, clock, [f"l{n}@x" for n in range(4)])
        extract = _Counting(processor_module.extract, lock_file)
        parse = _Counting(processor_module.parse_itip, lock_file)
        monkeypatch.setattr(processor_module, "extract", extract)
        monkeypatch.setattr(processor_module, "parse_itip", parse)
        worker = ProcessingWorker(svc.store, svc.processor, svc.clock, batch=16)
        assert asyncio.run(worker.drain_once()) == 4
        assert (extract.calls, parse.calls) == (4, 4)
        assert (extract.under_lock, parse.under_lock) == (0, 0)
        assert sorted(r["uid"] for r in outbox_rows(svc)) == ["l0@x", "l1@x", "l2@x", "l3@x"]
