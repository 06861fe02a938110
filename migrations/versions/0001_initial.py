"""Initial schema: scheduling objects, instances, attendees, journal, outbox, held items,
busy periods, IMAP state and reply rate limits.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Written by hand: migrations never import gateway.store.models (see migrations/env.py).
Types mirror gateway.store.types: timestamps are naive-UTC DATETIME/TIMESTAMP, surrogate
keys are BIGINT on PostgreSQL and INTEGER (the rowid alias) on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)


def _ref(name: str, *, nullable: bool) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=nullable)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], ondelete=ondelete, name=f"fk_{table}_{column}_{target}"
    )


def _ts(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "scheduling_objects",
        _id(),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("component", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("organizer", sa.Text(), nullable=True),
        sa.Column("organizer_sent_by", sa.Text(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        _ts("dtstamp", nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("is_recurring", sa.Boolean(), nullable=False),
        sa.Column("calendar_props", sa.Text(), nullable=False),
        sa.Column("timezones", sa.Text(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scheduling_objects"),
        sa.UniqueConstraint("owner", "uid", name="uq_scheduling_objects_owner_uid"),
        sa.CheckConstraint("role IN ('organizer', 'attendee')", name="ck_scheduling_objects_role"),
    )
    op.create_index("ix_scheduling_objects_uid", "scheduling_objects", ["uid"])

    op.create_table(
        "instances",
        _id(),
        _ref("object_id", nullable=False),
        sa.Column("instance_key", sa.Text(), nullable=False),
        sa.Column("recurrence_id_text", sa.Text(), nullable=True),
        sa.Column("this_and_future", sa.Boolean(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        _ts("dtstamp", nullable=True),
        _ts("start_utc", nullable=True),
        _ts("end_utc", nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("transp", sa.String(16), nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("component_text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
        _fk("instances", "object_id", "scheduling_objects", "CASCADE"),
        sa.UniqueConstraint(
            "object_id", "instance_key", name="uq_instances_object_id_instance_key"
        ),
    )

    op.create_table(
        "attendees",
        _id(),
        _ref("object_id", nullable=False),
        sa.Column("instance_key", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("partstat", sa.String(32), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("rsvp", sa.Boolean(), nullable=False),
        sa.Column("cutype", sa.String(32), nullable=False),
        sa.Column("delegated_to", sa.Text(), nullable=False),
        sa.Column("delegated_from", sa.Text(), nullable=False),
        sa.Column("sent_by", sa.Text(), nullable=True),
        sa.Column("member", sa.Text(), nullable=True),
        sa.Column("request_status", sa.Text(), nullable=True),
        sa.Column("schedule_status", sa.Text(), nullable=True),
        sa.Column("property_text", sa.Text(), nullable=False),
        sa.Column("reply_sequence", sa.BigInteger(), nullable=True),
        _ts("reply_dtstamp", nullable=True),
        _ts("replied_at", nullable=True),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_attendees"),
        _fk("attendees", "object_id", "scheduling_objects", "CASCADE"),
        sa.UniqueConstraint(
            "object_id",
            "instance_key",
            "address",
            name="uq_attendees_object_id_instance_key_address",
        ),
    )

    op.create_table(
        "journal",
        _id(),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("envelope_from", sa.Text(), nullable=True),
        sa.Column("envelope_to", sa.JSON(), nullable=False),
        sa.Column("recipients_key", sa.String(64), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        _ts("received_at", nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("processed_at", nullable=True),
        _ts("lease_until", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_journal"),
        sa.UniqueConstraint(
            "sha256",
            "message_id",
            "recipients_key",
            name="uq_journal_sha256_message_id_recipients_key",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'done', 'quarantined')", name="ck_journal_status"
        ),
    )
    op.create_index("ix_journal_message_id", "journal", ["message_id"])
    op.create_index("ix_journal_status_received_at", "journal", ["status", "received_at"])

    op.create_table(
        "journal_outcomes",
        _id(),
        _ref("journal_id", nullable=False),
        sa.Column("part_index", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("method", sa.String(32), nullable=True),
        sa.Column("component", sa.String(16), nullable=True),
        sa.Column("uid", sa.Text(), nullable=True),
        sa.Column("recurrence_id", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_journal_outcomes"),
        _fk("journal_outcomes", "journal_id", "journal", "CASCADE"),
    )
    op.create_index("ix_journal_outcomes_journal_id", "journal_outcomes", ["journal_id"])
    op.create_index("ix_journal_outcomes_uid", "journal_outcomes", ["uid"])

    op.create_table(
        "outbox",
        _id(),
        _ref("journal_id", nullable=True),
        _ref("object_id", nullable=True),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("instance_key", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at", nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        _ts("lease_until", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("sent_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        _fk("outbox", "object_id", "scheduling_objects", "SET NULL"),
        _fk("outbox", "journal_id", "journal", "SET NULL"),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed')", name="ck_outbox_status"
        ),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_journal_id", "outbox", ["journal_id"])
    op.create_index("ix_outbox_object_id", "outbox", ["object_id"])
    op.create_index("ix_outbox_message_id", "outbox", ["message_id"])

    op.create_table(
        "held_items",
        _id(),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("instance_key", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        _ref("journal_id", nullable=True),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        _ts("dtstamp", nullable=True),
        _ts("created_at", nullable=False),
        _ts("resolved_at", nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_held_items"),
        _fk("held_items", "journal_id", "journal", "SET NULL"),
    )
    op.create_index("ix_held_items_owner_uid", "held_items", ["owner", "uid"])
    op.create_index("ix_held_items_journal_id", "held_items", ["journal_id"])

    op.create_table(
        "busy_periods",
        _id(),
        _ref("object_id", nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        _ts("start_utc", nullable=False),
        _ts("end_utc", nullable=False),
        sa.Column("fbtype", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_busy_periods"),
        _fk("busy_periods", "object_id", "scheduling_objects", "CASCADE"),
    )
    op.create_index(
        "ix_busy_periods_owner_start_utc_end_utc", "busy_periods", ["owner", "start_utc", "end_utc"]
    )
    op.create_index("ix_busy_periods_object_id", "busy_periods", ["object_id"])

    op.create_table(
        "imap_state",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("mailbox", sa.Text(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("account", "mailbox", name="pk_imap_state"),
    )

    op.create_table(
        "reply_rate",
        sa.Column("correspondent", sa.Text(), nullable=False),
        _ts("window_start", nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("correspondent", name="pk_reply_rate"),
    )


def downgrade() -> None:
    # Children before parents, so foreign keys never dangle.
    op.drop_table("reply_rate")
    op.drop_table("imap_state")
    op.drop_table("busy_periods")
    op.drop_table("held_items")
    op.drop_table("outbox")
    op.drop_table("journal_outcomes")
    op.drop_table("journal")
    op.drop_table("attendees")
    op.drop_table("instances")
    op.drop_table("scheduling_objects")
