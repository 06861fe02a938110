"""Attendee-side iTIP processing for a local calendar user (RFC 5546 sections 3.2-3.5).

For a message addressed to ``ctx.owner`` the gateway acts as that user's calendar
agent in the attendee role: REQUEST (3.2.2, 3.4.2), ADD (3.2.4, 3.4.4, 3.5.2), CANCEL
(3.2.5, 3.4.5, 3.5.3), DECLINECOUNTER (3.2.8, 3.4.8), PUBLISH (3.2.1, 3.4.1, 3.5.1)
and the VFREEBUSY REQUEST/PUBLISH pair (3.3.1, 3.3.2).

Order of checks, each giving one outcome with a reason:

1. the restriction tables (:mod:`gateway.domain.validate`); a REQUEST that asks for
   an answer gets a REPLY with REQUEST-STATUS 3.x (section 3.6) instead of silence;
2. who the owner is in the message (attendee, delegate, uninvited/forwarded);
3. authorisation (section 6.1): changes only from the stored ORGANIZER or its
   SENT-BY; an ORGANIZER change on a stored object is held for the user (6.1.3);
4. ordering per instance (2.1.4, 2.1.5): older is ``ignored-stale``, equal is
   ``duplicate``;
5. the method's semantics, merging into the stored copy rather than replacing it:
   the owner's PARTSTAT survives an update without significant change, their
   VALARMs and TRANSP always survive;
6. the owner's policy (:mod:`gateway.domain.booking`) and the REPLY it sends (3.2.3).

Design choices worth knowing:

* Early messages (5.2.1): a CANCEL or ADD for an unknown UID is held; every REQUEST
  that creates an object carries :class:`ReleaseHeld` so the service re-runs what was
  held after the commit (rather than applying held items inline here).
* An invitation that does not list the owner (3.2.2.6) is stored with the owner added
  as NEEDS-ACTION (with MEMBER when a CUTYPE=GROUP attendee reached them, 3.7.2).  If
  the organiser sent it, the policy answers as usual; if an attendee forwarded it, the
  ORGANIZER line is only that attendee's claim, so it waits for the user.
* Error replies (REQUEST-STATUS 3.x) go only to an organiser the transport vouches
  for, so a forged invitation cannot make the gateway send mail to a third party.
* A message in which the owner is the ORGANIZER is not an invitation: it is ignored
  here (the organiser side records organiser copies).
* Updates from a SENT-BY named only in the new message are refused: otherwise anyone
  could rewrite an event by adding ``SENT-BY`` pointing at themselves.
* RSVP=FALSE on the owner's line records the policy's answer without sending it
  (RFC 5545 3.2.17); an absent RSVP still gets the answer, as clients expect.
* VFREEBUSY PUBLISH is recorded (journal outcome) only: the store has no model for
  other people's busy time.
* RANGE=THISANDFUTURE is stored as a range override; busy time applies its shift to
  later instances (:func:`gateway.domain.recurrence.busy_periods`), and stored later
  overrides are moved by the same offset and take the properties the range changes
  (RFC 5545 3.8.4.4, RFC 5546 4.4.5).
* A room/resource series accepted within its conflict allowance (issue 3) answers
  with ONE REPLY: the series ACCEPTED plus a DECLINED component with RECURRENCE-ID per
  conflicting instance (RFC 5546 3.2.3 allows several components of one UID); the
  room's copy gets an override per declined instance, so busy time leaves them out.
* Published objects (PUBLISH) and VTODOs do not add busy time; VEVENT invitations do
  (TENTATIVE while unanswered, nothing when declined or TRANSPARENT).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gateway.domain.addresses import normalise, to_uri
from gateway.domain.booking import PolicyDecision, decide
from gateway.domain.derive import derive_instance, format_like
from gateway.domain.ical import Component, Property, escape_text, serialize
from gateway.domain.identity import AuthVerdict
from gateway.domain.model import (
    AttendeeState,
    BusyPeriod,
    Change,
    Context,
    Decision,
    DeleteAttendee,
    DeleteInstance,
    HoldRequest,
    ITipMessage,
    Method,
    ObjectHeader,
    Outcome,
    OutgoingMessage,
    PutAttendee,
    PutInstance,
    PutObject,
    ReleaseHeld,
    ReplaceBusy,
    Role,
    StoredInstance,
    StoredObject,
)
from gateway.domain.recurrence import (
    BUSY_HORIZON,
    busy_periods,
    duration_of,
    is_recurring,
    key_instant,
)
from gateway.domain.state import (
    attendee_from_prop,
    compare_versions,
    dtstamp_of,
    instance_key_of,
    render_calendar,
    sequence_of,
    split_component,
)
from gateway.domain.timeutil import TzResolver, format_utc, instance_key, to_utc
from gateway.domain.validate import Violation, validated

if TYPE_CHECKING:
    from gateway.domain.engine import LoadPlan

__all__ = ["busy_window", "load_plan", "process"]

_REPLY_KINDS = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "tentative"}
# Properties a REPLY copies from the request (section 3.2.3 table; DTEND/DUE/DURATION
# so the organiser's client can show which time was answered).
_REPLY_COPY = ("DTSTART", "DTEND", "DUE", "DURATION", "SUMMARY", "RRULE", "RDATE", "EXDATE")
# Instant-valued properties compared by instant, not by text, for "significant".
_INSTANT_PROPS = frozenset({"DTSTART", "DTEND", "DUE", "RECURRENCE-ID"})
_MULTI_INSTANT_PROPS = frozenset({"EXDATE", "RDATE"})


# --- entry points ----------------------------------------------------------------------


def load_plan(msg: ITipMessage, owner: str) -> LoadPlan:
    """Attendee-side decisions need every attendee row (a REQUEST replaces the list);
    a REQUEST also asks for held items so early CANCELs can be resolved."""
    from gateway.domain.engine import LoadPlan

    return LoadPlan(attendee_addresses=None, held=msg.method == Method.REQUEST)


def busy_window(msg: ITipMessage, ctx: Context) -> tuple[datetime, datetime] | None:
    """The owner's busy time the decision needs, as a UTC range, or None.

    VFREEBUSY REQUEST: the requested DTSTART/DTEND (3.3.2).  REQUEST/ADD under a
    conflict-checking policy: the free/busy horizon around ``ctx.now``.
    """
    if msg.component_type == "VFREEBUSY":
        if msg.method != Method.REQUEST or not msg.components:
            return None
        return _freebusy_range(msg.components[0], TzResolver.for_calendar(msg.calendar), ctx)
    if msg.method not in (Method.REQUEST, Method.ADD):
        return None
    owner = ctx.owner
    checks = owner.policy == "accept-if-free" or (
        owner.kind != "person" and (owner.booking is not None or owner.policy != "manual")
    )
    if not checks:
        return None
    return ctx.now - BUSY_HORIZON[0], ctx.now + BUSY_HORIZON[1]


def process(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    """Decide what ``msg`` means for ``ctx.owner`` acting as attendee (see module doc)."""
    run = _Run(msg, stored, ctx)
    try:
        decision = run.decide()
    except (ValueError, OverflowError) as exc:  # data the tables let through but unusable
        decision = Decision(Outcome.REJECTED_INVALID, f"unusable calendar data: {exc}")
    decision.warnings.extend(w for w in run.warnings if w not in decision.warnings)
    return decision


# --- the work for one message -----------------------------------------------------------


@dataclass
class _Run:
    msg: ITipMessage
    stored: StoredObject | None
    ctx: Context
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resolver = TzResolver.for_calendar(self.msg.calendar)
        self._keys: dict[int, tuple[Component, Property | None, str]] = {}
        self.warnings.extend(self.msg.warnings)
        self.owner = normalise(self.ctx.owner.address)
        self.me = {self.owner} | {normalise(a) for a in self.ctx.owner.aliases if a}
        first = self.msg.components[0] if self.msg.components else Component("VEVENT")
        org = first.get("ORGANIZER")
        self.organizer = normalise(org.value) if org is not None else ""
        self.organizer_prop = org.copy() if org is not None else None
        self.sent_by = normalise(org.param("SENT-BY")) if org is not None else ""
        if not self.organizer and self.stored is not None:
            self.organizer = self.stored.header.organizer
        self.forwarded_by = ""

    # -- top level ------------------------------------------------------------------
    def decide(self) -> Decision:
        msg = self.msg
        if not msg.components:
            return Decision(Outcome.REJECTED_INVALID, "no scheduling component")
        violations = validated(msg, self.warnings)
        violations.extend(self._limits())
        if msg.component_type == "VFREEBUSY":
            return self._freebusy(violations)
        if violations:
            return self._invalid(violations)
        if self.organizer and self.organizer in self.me:
            return Decision(
                Outcome.IGNORED_LOOP,
                f"{self.owner} is the ORGANIZER of this {msg.method}; organiser copies are "
                "recorded by the organiser side, not as an invitation",
            )
        if self.stored is not None and self.stored.header.role == Role.ORGANIZER:
            return Decision(
                Outcome.IGNORED_UNSUPPORTED,
                f"{self.owner} organises UID {msg.uid}; a {msg.method} from "
                f"{self.organizer or 'someone else'} cannot change the organiser copy",
            )
        refusal = self._authorise()
        if refusal is not None:
            return refusal
        handler = {
            Method.REQUEST: self._request,
            Method.PUBLISH: self._publish,
            Method.ADD: self._add,
            Method.CANCEL: self._cancel,
            Method.DECLINECOUNTER: self._declinecounter,
        }.get(Method(msg.method))
        if handler is None:
            return Decision(
                Outcome.IGNORED_UNSUPPORTED, f"{msg.method} is not an attendee-side method"
            )
        return handler()

    def _limits(self) -> list[Violation]:
        count = sum(c.count("ATTENDEE") for c in self.msg.components)
        if count > self.ctx.max_attendees:
            return [
                Violation(
                    "3.10",
                    "ATTENDEE",
                    f"{count} ATTENDEEs exceed the limit of {self.ctx.max_attendees}",
                )
            ]
        if len(self.msg.components) > self.ctx.max_instances:
            return [
                Violation(
                    "3.10",
                    self.msg.component_type,
                    f"{len(self.msg.components)} components exceed the limit of "
                    f"{self.ctx.max_instances}",
                )
            ]
        return []

    # -- validation failures (3.6) -------------------------------------------------
    def _invalid(self, violations: list[Violation]) -> Decision:
        reason = "; ".join(f"{v.code} {v.text}" for v in violations)
        decision = Decision(
            Outcome.REJECTED_INVALID,
            f"violates RFC 5546 section 3: {reason}",
            recurrence_id=self._key_of(self.msg.components[0]),
        )
        mine = self._my_line(self.msg.components[0])
        owed = (
            self.msg.method == Method.REQUEST
            and mine is not None
            and (mine.param("RSVP") or "").upper() != "FALSE"
            and bool(self.organizer)
            and self._sender_is_organizer()
        )
        if owed and mine is not None:
            comp = self._reply_component(self.msg.components[0], mine, None)
            for v in violations:
                comp.add(Property("REQUEST-STATUS", v.request_status()))
            decision.outgoing.append(
                self._outgoing("REPLY", [comp], subject_kind="status", summary=self._summary())
            )
            decision.reason += " (REQUEST-STATUS reply sent)"
        return decision

    # -- who and whether -----------------------------------------------------------
    def _my_line(self, comp: Component) -> Property | None:
        for prop in comp.get_all("ATTENDEE"):
            if normalise(prop.value) in self.me:
                return prop
        return None

    def _expected(self) -> set[str]:
        """Addresses allowed to change the object (section 6.1)."""
        if self.stored is not None and self.stored.header.organizer:
            header = self.stored.header
            return {a for a in (header.organizer, header.organizer_sent_by) if a}
        return {a for a in (self.organizer, self.sent_by) if a}

    def _sender_is_organizer(self) -> bool:
        sender = self.ctx.sender
        if sender.local_submission:
            return True
        if sender.dmarc == AuthVerdict.FAIL:
            return False
        expected = self._expected()
        return any(normalise(a) in expected for a in sender.claimed())

    def _authorise(self) -> Decision | None:
        sender = self.ctx.sender
        if sender.local_submission:
            return self._organizer_change()
        claimed = [normalise(a) for a in sender.claimed()]
        who = ", ".join(claimed) or "nobody (no transport sender)"
        if sender.dmarc == AuthVerdict.FAIL:
            return Decision(
                Outcome.REJECTED_UNAUTHORISED,
                f"DMARC failed for {who}: the sender's identity cannot be trusted",
            )
        expected = self._expected()
        if not expected:
            if self.msg.method == Method.PUBLISH:
                return None  # an anonymous publication changes nobody's schedule
            return Decision(Outcome.REJECTED_UNAUTHORISED, f"{self.msg.method} names no ORGANIZER")
        if any(a in expected for a in claimed):
            return self._organizer_change()
        forwarder = next((a for a in claimed if self._is_attendee(a)), "")
        if self.stored is None and self.msg.method == Method.REQUEST and forwarder:
            # Forwarded by an attendee (3.2.2.6).  The ORGANIZER line is only a claim
            # here, so the invitation is stored for the user and never auto-answered.
            self.forwarded_by = forwarder
            return None
        return Decision(
            Outcome.REJECTED_UNAUTHORISED,
            f"{self.msg.method} for UID {self.msg.uid} claimed by {who}, but only the "
            f"organiser {' or '.join(sorted(expected))} may send it (RFC 5546 6.1)",
        )

    def _is_attendee(self, addr: str) -> bool:
        return any(
            normalise(p.value) == addr for c in self.msg.components for p in c.get_all("ATTENDEE")
        )

    def _organizer_change(self) -> Decision | None:
        """Section 6.1.3: a stored object's ORGANIZER only changes with the user's consent."""
        if self.stored is None or not self.stored.header.organizer:
            return None
        old = self.stored.header.organizer
        new = normalise(self.organizer_prop.value) if self.organizer_prop is not None else old
        if not new or new == old:
            return None
        return Decision(
            Outcome.HELD_PENDING,
            f"ORGANIZER would change from {old} to {new}; held for the user to confirm "
            "(RFC 5546 6.1.3)",
            hold=[self._hold("organizer-change", self.msg.components[0])],
        )

    # -- shared pieces ----------------------------------------------------------------
    def _key_of(self, comp: Component) -> str:
        # Asked many times per component (plan bookkeeping, replies); decoding the
        # RECURRENCE-ID each time was measurable (issue 5).  The entry keeps ``comp``
        # alive, so its id() cannot be reused by another component during the run.
        # The RECURRENCE-ID line itself is part of the check: a replaced one misses.
        rid = comp.get("RECURRENCE-ID")
        memo = self._keys.get(id(comp))
        if memo is not None and memo[0] is comp and memo[1] is rid:
            return memo[2]
        try:
            key = instance_key_of(comp, self.resolver)
        except ValueError:
            key = ""
        self._keys[id(comp)] = (comp, rid, key)
        return key

    def _summary(self) -> str:
        for comp in self.msg.components:
            if comp.get("SUMMARY") is not None:
                return comp.text("SUMMARY")
        return self.stored.header.summary if self.stored is not None else ""

    def _hold(self, kind: str, comp: Component) -> HoldRequest:
        return HoldRequest(
            kind=kind,
            instance_key=self._key_of(comp),
            sender=self.organizer,
            method=self.msg.method,
            payload=serialize(self.msg.calendar),
            sequence=sequence_of(comp),
            dtstamp=dtstamp_of(comp, self.resolver),
        )

    def _header(self, base: ObjectHeader | None, master: Component | None) -> ObjectHeader:
        msg = self.msg
        comp = master or msg.components[0]
        zones = {(z.value("TZID") or "").strip(): z for z in (base.timezones if base else [])}
        for vtz in msg.timezones:
            zones[(vtz.value("TZID") or "").strip()] = vtz.copy()
        skip = {"METHOD", "PRODID", "VERSION"}
        calendar_props = [p.copy() for p in msg.calendar.properties if p.name not in skip]
        header = ObjectHeader(
            owner=self.owner,
            uid=msg.uid,
            component_type=msg.component_type,
            role=Role.ATTENDEE,
            organizer=self.organizer,
            organizer_sent_by=self.sent_by,
            sequence=sequence_of(comp),
            dtstamp=dtstamp_of(comp, self.resolver),
            status=(comp.value("STATUS") or "").upper(),
            summary=comp.text("SUMMARY") or (base.summary if base else ""),
            is_recurring=any(is_recurring(c) for c in msg.components)
            or (base.is_recurring if base else False),
            calendar_props=calendar_props or (base.calendar_props if base else []),
            timezones=list(zones.values()),
        )
        if base is not None:
            # Keep the authorised organiser identity; only a newer master moves the
            # header's version (overrides carry their own, section 2.1.5 / Google).
            header.organizer = base.organizer or header.organizer
            header.organizer_sent_by = base.organizer_sent_by or header.organizer_sent_by
            if master is None:
                header.sequence, header.dtstamp = base.sequence, base.dtstamp
                header.status = base.status
        return header

    def _outgoing(
        self,
        method: str,
        comps: list[Component],
        *,
        subject_kind: str,
        summary: str,
        instance_key_: str = "",
    ) -> OutgoingMessage:
        header = self._header(self.stored.header if self.stored else None, None)
        cal = render_calendar(header, method, comps, prodid=self.ctx.prodid)
        return OutgoingMessage(
            method=method,
            sender=self.owner,
            recipients=(self.organizer,),
            calendar=cal,
            uid=self.msg.uid,
            instance_key=instance_key_,
            subject_kind=subject_kind,
            summary=summary,
            answering=True,
            auto=True,
        )

    def _reply_component(
        self, source: Component, mine: Property, partstat: str | None, comment: str = ""
    ) -> Component:
        """One component of a REPLY (section 3.2.3 / 3.4.3 table)."""
        comp = Component(source.name)
        if self.organizer_prop is not None:
            comp.add(self.organizer_prop.copy())
        elif self.organizer:
            comp.add(Property("ORGANIZER", to_uri(self.organizer)))
        line = mine.copy()
        if partstat is not None:
            line.set_param("PARTSTAT", partstat)
        line.set_param("RSVP", None)
        comp.add(line)
        comp.add(Property("UID", self.msg.uid))
        rid = source.get("RECURRENCE-ID")
        if rid is not None:
            comp.add(rid.copy())
        comp.add(Property("SEQUENCE", str(sequence_of(source))))
        comp.add(Property("DTSTAMP", format_utc(self.ctx.now)))
        for name in _REPLY_COPY:
            for prop in source.get_all(name):
                comp.add(prop.copy())
        if comment:
            comp.add(Property("COMMENT", escape_text(comment)))
        return comp

    # -- REQUEST (3.2.2 / 3.4.2) --------------------------------------------------
    def _request(self) -> Decision:
        msg, stored = self.msg, self.stored
        forwarded = all(self._my_line(c) is None for c in msg.components)
        plan = _Plan()
        master_in_msg = next((c for c in msg.components if c.get("RECURRENCE-ID") is None), None)
        for comp in msg.components:
            self._merge_request_component(comp, plan, forwarded)
        if not plan.applied:
            return self._not_newer(plan)
        for comp in list(plan.applied):
            rid = comp.get("RECURRENCE-ID")
            if rid is not None and (rid.param("RANGE") or "").upper() == "THISANDFUTURE":
                self._apply_range(plan, self._key_of(comp))

        decision = Decision(Outcome.APPLIED, "", recurrence_id=self._single_key())
        changes = decision.changes
        header = self._header(
            stored.header if stored else None, master_in_msg if plan.master_newer else None
        )
        if stored is None and master_in_msg is None:
            # An override alone (Exchange sends lone RECURRENCE-ID instances).
            header.is_recurring = True
        changes.append(PutObject(header))
        if stored is not None and master_in_msg is not None and plan.master_newer:
            # A newer series replaces overrides it does not repeat (RFC 5546 3.2.2.1).
            for key, inst in stored.instances.items():
                if key and key not in plan.keys and inst.sequence < plan.master_sequence:
                    changes.append(DeleteInstance(key))
                    plan.deleted.add(key)

        # Policy: decide for new invitations and significant changes.
        decided: PolicyDecision | None = None
        needs = [c for c in plan.applied if plan.needs_answer.get(self._key_of(c), False)]
        if needs and self.forwarded_by:
            decided = PolicyDecision(
                None,
                f"forwarded by {self.forwarded_by}, not sent by the organiser: stored for the "
                "user, no automatic answer",
            )
        elif needs:
            decided = decide(
                list(msg.components),
                self.resolver,
                self.ctx,
                organizer=self.organizer,
                uid=msg.uid,
            )
            if decided.partstat is not None:
                for key in plan.keys:
                    if plan.needs_answer.get(key):
                        plan.set_my_partstat(key, decided.partstat, self.ctx.now, self.me)
        declined_sources: list[Component] = []
        if decided is not None and decided.declined_instances:
            declined_sources = self._decline_instances(plan, decided.declined_instances)

        for inst in plan.instances:
            changes.append(PutInstance(inst))
        for att in plan.attendees:
            changes.append(PutAttendee(att))
        for key, addr in plan.removed:
            changes.append(DeleteAttendee(key, addr))
        self._busy(changes, plan)
        if stored is None:
            decision.release.append(ReleaseHeld(self.owner, msg.uid))

        reasons: list[str] = []
        if stored is None:
            reasons.append("new invitation stored")
        else:
            reasons.append("update applied" + (" (significant change)" if plan.significant else ""))
        if forwarded and plan.groups:
            reasons.append(f"invited as a member of {', '.join(plan.groups)} (RFC 5546 3.7.2)")
        elif forwarded:
            reasons.append(
                f"{self.owner} is not in the ATTENDEE list (forwarded invitation, RFC 5546 3.2.2.6)"
            )
        if plan.delegated_from:
            reasons.append(f"delegated by {', '.join(plan.delegated_from)}")
        if plan.stale_keys:
            reasons.append(f"{len(plan.stale_keys)} older component(s) ignored")
        if decided is not None and decided.partstat is not None:
            reply_comps = [
                self._reply_component(
                    c,
                    plan.my_lines[self._key_of(c)],
                    decided.partstat,
                    decided.reason if decided.partstat == "DECLINED" else "",
                )
                for c in needs
                if self._key_of(c) in plan.my_lines
                and self._key_of(c) not in decided.declined_instances
            ]
            # Issue 3 series conflicts: one REPLY carrying the accepted series and one
            # DECLINED component per conflicting instance (RFC 5546 3.2.3 allows
            # several components with one UID in a REPLY; 3.7.1 per instance).
            reply_comps.extend(
                self._reply_component(
                    src,
                    plan.my_lines.get(self._key_of(src)) or plan.my_lines[""],
                    "DECLINED",
                    "conflicts with another booking of this resource",
                )
                for src in declined_sources
                if self._key_of(src) in plan.my_lines or "" in plan.my_lines
            )
            if reply_comps and self._rsvp_wanted(needs, plan):
                decision.outgoing.append(
                    self._outgoing(
                        "REPLY",
                        reply_comps,
                        subject_kind=_REPLY_KINDS[decided.partstat],
                        summary=self._summary(),
                        instance_key_=self._single_key(),
                    )
                )
                reasons.append(f"answered {decided.partstat}: {decided.reason}")
            elif reply_comps:
                reasons.append(f"{decided.partstat} recorded, no reply requested (RSVP=FALSE)")
            else:
                reasons.append(f"{decided.partstat} recorded: {decided.reason}")
        elif decided is not None:
            decision.outcome = Outcome.RECORDED
            reasons.append(decided.reason)
        elif stored is not None and not plan.significant:
            reasons.append("the owner's answer is kept")
        decision.reason = "; ".join(reasons)
        return decision

    def _apply_range(self, plan: _Plan, key: str) -> None:
        """Carry a RANGE=THISANDFUTURE change into the later stored overrides.

        RFC 5545 3.8.4.4 / RFC 5546 4.4.5: the change applies to the instance and all
        later ones.  Later instances without an override follow through the range
        override itself (:func:`gateway.domain.recurrence.busy_periods`); an existing
        later override is rewritten here: moved by the same offset (DTSTART minus
        RECURRENCE-ID), given the new length when the length changed, and given each
        property whose value the range changes relative to the series.  The owner is
        asked again for those instances when the range override needs an answer.
        """
        stored = self.stored
        rng = next((i for i in plan.instances if i.key == key), None)
        cut = key_instant(key)
        if stored is None or rng is None or cut is None or rng.start is None:
            return
        master = next((i for i in plan.instances if i.key == ""), None) or stored.instances.get("")
        if master is None:
            return
        resolver = _combined_resolver(stored, self.msg.calendar)
        shift = rng.start - cut
        length = (rng.end - rng.start) if rng.end is not None else None
        master_length = (
            master.end - master.start if master.start is not None and master.end else None
        )
        changed = _range_changes(rng.component, master.component)
        for okey, other in sorted(stored.instances.items()):
            instant = key_instant(okey)
            if not okey or okey in plan.keys or instant is None or instant <= cut:
                continue
            if plan.master_newer and other.sequence < plan.master_sequence:
                continue  # replaced by the newer series anyway
            comp = other.component.copy()
            _move(comp, shift, length if length != master_length else None, resolver)
            for name, props in changed.items():
                comp.remove(name)
                comp.properties.extend(p.copy() for p in props)
            comp.set("SEQUENCE", str(rng.sequence))
            moved, _ = split_component(comp, resolver)
            moved = replace(
                moved,
                this_and_future=other.this_and_future,
                sequence=rng.sequence,
                dtstamp=rng.dtstamp,
            )
            _keep_owner_data(moved, other)
            plan.instances.append(moved)
            plan.keys.add(okey)
            if plan.needs_answer.get(key):
                plan.needs_answer[okey] = True
                for (rkey, addr), row in stored.attendees.items():
                    if rkey == okey and addr in self.me:
                        plan.attendees.append(replace(row, partstat="NEEDS-ACTION"))

    def _decline_instances(self, plan: _Plan, keys: Sequence[str]) -> list[Component]:
        """Record DECLINED for each instance in ``keys`` on the owner's copy.

        An instance the message carries as an override gets the owner's row set to
        DECLINED; any other instance gets an override derived from the series
        (RFC 5546 3.7.1) holding a copy of the series' attendees with the owner
        DECLINED, so busy time leaves it out.  Returns the components to answer.
        """
        master = next((i for i in plan.instances if i.key == ""), None)
        series_rows = [a for a in plan.attendees if a.instance_key == ""]
        sources: list[Component] = []
        for key in keys:
            existing = next((i for i in plan.instances if i.key == key), None)
            stored = self.stored
            kept = stored.instances.get(key) if stored is not None else None
            reuse = existing is None and kept is not None and key not in plan.deleted
            if reuse and stored is not None and kept is not None:
                # A stored override the update does not repeat: declined in place.
                existing = kept
                plan.instances.append(kept)
                plan.attendees.extend(
                    row for row in _rows(stored, key).values() if row.address in self.me
                )
            if existing is None:
                if master is None:
                    continue
                existing = derive_instance(master, key, self.resolver)
                plan.instances.append(existing)
                plan.attendees.extend(replace(a, instance_key=key) for a in series_rows)
                if "" in plan.my_lines:
                    plan.my_lines.setdefault(key, plan.my_lines[""])
                plan.keys.add(key)
            plan.set_my_partstat(key, "DECLINED", self.ctx.now, self.me)
            sources.append(existing.component)
        return sources

    def _rsvp_wanted(self, comps: Sequence[Component], plan: _Plan) -> bool:
        """RSVP=FALSE explicitly says no reply is expected (RFC 5545 3.2.17)."""
        for comp in comps:
            line = plan.my_lines.get(self._key_of(comp))
            if line is not None and (line.param("RSVP") or "").upper() != "FALSE":
                return True
        return False

    def _single_key(self) -> str:
        keys = {self._key_of(c) for c in self.msg.components}
        return next(iter(keys)) if len(keys) == 1 else ""

    def _not_newer(self, plan: _Plan) -> Decision:
        key = self._single_key()
        if plan.duplicate_keys and not plan.stale_keys:
            return Decision(
                Outcome.DUPLICATE,
                f"{self.msg.method} with the same SEQUENCE and DTSTAMP was already applied",
                recurrence_id=key,
            )
        return Decision(
            Outcome.IGNORED_STALE,
            f"{self.msg.method} is older than the stored copy (RFC 5546 2.1.5: SEQUENCE "
            f"{plan.last_seen[0]} vs stored {plan.last_seen[1]})",
            recurrence_id=key,
        )

    def _merge_request_component(self, comp: Component, plan: _Plan, forwarded: bool) -> None:
        stored = self.stored
        key = self._key_of(comp)
        instance, attendees = split_component(comp, self.resolver, self.warnings)
        existing = stored.instances.get(key) if stored else None
        master = stored.instances.get("") if stored else None
        base = existing or master
        if existing is not None:
            order = compare_versions(
                instance.sequence, instance.dtstamp, existing.sequence, existing.dtstamp
            )
        elif base is not None and key:
            # A new override: older than the series only if its SEQUENCE is lower.
            order = -1 if instance.sequence < base.sequence else 1
        else:
            order = 1
        if order <= 0:
            (plan.stale_keys if order < 0 else plan.duplicate_keys).add(key)
            plan.last_seen = (instance.sequence, existing.sequence if existing else 0)
            return
        plan.applied.append(comp)
        plan.keys.add(key)
        if not key:
            plan.master_newer = True
            plan.master_sequence = instance.sequence

        significant = True
        if base is not None:
            significant = self._significant(comp, base.component, key, existing is None)
        plan.significant = plan.significant or (base is not None and significant)
        # Keep the owner's alarms and TRANSP (issue 3: merge, never blindly replace).
        if existing is not None:
            _keep_owner_data(instance, existing)
        elif base is not None:
            _keep_owner_data(instance, base, alarms_only=True)
        plan.instances.append(instance)

        mine = self._my_line(comp)
        if mine is None and forwarded:
            mine = Property(
                "ATTENDEE",
                to_uri(self.owner),
                {"PARTSTAT": ["NEEDS-ACTION"], "RSVP": ["TRUE"]},
            )
            if self.ctx.owner.display_name:
                mine.set_param("CN", self.ctx.owner.display_name)
            groups = [
                normalise(p.value)
                for p in comp.get_all("ATTENDEE")
                if (p.param("CUTYPE") or "").upper() == "GROUP"
            ]
            if groups:
                # Section 3.7.2: invited as a member of a group; the reply says which.
                mine.set_param("MEMBER", [to_uri(g) for g in groups])
                plan.groups = groups
            attendees.append(attendee_from_prop(mine, key))
        prev_rows = _rows(stored, key) if stored else {}
        if not prev_rows and key and stored is not None:
            prev_rows = {a: replace(s, instance_key=key) for a, s in _rows(stored, "").items()}
        new_addresses = {a.address for a in attendees}
        for att in attendees:
            if att.address in self.me:
                mine = att.prop
                prev = prev_rows.get(att.address)
                if att.delegated_from:
                    plan.delegated_from.extend(att.delegated_from)
                if prev is not None and not significant:
                    att = replace(
                        att,
                        partstat=prev.partstat,
                        replied_at=prev.replied_at,
                        reply_sequence=prev.reply_sequence,
                        reply_dtstamp=prev.reply_dtstamp,
                    )
                else:
                    att = replace(att, partstat="NEEDS-ACTION")
                    plan.needs_answer[key] = True
            plan.attendees.append(att)
        if stored is not None:
            for (row_key, addr), _row in stored.attendees.items():
                if row_key == key and addr not in new_addresses and addr not in self.me:
                    plan.removed.append((key, addr))
            dropped = not any(a in self.me for a in new_addresses)
            if dropped and any(a in self.me for a in prev_rows):
                self.warnings.append(
                    f"the update no longer lists {self.owner}; kept the owner's row"
                )
        if mine is not None:
            plan.my_lines[key] = mine
        if base is None:
            plan.needs_answer[key] = True
        if instance.cancelled:
            # A cancelled instance inside a REQUEST (Google) is recorded, not answered.
            plan.needs_answer.pop(key, None)

    def _significant(self, new: Component, old: Component, key: str, new_override: bool) -> bool:
        """Did anything in ``ctx.significant`` change (issue 3 / RFC 5546 2.1.4)?

        A new override is compared with the series: an override that only restates
        the master's properties at its own RECURRENCE-ID is not a change; a moved
        DTSTART is.
        """
        for name in self.ctx.significant:
            if new_override and name in ("RRULE", "RDATE", "EXDATE"):
                continue
            if new_override and name in ("DTSTART", "DTEND", "DUE", "DURATION"):
                continue
            if self._prop_view(new, name) != self._prop_view(old, name):
                return True
        if new_override:
            rid = new.get("RECURRENCE-ID")
            start = new.get("DTSTART")
            if rid is not None and start is not None:
                try:
                    moved = instance_key(self.resolver.value(rid)) != instance_key(
                        self.resolver.value(start)
                    )
                except ValueError:
                    moved = True
                if moved:
                    return True
                if _length(new, self.resolver) != _length(old, self.resolver):
                    return True
        return False

    def _prop_view(self, comp: Component, name: str) -> tuple[str, ...]:
        props = comp.get_all(name)
        out: list[str] = []
        for prop in props:
            try:
                if name in _INSTANT_PROPS:
                    out.append(instance_key(self.resolver.value(prop)))
                    continue
                if name in _MULTI_INSTANT_PROPS:
                    out.extend(instance_key(v) for v in self.resolver.values(prop))
                    continue
            except ValueError:
                pass
            value = prop.text.strip()
            out.append(value.upper() if name in ("STATUS", "RRULE", "DURATION") else value)
        return tuple(sorted(out))

    def _busy(self, changes: list[Change], plan: _Plan) -> None:
        """Recompute the object's busy periods from the state after the changes."""
        if self.msg.component_type != "VEVENT" or self.msg.method == Method.PUBLISH:
            return
        instances: dict[str, StoredInstance] = dict(self.stored.instances) if self.stored else {}
        for key in plan.deleted:
            instances.pop(key, None)
        for inst in plan.instances:
            instances[inst.key] = inst
        mine: dict[str, str] = {}
        if self.stored is not None:
            for (key, addr), row in self.stored.attendees.items():
                if addr in self.me:
                    mine[key] = row.partstat
        for att in plan.attendees:
            if att.address in self.me:
                mine[att.instance_key] = att.partstat
        fbtypes = {key: _fbtype(p) for key, p in mine.items()}
        cancelled = plan.object_cancelled or (
            self.stored is not None
            and self.stored.header.status == "CANCELLED"
            and not plan.master_newer
        )
        periods = busy_periods(
            instances,
            self.resolver,
            self.ctx.now - BUSY_HORIZON[0],
            self.ctx.now + BUSY_HORIZON[1],
            self.ctx.max_instances,
            uid=self.msg.uid,
            fbtype_for=fbtypes,
            object_cancelled=cancelled,
        )
        changes.append(ReplaceBusy(periods))

    # -- PUBLISH (3.2.1 / 3.4.1 / 3.5.1) -------------------------------------------
    def _publish(self) -> Decision:
        plan = _Plan()
        master = next((c for c in self.msg.components if c.get("RECURRENCE-ID") is None), None)
        for comp in self.msg.components:
            key = self._key_of(comp)
            instance, _attendees = split_component(comp, self.resolver, self.warnings)
            existing = self.stored.instances.get(key) if self.stored else None
            if existing is not None:
                order = compare_versions(
                    instance.sequence, instance.dtstamp, existing.sequence, existing.dtstamp
                )
                if order <= 0:
                    (plan.stale_keys if order < 0 else plan.duplicate_keys).add(key)
                    plan.last_seen = (instance.sequence, existing.sequence)
                    continue
                _keep_owner_data(instance, existing)
            plan.instances.append(instance)
            plan.keys.add(key)
            if not key:
                plan.master_newer = True
        if not plan.instances:
            return self._not_newer(plan)
        header = self._header(
            self.stored.header if self.stored else None, master if plan.master_newer else None
        )
        decision = Decision(
            Outcome.APPLIED,
            f"published {self.msg.component_type.lower()} "
            + ("stored" if self.stored is None else "updated")
            + " (no reply: PUBLISH, RFC 5546 3.2.1)",
            recurrence_id=self._single_key(),
        )
        decision.changes.append(PutObject(header))
        decision.changes.extend(PutInstance(i) for i in plan.instances)
        return decision

    # -- ADD (3.2.4 / 3.4.4 / 3.5.2) -----------------------------------------------
    def _add(self) -> Decision:
        comp = self.msg.components[0]
        stored = self.stored
        if stored is None or "" not in stored.instances:
            decision = Decision(
                Outcome.HELD_PENDING,
                f"ADD for unknown UID {self.msg.uid}: held, REFRESH sent to "
                f"{self.organizer} (RFC 5546 3.2.4)",
                hold=[self._hold("early-add", comp)],
            )
            if self.organizer:
                decision.outgoing.append(self._refresh(comp))
            return decision
        master = stored.instances[""]
        seq, stamp = sequence_of(comp), dtstamp_of(comp, self.resolver)
        start_prop = comp.get("DTSTART")
        if start_prop is None:
            return Decision(Outcome.REJECTED_INVALID, "ADD without DTSTART")
        key = instance_key(self.resolver.value(start_prop))
        existing = stored.instances.get(key)
        against = existing or master
        order = compare_versions(seq, stamp, against.sequence, against.dtstamp)
        if order <= 0:
            plan = _Plan(last_seen=(seq, against.sequence))
            (plan.stale_keys if order < 0 else plan.duplicate_keys).add(key)
            return self._not_newer(plan)
        # The added instance is stored as an override whose RECURRENCE-ID is its start,
        # and the series gains an RDATE so expansion and rendering include it.
        added = comp.copy()
        rid = Property(
            "RECURRENCE-ID", start_prop.value, {k: list(v) for k, v in start_prop.params.items()}
        )
        added.properties.insert(1, rid)
        new_master = replace(master, component=master.component.copy())
        new_master.component.add(
            Property("RDATE", start_prop.value, {k: list(v) for k, v in start_prop.params.items()})
        )
        plan = _Plan()
        plan.instances.append(new_master)
        instance, attendees = split_component(added, self.resolver, self.warnings)
        _keep_owner_data(instance, master, alarms_only=True)
        plan.instances.append(instance)
        if not attendees:
            attendees = [replace(a, instance_key=key) for a in _rows(stored, "").values()]
        mine_line: Property | None = None
        for att in attendees:
            if att.address in self.me:
                att = replace(att, partstat="NEEDS-ACTION")
                mine_line = att.prop
            plan.attendees.append(att)
        plan.keys.add(key)
        decision = Decision(Outcome.APPLIED, f"instance {key} added", recurrence_id=key)
        decision.changes.append(PutObject(self._header(stored.header, None)))
        decision.changes.extend(PutInstance(i) for i in plan.instances)
        if mine_line is not None:
            decided = decide(
                [added], self.resolver, self.ctx, organizer=self.organizer, uid=self.msg.uid
            )
            if decided.partstat is not None:
                plan.set_my_partstat(key, decided.partstat, self.ctx.now, self.me)
                reply = self._reply_component(
                    added,
                    mine_line,
                    decided.partstat,
                    decided.reason if decided.partstat == "DECLINED" else "",
                )
                decision.outgoing.append(
                    self._outgoing(
                        "REPLY",
                        [reply],
                        subject_kind=_REPLY_KINDS[decided.partstat],
                        summary=self._summary(),
                        instance_key_=key,
                    )
                )
                decision.reason += f"; answered {decided.partstat}: {decided.reason}"
            else:
                decision.reason += f"; {decided.reason}"
        decision.changes.extend(PutAttendee(a) for a in plan.attendees)
        self._busy(decision.changes, plan)
        return decision

    def _refresh(self, comp: Component) -> OutgoingMessage:
        """A REFRESH asking the organiser for the current copy (3.2.6 table)."""
        refresh = Component(comp.name)
        refresh.add(Property("ATTENDEE", to_uri(self.owner)))
        if self.organizer_prop is not None:
            refresh.add(self.organizer_prop.copy())
        refresh.add(Property("UID", self.msg.uid))
        refresh.add(Property("DTSTAMP", format_utc(self.ctx.now)))
        return self._outgoing("REFRESH", [refresh], subject_kind="refresh", summary=self._summary())

    # -- CANCEL (3.2.5 / 3.4.5 / 3.5.3) ---------------------------------------------
    def _cancel(self) -> Decision:
        stored = self.stored
        comps = self.msg.components
        if stored is None or not stored.instances:
            return Decision(
                Outcome.HELD_PENDING,
                f"CANCEL for unknown UID {self.msg.uid} held until its REQUEST arrives "
                "(RFC 5546 5.2.1)",
                hold=[self._hold("early-cancel", c) for c in comps[:1]],
                recurrence_id=self._single_key(),
            )
        listed = {normalise(p.value) for c in comps for p in c.get_all("ATTENDEE")}
        status_cancelled = any((c.value("STATUS") or "").upper() == "CANCELLED" for c in comps)
        whole = status_cancelled or not listed or bool(listed & self.me)
        if not whole:
            return self._cancel_others(listed)
        plan = _Plan()
        reasons: list[str] = []
        for comp in comps:
            key = self._key_of(comp)
            seq, stamp = sequence_of(comp), dtstamp_of(comp, self.resolver)
            existing = stored.instances.get(key)
            against = existing or stored.instances.get("")
            if against is None:
                plan.unknown_keys.add(key)
                continue
            order = compare_versions(seq, stamp, against.sequence, against.dtstamp)
            if existing is not None and order == 0 and existing.cancelled:
                plan.duplicate_keys.add(key)
                continue
            if order < 0:
                plan.stale_keys.add(key)
                plan.last_seen = (seq, against.sequence)
                continue
            if not key:
                self._cancel_series(comp, stored, plan, seq, stamp)
                reasons.append(f"{self.msg.component_type.lower()} cancelled by the organiser")
            else:
                self._cancel_instance(comp, key, stored, plan, seq, stamp)
                reasons.append(
                    f"instance {key}"
                    + (" and all later ones" if plan.this_and_future else "")
                    + " cancelled; the series is kept"
                )
            plan.keys.add(key)
        if not plan.keys and plan.unknown_keys and not plan.stale_keys:
            # Section 4.7.2 case 2: the instance is unknown here; ask for the event.
            decision = Decision(
                Outcome.IGNORED_UNKNOWN,
                f"CANCEL names instance(s) {', '.join(sorted(plan.unknown_keys))} that the "
                "stored copy does not have; REFRESH sent (RFC 5546 4.7.2)",
                recurrence_id=self._single_key(),
            )
            if self.organizer:
                decision.outgoing.append(self._refresh(comps[0]))
            return decision
        if not plan.keys:
            return self._not_newer(plan)
        if listed & self.me and not status_cancelled:
            reasons.append(f"{self.owner} was removed from the attendee list")
        decision = Decision(Outcome.APPLIED, "; ".join(reasons), recurrence_id=self._single_key())
        master_cancelled = "" in plan.keys
        decision.changes.append(
            PutObject(self._header_for_cancel(stored.header, master_cancelled, comps[0]))
        )
        decision.changes.extend(PutInstance(i) for i in plan.instances)
        decision.changes.extend(PutAttendee(a) for a in plan.attendees)
        if master_cancelled:
            plan.object_cancelled = True
        self._busy(decision.changes, plan)
        return decision

    def _header_for_cancel(self, base: ObjectHeader, whole: bool, comp: Component) -> ObjectHeader:
        header = replace(base)
        if whole:
            header.status = "CANCELLED"
            header.sequence = max(base.sequence, sequence_of(comp))
            header.dtstamp = dtstamp_of(comp, self.resolver) or base.dtstamp
        return header

    def _cancel_series(
        self,
        comp: Component,
        stored: StoredObject,
        plan: _Plan,
        seq: int,
        stamp: datetime | None,
    ) -> None:
        """Mark every instance cancelled; nothing is deleted (history is kept)."""
        for key, inst in stored.instances.items():
            body = inst.component.copy()
            body.set("STATUS", "CANCELLED")
            if not key:
                body.set("SEQUENCE", str(seq))
                if comp.get("DTSTAMP") is not None:
                    body.set("DTSTAMP", comp.value("DTSTAMP") or "")
            plan.instances.append(
                replace(
                    inst,
                    component=body,
                    cancelled=True,
                    status="CANCELLED",
                    sequence=seq if not key else inst.sequence,
                    dtstamp=stamp if not key else inst.dtstamp,
                )
            )

    def _cancel_instance(
        self,
        comp: Component,
        key: str,
        stored: StoredObject,
        plan: _Plan,
        seq: int,
        stamp: datetime | None,
    ) -> None:
        """Cancel one instance (or this and future ones) by an override (3.2.5)."""
        rid = comp.get("RECURRENCE-ID")
        future = rid is not None and (rid.param("RANGE") or "").upper() == "THISANDFUTURE"
        plan.this_and_future = plan.this_and_future or future
        existing = stored.instances.get(key)
        if existing is not None:
            body = existing.component.copy()
        else:
            body = _override_from_master(stored.instances[""].component, comp, self.resolver)
            for att in _rows(stored, "").values():
                plan.attendees.append(replace(att, instance_key=key))
        body.set("STATUS", "CANCELLED")
        body.set("SEQUENCE", str(seq))
        if comp.get("DTSTAMP") is not None:
            body.set("DTSTAMP", comp.value("DTSTAMP") or "")
        inst, _ = split_component(body, self.resolver)
        inst.this_and_future = future
        inst.sequence, inst.dtstamp = seq, stamp
        plan.instances.append(inst)
        if future:
            cut = key_instant(key)
            for other_key, other in stored.instances.items():
                instant = key_instant(other_key)
                if other_key and other_key != key and cut and instant and instant >= cut:
                    cancelled = other.component.copy()
                    cancelled.set("STATUS", "CANCELLED")
                    plan.instances.append(
                        replace(other, component=cancelled, cancelled=True, status="CANCELLED")
                    )

    def _cancel_others(self, listed: set[str]) -> Decision:
        """A CANCEL naming other attendees only: they were removed (3.2.5)."""
        assert self.stored is not None
        decision = Decision(
            Outcome.APPLIED,
            f"organiser removed {', '.join(sorted(listed))} from the event",
            recurrence_id=self._single_key(),
        )
        for comp in self.msg.components:
            key = self._key_of(comp)
            for addr in sorted(listed):
                if (key, addr) in self.stored.attendees:
                    decision.changes.append(DeleteAttendee(key, addr))
        if not decision.changes:
            decision.outcome = Outcome.RECORDED
            decision.reason = (
                f"CANCEL names {', '.join(sorted(listed))}, who are not attendees of the "
                "stored copy; nothing to change"
            )
        return decision

    # -- DECLINECOUNTER (3.2.8 / 3.4.8) ----------------------------------------------
    def _declinecounter(self) -> Decision:
        if self.stored is None:
            return Decision(
                Outcome.IGNORED_UNKNOWN,
                f"DECLINECOUNTER for unknown UID {self.msg.uid}: no counter proposal to decline",
            )
        comp = self.msg.components[0]
        key = self._key_of(comp)
        status = comp.value("REQUEST-STATUS") or ""
        comment = comp.text("COMMENT")
        decision = Decision(
            Outcome.RECORDED,
            f"the organiser declined {self.owner}'s counter proposal"
            + (f": {comment}" if comment else "")
            + " (RFC 5546 3.2.8)",
            recurrence_id=key,
        )
        row = self.stored.attendees.get((key, self.owner)) or self.stored.attendees.get(
            ("", self.owner)
        )
        if row is not None:
            decision.changes.append(
                PutAttendee(replace(row, request_status=status or "2.0;Success"))
            )
        return decision

    # -- VFREEBUSY (3.3) -----------------------------------------------------------
    def _freebusy(self, violations: list[Violation]) -> Decision:
        comp = self.msg.components[0]
        if self.msg.method == Method.PUBLISH:
            if violations:
                return self._invalid(violations)
            return Decision(
                Outcome.RECORDED,
                f"free/busy published by {self.organizer or 'an unnamed organiser'} recorded "
                "(RFC 5546 3.3.1)",
            )
        if self.msg.method != Method.REQUEST:
            return Decision(
                Outcome.IGNORED_UNSUPPORTED,
                f"VFREEBUSY {self.msg.method} is handled by the organiser side",
            )
        if violations:
            return self._invalid(violations)
        if self._my_line(comp) is None:
            return Decision(
                Outcome.IGNORED_NOT_LOCAL,
                f"free/busy request does not ask for {self.owner}'s time",
            )
        if not self._sender_is_organizer():
            claimed = ", ".join(self.ctx.sender.claimed()) or "nobody"
            return Decision(
                Outcome.REJECTED_UNAUTHORISED,
                f"free/busy request from {claimed} claims to come from {self.organizer}",
            )
        window = _freebusy_range(comp, self.resolver, self.ctx)
        if window is None:
            return Decision(Outcome.REJECTED_INVALID, "free/busy request has no usable range")
        start, end = window
        reply = Component("VFREEBUSY")
        if self.organizer_prop is not None:
            reply.add(self.organizer_prop.copy())
        mine = self._my_line(comp)
        assert mine is not None
        attendee = Property("ATTENDEE", mine.value)
        attendee.set_param("CN", mine.param("CN"))
        reply.add(attendee)
        reply.add(Property("UID", self.msg.uid or f"freebusy-{format_utc(self.ctx.now)}"))
        reply.add(Property("DTSTAMP", format_utc(self.ctx.now)))
        reply.add(Property("DTSTART", format_utc(start)))
        reply.add(Property("DTEND", format_utc(end)))
        periods = _merge_busy(self.ctx.busy, start, end)
        for fbtype, p_start, p_end in periods:
            reply.add(
                Property(
                    "FREEBUSY",
                    f"{format_utc(p_start)}/{format_utc(p_end)}",
                    {"FBTYPE": [fbtype]},
                )
            )
        cal = Component("VCALENDAR")
        cal.add(Property("PRODID", self.ctx.prodid))
        cal.add(Property("VERSION", "2.0"))
        cal.add(Property("METHOD", "REPLY"))
        cal.components.append(reply)
        out = OutgoingMessage(
            method="REPLY",
            sender=self.owner,
            recipients=(self.organizer,),
            calendar=cal,
            uid=self.msg.uid,
            subject_kind="freebusy",
            answering=True,
        )
        return Decision(
            Outcome.APPLIED,
            f"free/busy reply sent to {self.organizer} with {len(periods)} busy period(s) "
            f"between {format_utc(start)} and {format_utc(end)} (RFC 5546 3.3.2)",
            outgoing=[out],
        )


@dataclass
class _Plan:
    """Accumulates the rows a decision writes, per instance."""

    applied: list[Component] = field(default_factory=list)
    instances: list[StoredInstance] = field(default_factory=list)
    attendees: list[AttendeeState] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    stale_keys: set[str] = field(default_factory=set)
    duplicate_keys: set[str] = field(default_factory=set)
    needs_answer: dict[str, bool] = field(default_factory=dict)
    my_lines: dict[str, Property] = field(default_factory=dict)
    delegated_from: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    unknown_keys: set[str] = field(default_factory=set)
    significant: bool = False
    master_newer: bool = False
    master_sequence: int = 0
    object_cancelled: bool = False
    this_and_future: bool = False
    last_seen: tuple[int, int] = (0, 0)

    def set_my_partstat(
        self, key: str, partstat: str, now: datetime, me: Iterable[str] | None = None
    ) -> None:
        line = self.my_lines.get(key)
        addresses = set(me or ()) | ({normalise(line.value)} if line is not None else set())
        for i, att in enumerate(self.attendees):
            if att.instance_key == key and att.address in addresses:
                self.attendees[i] = replace(att, partstat=partstat, replied_at=now)


# --- helpers ------------------------------------------------------------------------------


def _rows(stored: StoredObject, key: str) -> dict[str, AttendeeState]:
    return {addr: row for (k, addr), row in stored.attendees.items() if k == key}


def _keep_owner_data(
    instance: StoredInstance, previous: StoredInstance, *, alarms_only: bool = False
) -> None:
    """Carry the owner's VALARMs and TRANSP from the stored copy into ``instance``."""
    comp = instance.component
    old_alarms = [c.copy() for c in previous.component.sub("VALARM")]
    comp.components = [c for c in comp.components if c.name != "VALARM"] + old_alarms
    if alarms_only:
        return
    transp = previous.component.get("TRANSP")
    if transp is not None:
        comp.set("TRANSP", transp.value)
        instance.transp = transp.value.upper()


# What a RANGE=THISANDFUTURE override does not pass on to later overrides: identity,
# versioning, recurrence and time (the time is moved by offset, see _move).
_RANGE_SKIP = frozenset(
    {
        "UID", "RECURRENCE-ID", "DTSTART", "DTEND", "DURATION", "DUE", "SEQUENCE",
        "DTSTAMP", "RRULE", "RDATE", "EXDATE", "EXRULE", "ATTENDEE", "ORGANIZER",
        "LAST-MODIFIED", "CREATED",
    }
)  # fmt: skip


def _range_changes(rng: Component, master: Component) -> dict[str, list[Property]]:
    """Properties the range override sets differently from the series."""
    out: dict[str, list[Property]] = {}
    names = {p.name for p in rng.properties} | {p.name for p in master.properties}
    for name in sorted(names - _RANGE_SKIP):
        if name.startswith("X-MOZ-"):
            continue
        mine = sorted(p.to_line() for p in rng.get_all(name))
        theirs = sorted(p.to_line() for p in master.get_all(name))
        if mine != theirs:
            out[name] = [p.copy() for p in rng.get_all(name)]
    return out


def _move(
    comp: Component, shift: timedelta, length: timedelta | None, resolver: TzResolver
) -> None:
    """Shift DTSTART (and DTEND/DUE) by ``shift``; with ``length``, set the new end."""
    start_prop = comp.get("DTSTART")
    if start_prop is None:
        return
    try:
        new_start = to_utc(resolver.value(start_prop)) + shift
    except ValueError:
        return
    if not shift and length is None:
        return
    moved = format_like("DTSTART", new_start, start_prop, resolver)
    comp.set("DTSTART", moved.value, moved.params)
    for name in ("DTEND", "DUE"):
        prop = comp.get(name)
        if prop is None:
            continue
        try:
            end = new_start + length if length is not None else to_utc(resolver.value(prop)) + shift
        except ValueError:
            continue
        new_end = format_like(name, end, prop, resolver)
        comp.set(name, new_end.value, new_end.params)
    if length is not None and comp.get("DURATION") is not None:
        comp.set("DURATION", _format_duration(length))


def _combined_resolver(stored: StoredObject, calendar: Component) -> TzResolver:
    zones: dict[str, Component] = {}
    for vtz in (*stored.header.timezones, *calendar.sub("VTIMEZONE")):
        tzid = (vtz.value("TZID") or "").strip()
        if tzid:
            zones[tzid] = vtz
    return TzResolver(vtimezones=zones)


def _fbtype(partstat: str) -> str:
    if partstat == "DECLINED":
        return ""
    if partstat in ("TENTATIVE", "NEEDS-ACTION"):
        return "BUSY-TENTATIVE"
    return "BUSY"


def _length(comp: Component, resolver: TzResolver) -> timedelta | None:
    return duration_of(comp, resolver)


def _override_from_master(master: Component, cancel: Component, resolver: TzResolver) -> Component:
    """An override for the instance a CANCEL names, built from the series (3.7.1)."""
    rid = cancel.get("RECURRENCE-ID")
    assert rid is not None
    body = Component(master.name)
    length = _length(master, resolver)
    for prop in master.properties:
        if prop.name in ("RRULE", "RDATE", "EXDATE", "RECURRENCE-ID", "DTEND", "DURATION", "DUE"):
            continue
        if prop.name == "DTSTART":
            start = Property("DTSTART", rid.value, {k: list(v) for k, v in rid.params.items()})
            start.set_param("RANGE", None)
            body.add(start)
            continue
        body.add(prop.copy())
    clean_rid = rid.copy()
    body.properties.insert(1, clean_rid)
    if length is not None and master.get("DTSTART") is not None:
        body.add(Property("DURATION", _format_duration(length)))
    body.components = [c.copy() for c in master.components]
    return body


def _format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P"
    if days:
        text += f"{days}D"
    if hours or minutes or secs or not days:
        text += "T"
        if hours:
            text += f"{hours}H"
        if minutes:
            text += f"{minutes}M"
        if secs or not (hours or minutes):
            text += f"{secs}S"
    return text


def _freebusy_range(
    comp: Component, resolver: TzResolver, ctx: Context
) -> tuple[datetime, datetime] | None:
    """The requested range, clamped to the free/busy horizon (3.3.2)."""
    try:
        start_prop, end_prop = comp.get("DTSTART"), comp.get("DTEND")
        if start_prop is None or end_prop is None:
            return None
        start = to_utc(resolver.value(start_prop))
        end = to_utc(resolver.value(end_prop))
    except ValueError:
        return None
    if end <= start:
        return None
    return start, min(end, start + timedelta(days=BUSY_HORIZON[1].days + 1))


def _merge_busy(
    busy: Iterable[BusyPeriod], start: datetime, end: datetime
) -> list[tuple[str, datetime, datetime]]:
    """Busy periods clipped to [start, end) and merged per FBTYPE, in order (3.3.3)."""
    by_type: dict[str, list[tuple[datetime, datetime]]] = {}
    for period in busy:
        kind = (period.fbtype or "BUSY").upper()
        if kind == "FREE":
            continue
        s, e = max(period.start, start), min(period.end, end)
        if e > s:
            by_type.setdefault(kind, []).append((s, e))
    out: list[tuple[str, datetime, datetime]] = []
    for kind, spans in by_type.items():
        spans.sort()
        merged: list[list[datetime]] = []
        for s, e in spans:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        out.extend((kind, s, e) for s, e in merged)
    out.sort(key=lambda item: (item[1], item[0]))
    return out
