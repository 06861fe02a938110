"""Apply a :class:`~gateway.domain.model.Decision`'s changes to an in-memory object.

The service applies decisions to the database in one transaction; this pure mirror
of those semantics lets the engine render "the state after this decision" (a REQUEST
to a new delegate, RFC 5546 section 4.2.5; an update after a submission) and lets
tests replay sequences of messages without a database (the shuffled-replies property
of RFC 5546 section 2.1.5).

Semantics kept identical to ``gateway.store.objects``: ``DeleteInstance`` removes the
instance together with its attendee rows; ``PutAttendee`` upserts the row keyed by
(instance_key, address); ``ResolveHeld`` drops the held item from the pending list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from gateway.domain.model import (
    Change,
    DeleteAttendee,
    DeleteInstance,
    DeleteObject,
    PutAttendee,
    PutInstance,
    PutObject,
    ReplaceBusy,
    ResolveHeld,
    StoredObject,
)

__all__ = ["apply_changes"]


def apply_changes(stored: StoredObject | None, changes: Iterable[Change]) -> StoredObject | None:
    """Return a new object with ``changes`` applied (``stored`` is not modified).

    ``None`` stands for "no object": a ``PutObject`` creates one, a ``DeleteObject``
    removes it.  Row-level changes on a missing object are a programming error.
    """
    current: StoredObject | None = None
    if stored is not None:
        current = replace(
            stored,
            instances=dict(stored.instances),
            attendees=dict(stored.attendees),
            held=list(stored.held),
        )
    for change in changes:
        if isinstance(change, PutObject):
            if current is None:
                current = StoredObject(header=change.header)
            else:
                current.header = change.header
            continue
        if isinstance(change, DeleteObject):
            current = None
            continue
        if current is None:
            raise ValueError(f"{type(change).__name__} applied to a missing object")
        if isinstance(change, PutInstance):
            current.instances[change.instance.key] = change.instance
        elif isinstance(change, DeleteInstance):
            current.instances.pop(change.key, None)
            for akey in [k for k in current.attendees if k[0] == change.key]:
                del current.attendees[akey]
        elif isinstance(change, PutAttendee):
            att = change.attendee
            current.attendees[(att.instance_key, att.address)] = att
        elif isinstance(change, DeleteAttendee):
            current.attendees.pop((change.instance_key, change.address), None)
        elif isinstance(change, ResolveHeld):
            current.held = [h for h in current.held if h.id != change.held_id]
        elif isinstance(change, ReplaceBusy):
            continue  # busy periods are not part of the in-memory object
    return current
