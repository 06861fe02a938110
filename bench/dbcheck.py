"""Read what the gateway recorded, to follow a phase and to check its correctness.

Read-only queries on the gateway's tables (its SQLAlchemy models), from the benchmark
process.  On SQLite (WAL) they never block the daemon's writer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.messages import ORGANISER
from gateway.store.facade import Store
from gateway.store.models import AttendeeRow, JournalRow, ObjectRow

__all__ = ["JournalCheck", "JournalView"]


@dataclass
class JournalCheck:
    """Every sent message journaled exactly once with the expected outcome?"""

    expected: int
    rows: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[tuple[str, str, str, str]] = field(default_factory=list)  # mid, status, out, why

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.wrong)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} not journaled (e.g. {self.missing[0]})")
        if self.duplicated:
            parts.append(f"{len(self.duplicated)} journaled twice (e.g. {self.duplicated[0]})")
        if self.wrong:
            mid, status, outcome, reason = self.wrong[0]
            parts.append(
                f"{len(self.wrong)} with an unexpected outcome (e.g. {mid}: {status}/{outcome}:"
                f" {reason})"
            )
        return "; ".join(parts) or "ok"


class JournalView:
    """Queries on one gateway database (one open engine, reused while polling)."""

    def __init__(self, url: str) -> None:
        self.store = Store(url, pool_size=1)

    def close(self) -> None:
        self.store.close()

    def max_id(self) -> int:
        return int(self.store.read_sync(lambda s: s.scalar(select(func.max(JournalRow.id)))) or 0)

    def finished_since(self, base_id: int) -> int:
        """Journal rows after ``base_id`` that are done or quarantined."""

        def count(s: Session) -> int:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(JournalRow)
                    .where(JournalRow.id > base_id, JournalRow.status.in_(("done", "quarantined")))
                )
                or 0
            )

        return self.store.read_sync(count)

    def processed_at(self, base_id: int) -> dict[str, datetime]:
        """Message-ID -> processed_at for the rows after ``base_id``."""

        def rows(s: Session) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for mid, at in s.execute(
                select(JournalRow.message_id, JournalRow.processed_at).where(
                    JournalRow.id > base_id
                )
            ):
                if mid and at is not None:
                    out[mid] = at
            return out

        return self.store.read_sync(rows)

    def check(
        self, base_id: int, message_ids: Iterable[str], outcome: str = "applied"
    ) -> JournalCheck:
        """Each of ``message_ids`` journaled once after ``base_id``, done, ``outcome``."""

        def rows(s: Session) -> list[tuple[str | None, str, str | None, str | None]]:
            return [
                (r.message_id, r.status, r.outcome, r.reason)
                for r in s.execute(
                    select(
                        JournalRow.message_id,
                        JournalRow.status,
                        JournalRow.outcome,
                        JournalRow.reason,
                    ).where(JournalRow.id > base_id)
                )
            ]

        found = self.store.read_sync(rows)
        wanted = list(message_ids)
        result = JournalCheck(expected=len(wanted), rows=len(found))
        counts = Counter(mid for mid, *_ in found)
        by_mid = {mid: (status, out, why) for mid, status, out, why in found}
        for mid in wanted:
            if counts[mid] == 0:
                result.missing.append(mid)
            elif counts[mid] > 1:
                result.duplicated.append(mid)
            else:
                status, out, why = by_mid[mid]
                if status != "done" or out != outcome:
                    result.wrong.append((mid, status, out or "", (why or "")[:200]))
        return result

    def partstats(self, uids: Iterable[str]) -> dict[tuple[str, str, str], str]:
        """(uid, instance_key, attendee) -> PARTSTAT on the organiser's copies of ``uids``."""
        wanted = sorted(set(uids))

        def rows(s: Session) -> dict[tuple[str, str, str], str]:
            out: dict[tuple[str, str, str], str] = {}
            for i in range(0, len(wanted), 500):
                q = (
                    select(
                        ObjectRow.uid,
                        AttendeeRow.instance_key,
                        AttendeeRow.address,
                        AttendeeRow.partstat,
                    )
                    .join(AttendeeRow, AttendeeRow.object_id == ObjectRow.id)
                    .where(ObjectRow.owner == ORGANISER, ObjectRow.uid.in_(wanted[i : i + 500]))
                )
                for uid, key, addr, partstat in s.execute(q):
                    out[(uid, key, addr)] = partstat
            return out

        return self.store.read_sync(rows)

    def count_objects(self) -> int:
        return int(
            self.store.read_sync(lambda s: s.scalar(select(func.count()).select_from(ObjectRow)))
            or 0
        )
