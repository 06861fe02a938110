"""Composition root: turn the settings into the store and the daemon's runnables.

The only place that knows every concrete class.  Everything it builds receives plain
values and collaborators; nothing below reads the configuration or the environment.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from gateway.config import ImapAccountConfig, ListenerConfig, Settings, UserConfig
from gateway.daemon import Gated, Runnable
from gateway.domain.addresses import normalise
from gateway.domain.model import BookingRules, UserPolicy
from gateway.services.directory import StaticDirectory
from gateway.services.intake import JournalIntake
from gateway.store import Store
from gateway.workers.child import ChildProcess
from gateway.workers.wakeup import WAKE_JOURNAL, WAKE_OUTBOX, WakeListener

if TYPE_CHECKING:
    # Imported where used: the intake process of a split daemon
    # (gateway.processing_process) never loads the engine, the composer or the
    # relay client, which keeps its memory ~11 MB smaller (issue 5, RSS target).
    from gateway.services.processor import Processor
    from gateway.services.runtime import GatewayServices
    from gateway.transports.imap import ImapAccountOptions
    from gateway.transports.smtp import ListenerOptions
    from gateway.transports.smtp_sender import RelaySender
    from gateway.workers.outbox import OutboxWorker
    from gateway.workers.processing import ProcessingWorker

__all__ = [
    "App",
    "Role",
    "SchemaNotCurrentError",
    "build_app",
    "build_processor",
    "open_services",
    "prepare_database",
    "prepare_database_in_fork",
]


def utc_now() -> datetime:
    """The one clock of the daemon (injected everywhere below)."""
    return datetime.now(UTC)


log = logging.getLogger(__name__)


@dataclass
class App:
    """Everything ``serve`` runs, and what must be closed afterwards."""

    settings: Settings
    store: Store
    runnables: list[Runnable] = field(default_factory=list)
    closers: list[Callable[[], object]] = field(default_factory=list)

    async def close(self) -> None:
        for closer in self.closers:
            result = closer()
            if hasattr(result, "__await__"):
                await result
        await self.store.aclose()


class SchemaNotCurrentError(RuntimeError):
    """The database schema is not the one this version of the gateway needs."""


def prepare_database(settings: Settings) -> None:
    """Create or upgrade the schema when the configuration asks for it, then check it.

    Upgrading happens only on SQLite: one process owns the file, so the first ``serve``
    needs no extra step.  On PostgreSQL several replicas may start at once and Alembic
    takes no lock, so the schema is upgraded explicitly with ``imip-gateway db upgrade``.
    Either way the daemon refuses to start on a schema other than the newest one, which
    would otherwise fail later, message by message.
    """
    db = settings.database
    from gateway.store import migrate  # Alembic (~11 MB), not needed once this passed

    found, wanted = migrate.current(db.url), migrate.head()
    if found != wanted and db.is_sqlite and db.auto_upgrade:
        log.info("upgrading the database schema to %s (database.auto_upgrade)", wanted)
        migrate.upgrade(db.url)
        found = migrate.current(db.url)
    if found != wanted:
        raise SchemaNotCurrentError(
            f"the database schema is at revision {found or 'none (empty database)'},"
            f" this version needs {wanted}: run `imip-gateway db upgrade`"
        )


def prepare_database_in_fork(settings: Settings) -> bool:
    """:func:`prepare_database` in a forked helper process; True when it passed.

    The processing process of a split daemon checks the schema before it announces
    READY (the intake process, which then opens the listeners, never loads Alembic).
    Alembic is ~11 MB that no code frees once imported; in a short-lived fork it
    leaves with the helper, so neither long-running process keeps it (issue 5, RSS
    target).  Call it before any thread or event loop exists.  The helper logs its own
    error (stderr), exactly as :func:`prepare_database` would in-process.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper ends in os._exit (coverage never sees it)
        code = 1
        try:
            prepare_database(settings)
            code = 0
        except SchemaNotCurrentError as exc:
            log.error("%s", exc)
        except BaseException:
            log.exception("the database schema check failed")
        finally:
            # Never return into the caller's code: this is a copy of its process.
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def user_policy(user: UserConfig) -> UserPolicy:
    """The engine's view of one configured local user."""
    booking = None
    if user.kind != "person":
        b = user.booking
        booking = BookingRules(
            window_days=b.window_days,
            max_duration_minutes=b.max_duration_minutes,
            allow_recurring=b.allow_recurring,
            max_conflicting_instances=b.max_conflicting_instances,
            max_conflict_percent=b.max_conflict_percent,
            allowed_organizers=tuple(b.allowed_organizers),
        )
    return UserPolicy(
        address=normalise(user.address),
        display_name=user.display_name,
        kind=user.kind,
        policy=user.policy,
        party_crashers=user.party_crashers,
        booking=booking,
        aliases=tuple(normalise(a) for a in user.aliases),
    )


def build_processor(settings: Settings) -> Processor:
    """The message processor with the configured users and limits."""
    from gateway.services.processor import ProcessingOptions, Processor

    g = settings.gateway
    options = ProcessingOptions(
        hostname=g.hostname,
        significant=frozenset(p.upper() for p in g.significant_properties),
        max_instances=g.max_recurrence_instances,
        max_attendees=g.max_attendees,
        max_calendar_bytes=g.max_calendar_bytes,
        auto_reply_limit_per_hour=g.auto_reply_limit_per_hour,
        trusted_authserv_ids=tuple(settings.identity.trusted_authserv_ids),
        attendee_relays=tuple(settings.identity.attendee_relays),
        require_dmarc_pass=settings.identity.require_dmarc_pass,
        lease_seconds=g.processing_lease_seconds,
        marker=g.hostname,
    )
    return Processor(StaticDirectory(user_policy(u) for u in settings.users), options)


def open_services(settings: Settings) -> GatewayServices:
    """Store + processor for one CLI command (the schema is prepared first)."""
    from gateway.services.runtime import GatewayServices

    prepare_database(settings)
    store = Store(
        settings.database.url, pool_size=settings.database.pool_size, echo=settings.database.echo
    )
    return GatewayServices(store, build_processor(settings), utc_now)


def _listener_options(cfg: ListenerConfig, settings: Settings) -> ListenerOptions:
    from gateway.transports.smtp import ListenerOptions

    return ListenerOptions(
        host=cfg.host,
        port=cfg.port,
        max_message_bytes=cfg.max_message_bytes or settings.gateway.max_message_bytes,
        tls_cert=cfg.tls_cert,
        tls_key=cfg.tls_key,
        require_tls=cfg.require_tls,
        auth_users=dict(cfg.auth_users),
        relay_mode=cfg.relay_mode,
        relay_trusted_networks=tuple(cfg.relay_trusted_networks),
        content_filter=cfg.content_filter,
        hostname=settings.gateway.hostname,
    )


Role = Literal["all", "intake", "processing"]


def build_app(
    settings: Settings,
    clock: Callable[[], datetime] = utc_now,
    *,
    role: Role = "all",
    child_argv: Sequence[str] = (),
) -> App:
    """Build the store and every runnable the configuration enables.

    Data flow (ARCHITECTURE.md section 1): listeners -> JournalIntake (durable) ->
    ProcessingWorker (engine, one transaction per message) -> outbox rows ->
    OutboxWorker -> RelaySender.  Each stage wakes the next one; each also polls, so
    rows left by a crash are picked up without a wake-up.

    ``role`` splits that flow over two processes (``gateway.processing_process``,
    see :mod:`gateway.workers.child`): ``"intake"`` runs the listeners and IMAP
    pollers and starts ``child_argv`` as the processing process, which wakes on
    hints over its stdin; ``"processing"`` is that child (processing and outbox
    only); ``"all"`` runs everything in one process.

    In ``"intake"`` the listeners and pollers start only after the child's first
    READY: the child checks (or upgrades) the schema before it, so no message is
    accepted with a schema this version cannot process.
    """
    runnables: list[Runnable] = []
    closers: list[Callable[[], object]] = []
    wake_journal: Callable[[int], None]
    wake_outbox: Callable[[], None]
    child: ChildProcess | None = None
    if role == "intake":
        child = ChildProcess(child_argv, drain_timeout=settings.gateway.shutdown_timeout_seconds)
        runnables.append(child)
        wake_journal, wake_outbox = child.wake_journal, child.wake_outbox
        # No processing here: one connection serves intake and the IMAP state.
        store = _store(settings)
    else:
        store = _store(settings)
        processing, outbox_worker, sender = _processing(settings, store, clock)
        runnables += [processing, outbox_worker]
        closers.append(sender.aclose)
        wake_journal, wake_outbox = processing.notify, outbox_worker.notify
        if role == "processing":
            runnables.append(
                WakeListener({WAKE_JOURNAL: processing.notify, WAKE_OUTBOX: outbox_worker.notify})
            )
            return App(settings=settings, store=store, runnables=runnables, closers=closers)
    # Intake gets its own connection and thread: a listener's 250 waits only for its own
    # journal INSERT, never in a queue behind decisions being processed (on SQLite the
    # two still take turns on the write lock, but a journal write is a millisecond).
    intake_store = _store(settings) if role == "all" else store
    if intake_store is not store:
        closers.append(intake_store.aclose)
    intake = JournalIntake(
        intake_store,
        clock,
        on_accepted=wake_journal,
        max_message_bytes=settings.gateway.max_message_bytes,
    )
    intake.on_forward_queued = wake_outbox
    directory = StaticDirectory(user_policy(u) for u in settings.users)
    bounce_address = normalise(settings.relay.from_address)

    def accepts(address: str) -> bool:
        # Local users and their aliases; plus our own envelope sender, where delivery
        # status notifications for the mail we sent come back (RFC 3464).
        return directory.is_local(address) or normalise(address) == bounce_address

    # Imported here: the processing process (role "processing") never listens.
    from gateway.transports.imap import ImapPoller
    from gateway.transports.smtp import SmtpListener

    listeners = settings.listeners
    intakes: list[Runnable] = []
    if listeners.smtp.enabled:
        intakes.append(SmtpListener(_listener_options(listeners.smtp, settings), intake, accepts))
    if listeners.lmtp.enabled:
        intakes.append(
            SmtpListener(
                _listener_options(listeners.lmtp, settings), intake, accepts, protocol="lmtp"
            )
        )
    for account in settings.imap.accounts:
        intakes.append(ImapPoller(_imap_options(account), intake, store, clock))
    if child is not None:
        # Only the first READY gates (the event stays set): a later restart of a
        # crashed child never stops intake.
        intakes = [Gated(r, child.ready) for r in intakes]
    runnables += intakes
    return App(settings=settings, store=store, runnables=runnables, closers=closers)


def _store(settings: Settings) -> Store:
    db = settings.database
    return Store(db.url, pool_size=db.pool_size, echo=db.echo)


def _processing(
    settings: Settings, store: Store, clock: Callable[[], datetime]
) -> tuple[ProcessingWorker, OutboxWorker, RelaySender]:
    """The journal processing worker and the outbox worker sending through the relay."""
    from gateway.services.processor import record_delivery_failure
    from gateway.transports.smtp_sender import RelayOptions, RelaySender
    from gateway.workers.outbox import FailedDelivery, OutboxOptions, OutboxWorker
    from gateway.workers.processing import ProcessingWorker

    processor = build_processor(settings)
    relay = settings.relay
    sender = RelaySender(
        RelayOptions(
            host=relay.host,
            port=relay.port,
            tls=relay.tls,
            username=relay.username,
            password=relay.password,
            timeout_seconds=relay.timeout_seconds,
            max_connections=relay.max_connections,
            local_hostname=settings.gateway.hostname,
        )
    )

    async def on_failure(failed: FailedDelivery) -> None:
        # A 5xx (or giving up) is reflected on the attendee (SCHEDULE-STATUS), so the
        # organiser's `events show` says the invitation never arrived.
        row = failed.row
        await store.run(
            record_delivery_failure,
            row.object_id,
            row.instance_key,
            row.recipient,
            str(failed.code or ""),
            ("gave up: " if failed.expired else "") + failed.reason,
            clock(),
        )

    outbox_worker = OutboxWorker(
        store,
        sender,
        clock,
        OutboxOptions(
            max_connections=relay.max_connections,
            retry_initial_seconds=relay.retry_initial_seconds,
            retry_max_seconds=relay.retry_max_seconds,
            max_age_hours=relay.max_age_hours,
            envelope_from=relay.from_address,
            poll_interval_seconds=relay.poll_interval_seconds,
            # Longer than one send can take (connect + transaction timeouts), so a
            # lease never expires under a send that is still running.
            lease_seconds=max(60.0, 4 * relay.timeout_seconds),
        ),
        on_failure,
    )
    processing = ProcessingWorker(
        store,
        processor,
        clock,
        on_queued=outbox_worker.notify,
        # Filled in (and checked against database.pool_size) by Settings validation.
        concurrency=max(1, settings.gateway.processing_concurrency),
    )
    if store.backend == "sqlite" and processing.concurrency > 1:
        log.warning(
            "gateway.processing_concurrency = %d on SQLite: the loops take turns on its"
            " single writer, so this only helps on PostgreSQL",
            processing.concurrency,
        )
    return processing, outbox_worker, sender


def _imap_options(a: ImapAccountConfig) -> ImapAccountOptions:
    from gateway.transports.imap import ImapAccountOptions

    context = ssl.create_default_context(cafile=str(a.tls_ca_file)) if a.tls_ca_file else None
    return ImapAccountOptions(
        name=a.name,
        host=a.host,
        port=a.port,
        tls=a.tls,
        username=a.username,
        password=a.password,
        recipient=normalise(a.recipient),
        mailbox=a.mailbox,
        processed_folder=a.processed_folder,
        failed_folder=a.failed_folder,
        mark_seen=a.mark_seen,
        use_idle=a.use_idle,
        poll_interval_seconds=a.poll_interval_seconds,
        liveness_interval_seconds=a.liveness_interval_seconds,
        reconnect_max_seconds=a.reconnect_max_seconds,
        ssl_context=context,
    )
