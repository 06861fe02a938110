"""ORM models of the calendar store (SQLAlchemy 2 typed declarative mapping).

Tables and why each exists
--------------------------

``scheduling_objects``
    One row per (calendar owner, UID): the owner's copy of a scheduling object (RFC 5546
    section 1.4).  Holds what decisions are made on before looking at any detail: which
    role the owner plays, who the ORGANIZER is (an update from anyone else is refused or
    held, section 6.1.3), the master SEQUENCE and DTSTAMP (sections 2.1.4/2.1.5), and the
    VCALENDAR-level lines and VTIMEZONEs needed to re-render the object.  ``version`` is
    bumped by the ORM on every change so a lost update is detected instead of silent.

``instances``
    The master component (``instance_key = ""``) and each overridden occurrence keyed by
    its RECURRENCE-ID normalised to UTC (or a floating/date form).  Each keeps its own
    SEQUENCE and DTSTAMP because clients (Google) version exceptions independently, and
    stores its component text *without* ATTENDEE lines, so a REPLY never re-serialises an
    event.  ``start_utc``/``end_utc`` serve listings.

``attendees``
    One row per (object, instance_key, normalised address) with PARTSTAT, ROLE, RSVP,
    CUTYPE, DELEGATED-TO/FROM, SENT-BY, MEMBER, REQUEST-STATUS, SCHEDULE-STATUS, the full
    ATTENDEE line for re-rendering, and the SEQUENCE + DTSTAMP of that attendee's last
    accepted REPLY, so late or reordered replies are discarded (section 2.1.5).  A REPLY to a
    1000-attendee event reads and writes exactly one of these rows.

``journal``
    Every inbound message, raw bytes included, committed *before* the transport
    acknowledges it (250 / ``\\Seen``): nothing accepted is ever lost, unfinished rows are
    re-processed after a crash (``status``/``lease_until``), and SHA-256 + Message-ID detect
    an MTA retrying a message whose 250 was lost.

``journal_outcomes``
    One row per calendar part per recipient: the recorded result (applied, ignored-stale,
    duplicate, rejected-unauthorised, held-pending, quarantined-invalid, ...) and a
    human-readable reason, so every message ends with an explanation an operator can read.

``outbox``
    Outgoing iTIP mail (REPLY, REQUEST, CANCEL, REFRESH answers ...), the complete RFC 5322
    message, written in the same transaction as the change that caused it.  Status,
    attempts, next attempt and a lease let a worker on any replica send it, retry with
    backoff, and pick up the rows of a worker that crashed.

``held_items``
    Messages that cannot be applied yet or need a human: a CANCEL or REPLY arriving before
    its REQUEST (RFC 5546 section 5.2), replies from unknown delegates or party crashers,
    COUNTER proposals waiting for the organiser, organiser changes (section 6.1.3).

``busy_periods``
    Busy time precomputed from the owner's events (expanded, bounded), so VFREEBUSY
    requests and "accept if free" resource policies are one indexed range query.

``imap_state``
    UIDVALIDITY and the last processed UID per (account, mailbox), so the IMAP poller
    resumes where it stopped and notices a mailbox that was recreated (RFC 3501 2.3.1.1).

``reply_rate``
    A fixed-window counter per correspondent limiting automatic replies, so two automated
    systems can never mail each other in a loop (RFC 3834 section 2).

Conventions: addresses are stored normalised (:func:`gateway.domain.addresses.normalise`);
``instance_key`` is ``""`` for the series; every timestamp is aware UTC in Python and naive
UTC in the database (:class:`gateway.store.types.UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.store.types import IdType, UTCDateTime

__all__ = [
    "AttendeeRow",
    "Base",
    "BusyRow",
    "HeldRow",
    "ImapStateRow",
    "InstanceRow",
    "JournalOutcomeRow",
    "JournalRow",
    "ObjectRow",
    "OutboxRow",
    "ReplyRateRow",
]

#: Deterministic constraint names, so the hand-written migrations can name them too.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class ObjectRow(Base):
    """The owner's copy of one scheduling object (see the module docstring)."""

    __tablename__ = "scheduling_objects"
    __table_args__ = (
        UniqueConstraint("owner", "uid"),
        # Finding every local copy of one UID (operators, several local attendees).
        Index("ix_scheduling_objects_uid", "uid"),
        CheckConstraint("role IN ('organizer', 'attendee')", name="role"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    uid: Mapped[str] = mapped_column(Text)
    component: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    organizer: Mapped[str | None] = mapped_column(Text)
    organizer_sent_by: Mapped[str | None] = mapped_column(Text)
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    dtstamp: Mapped[datetime | None]
    status: Mapped[str | None] = mapped_column(String(32))
    summary: Mapped[str | None] = mapped_column(Text)
    is_recurring: Mapped[bool] = mapped_column(Boolean, default=False)
    calendar_props: Mapped[str] = mapped_column(Text, default="")
    timezones: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer)

    # The ORM adds "AND version = :old" to every UPDATE and bumps it: two writers that
    # both read version N cannot both commit a change (StaleDataError for the loser).
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - typed by DeclarativeBase


class InstanceRow(Base):
    """The master (``instance_key == ""``) or one overridden occurrence."""

    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("object_id", "instance_key"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    object_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("scheduling_objects.id", ondelete="CASCADE")
    )
    instance_key: Mapped[str] = mapped_column(Text)
    recurrence_id_text: Mapped[str | None] = mapped_column(Text)
    this_and_future: Mapped[bool] = mapped_column(Boolean, default=False)
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    dtstamp: Mapped[datetime | None]
    start_utc: Mapped[datetime | None]
    end_utc: Mapped[datetime | None]
    status: Mapped[str | None] = mapped_column(String(32))
    transp: Mapped[str | None] = mapped_column(String(16))
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    component_text: Mapped[str] = mapped_column(Text, default="")


class AttendeeRow(Base):
    """One attendee of one instance (or of the series, ``instance_key == ""``)."""

    __tablename__ = "attendees"
    __table_args__ = (UniqueConstraint("object_id", "instance_key", "address"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    object_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("scheduling_objects.id", ondelete="CASCADE")
    )
    instance_key: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)
    partstat: Mapped[str] = mapped_column(String(32), default="NEEDS-ACTION")
    role: Mapped[str] = mapped_column(String(32), default="REQ-PARTICIPANT")
    rsvp: Mapped[bool] = mapped_column(Boolean, default=False)
    cutype: Mapped[str] = mapped_column(String(32), default="INDIVIDUAL")
    delegated_to: Mapped[str] = mapped_column(Text, default="")
    delegated_from: Mapped[str] = mapped_column(Text, default="")
    sent_by: Mapped[str | None] = mapped_column(Text)
    member: Mapped[str | None] = mapped_column(Text)
    request_status: Mapped[str | None] = mapped_column(Text)
    schedule_status: Mapped[str | None] = mapped_column(Text)
    property_text: Mapped[str] = mapped_column(Text, default="")
    reply_sequence: Mapped[int | None] = mapped_column(BigInteger)
    reply_dtstamp: Mapped[datetime | None]
    replied_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class JournalRow(Base):
    """One inbound message, as received."""

    __tablename__ = "journal"
    __table_args__ = (
        # Duplicate detection (an MTA retry after a lost 250): the constraint makes two
        # replicas receiving the same retry at once store it only once; its leading
        # column serves lookups by hash.  The recipients are part of the key because the
        # same bytes legitimately arrive once per recipient (LMTP with one recipient per
        # transaction, the same invitation in two IMAP mailboxes).
        UniqueConstraint("sha256", "message_id", "recipients_key"),
        Index("ix_journal_message_id", "message_id"),
        Index("ix_journal_status_received_at", "status", "received_at"),
        CheckConstraint(
            "status IN ('pending', 'processing', 'done', 'quarantined')", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    message_id: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    envelope_from: Mapped[str | None] = mapped_column(Text)
    envelope_to: Mapped[list[str]] = mapped_column(JSON)
    # SHA-256 of the sorted envelope recipients this row carries (see __table_args__).
    recipients_key: Mapped[str] = mapped_column(String(64), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    outcome: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]


class JournalOutcomeRow(Base):
    """The outcome of one calendar part of a journaled message for one recipient."""

    __tablename__ = "journal_outcomes"
    __table_args__ = (
        Index("ix_journal_outcomes_journal_id", "journal_id"),
        Index("ix_journal_outcomes_uid", "uid"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    journal_id: Mapped[int] = mapped_column(IdType, ForeignKey("journal.id", ondelete="CASCADE"))
    part_index: Mapped[int] = mapped_column(Integer)
    recipient: Mapped[str] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(String(32))
    component: Mapped[str | None] = mapped_column(String(16))
    uid: Mapped[str | None] = mapped_column(Text)
    recurrence_id: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class OutboxRow(Base):
    """One outgoing message and its delivery bookkeeping."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_journal_id", "journal_id"),
        Index("ix_outbox_object_id", "object_id"),
        # Delivery status notifications name the Message-ID we sent (RFC 3464).
        Index("ix_outbox_message_id", "message_id"),
        CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    journal_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("journal.id", ondelete="SET NULL")
    )
    object_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("scheduling_objects.id", ondelete="SET NULL")
    )
    owner: Mapped[str] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(Text)
    recipient: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(32))
    uid: Mapped[str] = mapped_column(Text)
    instance_key: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    message_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class HeldRow(Base):
    """An iTIP message set aside until its REQUEST arrives or a human decides."""

    __tablename__ = "held_items"
    __table_args__ = (
        Index("ix_held_items_owner_uid", "owner", "uid"),
        Index("ix_held_items_journal_id", "journal_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    uid: Mapped[str] = mapped_column(Text)
    instance_key: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(32))
    journal_id: Mapped[int | None] = mapped_column(
        IdType, ForeignKey("journal.id", ondelete="SET NULL")
    )
    sender: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    dtstamp: Mapped[datetime | None]
    created_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    resolution: Mapped[str | None] = mapped_column(Text)


class BusyRow(Base):
    """One busy interval of one object, in UTC."""

    __tablename__ = "busy_periods"
    __table_args__ = (
        Index("ix_busy_periods_owner_start_utc_end_utc", "owner", "start_utc", "end_utc"),
        Index("ix_busy_periods_object_id", "object_id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    object_id: Mapped[int] = mapped_column(
        IdType, ForeignKey("scheduling_objects.id", ondelete="CASCADE")
    )
    owner: Mapped[str] = mapped_column(Text)
    start_utc: Mapped[datetime]
    end_utc: Mapped[datetime]
    fbtype: Mapped[str] = mapped_column(String(32), default="BUSY")


class ImapStateRow(Base):
    """Where the IMAP poller stopped in one mailbox."""

    __tablename__ = "imap_state"

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    mailbox: Mapped[str] = mapped_column(Text, primary_key=True)
    # UIDVALIDITY and UIDs are unsigned 32-bit (RFC 3501 section 2.3.1.1): BIGINT.
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class ReplyRateRow(Base):
    """Automatic replies sent to one correspondent in the current window."""

    __tablename__ = "reply_rate"

    correspondent: Mapped[str] = mapped_column(Text, primary_key=True)
    window_start: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer)
