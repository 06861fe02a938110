"""Put the local organiser's events into the store before the REPLY phases.

Two ways, both documented in the README section "Benchmarks":

* :func:`submit_events`: each event goes through the gateway's own organiser
  submission (the code behind ``imip-gateway send FILE.ics``), in-process for speed.
  That also composes the REQUEST mail to every attendee and queues it; the benchmark
  then marks those outbox rows ``sent`` (:func:`mark_outbox_sent`), because the
  invitations are history for the REPLY phase and must not reach the sink.
* :func:`bulk_clone`: for 10k..1M stored events, copies one submitted template event
  (object, instances, attendees, busy periods) under new UIDs with multi-row INSERTs
  straight into the tables (SQLAlchemy Core on the gateway's models).  That takes
  seconds per 100k events instead of hours, and the rows are exactly what the
  gateway itself wrote for the template.

The daemon must not be running while this writes (its outbox worker would send the
queued invitations).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from bench.messages import ORGANISER, EventSpec, organiser_event_ics
from gateway.app import open_services as app_services
from gateway.config import load_config
from gateway.services.runtime import GatewayServices
from gateway.store.facade import Store
from gateway.store.models import AttendeeRow, BusyRow, InstanceRow, ObjectRow, OutboxRow

__all__ = ["bulk_clone", "mark_outbox_sent", "open_services", "submit_events"]


def open_services(config: Path) -> GatewayServices:
    """The gateway's services for the session's config file, opened as the CLI does."""
    return app_services(load_config(config, {}))


def submit_events(
    config: Path, url: str, run_id: str, wanted: Iterable[tuple[EventSpec, int]], now: datetime
) -> int:
    """Submit ``count`` organiser events of each spec (indices 0..count-1); returns total."""
    total = 0
    with open_services(config) as services:
        for spec, count in wanted:
            for index in range(count):
                ics = organiser_event_ics(run_id=run_id, spec=spec, index=index, now=now)
                _jid, outcomes = services.send(ics)
                if not outcomes or outcomes[0]["outcome"] != "applied":
                    raise RuntimeError(f"preloading {spec.label} #{index} failed: {outcomes}")
                total += 1
    mark_outbox_sent(url)
    return total


def mark_outbox_sent(url: str) -> int:
    """Mark every pending invitation of the preload as already sent."""
    store = Store(url)
    try:

        def mark(s: Session) -> int:
            result = s.execute(
                update(OutboxRow)
                .where(OutboxRow.status == "pending")
                .values(status="sent", sent_at=datetime.now(UTC))
            )
            return int(getattr(result, "rowcount", 0) or 0)

        return store.run_sync(mark)
    finally:
        store.close()


Plain = dict[str, object]


def _plain(row: object, columns: Iterable[str]) -> Plain:
    return {c: getattr(row, c) for c in columns}


def bulk_clone(url: str, template_uid: str, count: int, *, prefix: str, chunk: int = 2000) -> int:
    """Copy the organiser's event ``template_uid`` ``count`` times with new UIDs."""
    store = Store(url)
    try:
        obj_cols = [c.key for c in ObjectRow.__table__.columns if c.key != "id"]
        inst_cols = [c.key for c in InstanceRow.__table__.columns if c.key not in ("id",)]
        att_cols = [c.key for c in AttendeeRow.__table__.columns if c.key not in ("id",)]
        busy_cols = [c.key for c in BusyRow.__table__.columns if c.key not in ("id",)]

        def load(s: Session) -> tuple[Plain, list[Plain], list[Plain], list[Plain]]:
            obj = s.scalars(
                select(ObjectRow).where(ObjectRow.owner == ORGANISER, ObjectRow.uid == template_uid)
            ).one()
            insts = s.scalars(select(InstanceRow).where(InstanceRow.object_id == obj.id)).all()
            atts = s.scalars(select(AttendeeRow).where(AttendeeRow.object_id == obj.id)).all()
            busy = s.scalars(select(BusyRow).where(BusyRow.object_id == obj.id)).all()
            return (
                _plain(obj, obj_cols),
                [_plain(r, inst_cols) for r in insts],
                [_plain(r, att_cols) for r in atts],
                [_plain(r, busy_cols) for r in busy],
            )

        obj, insts, atts, busy = store.read_sync(load)
        counter = itertools.count()
        done = 0
        while done < count:
            n = min(chunk, count - done)

            def write(s: Session, n: int = n) -> None:
                first = int(s.scalar(select(func.coalesce(func.max(ObjectRow.id), 0))) or 0) + 1
                objs: list[Plain] = []
                ins: list[Plain] = []
                ats: list[Plain] = []
                bus: list[Plain] = []
                for k in range(n):
                    oid = first + k
                    objs.append({**obj, "id": oid, "uid": f"{prefix}-{next(counter)}@bulk"})
                    ins.extend({**r, "object_id": oid} for r in insts)
                    ats.extend({**r, "object_id": oid} for r in atts)
                    bus.extend({**r, "object_id": oid} for r in busy)
                s.execute(insert(ObjectRow), objs)
                if ins:
                    s.execute(insert(InstanceRow), ins)
                if ats:
                    s.execute(insert(AttendeeRow), ats)
                if bus:
                    s.execute(insert(BusyRow), bus)

            store.run_sync(write)
            done += n
        if store.backend == "postgresql":
            # Explicit ids leave the BIGSERIAL sequence behind: move it past them.
            def fix(s: Session) -> None:
                s.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence('scheduling_objects', 'id'),"
                        " (SELECT max(id) FROM scheduling_objects))"
                    )
                )

            store.run_sync(fix)
        return done
    finally:
        store.close()
