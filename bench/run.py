"""The benchmark of issue 5: the gateway end to end against the raw SMTP ceiling.

``python -m bench run [--quick] [--db sqlite|postgresql] [--all] [--json FILE]``

Every scenario drives the real daemon (``imip-gateway --config FILE serve``, started
as an operator would) with the same load generator, and divides its throughput by the
**ceiling** -- a do-nothing aiosmtpd server in its own process -- measured in the same
run on the same messages, N and C.  While it measures it checks correctness: every
message journaled once with the expected outcome, every expected reply at the sink
exactly once (In-Reply-To matched to the Message-ID sent), no unexpected mail, and on
the organiser side each attendee's PARTSTAT as replied.

Throughput of a gateway phase is end to end: messages / (first MAIL FROM -> the last
reply accepted by the sink, or the last journal row finished when no mail goes out).
CPU per message is the daemon's utime+stime over that interval / messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import messages as msgs
from bench.daemon import DaemonError, GatewayConfig, RunningDaemon, bench_postgres
from bench.dbcheck import JournalView
from bench.loadgen import prepare
from bench.messages import BenchMessage, EventSpec
from bench.preload import bulk_clone, submit_events
from bench.procstat import cpu_seconds, descendants
from bench.sink import read_records

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


# --- results -------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What the load generator reports for one batch."""

    start: float
    end: float
    sent: list[tuple[str, float, float, str]]  # message-id, MAIL FROM at, 250 at, reply
    unsent: int
    errors: list[str]
    client_cpu: float

    @property
    def accepted(self) -> list[tuple[str, float, float, str]]:
        return [s for s in self.sent if s[3].startswith("250")]

    @property
    def intake_rate(self) -> float:
        acc = self.accepted
        if not acc:
            return 0.0
        return len(acc) / max(1e-9, max(s[2] for s in acc) - self.start)


@dataclass
class Row:
    """One line of the result table."""

    scenario: str
    db: str
    msgs: int
    msg_s: float = 0.0
    ceiling_msg_s: float = 0.0
    ratio: float | None = None  # the measure compared with the target
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    cpu_us: float | None = None
    correct: bool = True
    target: str = ""
    passed: bool | None = None  # None: informational (quick mode, no target)
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        if not self.correct:
            return "FAIL(correctness)"
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "FAIL"


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


# --- processes -----------------------------------------------------------------------


class ServerProcess:
    """``python -m bench.ceiling|bench.sink`` in its own process; reads its READY port."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"{module} did not start: {line!r} {err}")
        self.port = int(line.split()[1])

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run_load(
    workdir: Path,
    port: int,
    batch: Sequence[BenchMessage],
    connections: int,
    *,
    rate: float = 0.0,
    time_limit: float = 900.0,
) -> LoadResult:
    """Run ``bench.loadgen`` in its own process against 127.0.0.1:``port``."""
    tag = uuid.uuid4().hex[:8]
    pickled = workdir / f"load-{tag}.pickle"
    out = workdir / f"load-{tag}.json"
    job = workdir / f"load-{tag}.job.json"
    with open(pickled, "wb") as fh:
        pickle.dump([prepare(m.mail_from, m.rcpt_to, m.message_id, m.data) for m in batch], fh)
    job.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": port,
                "connections": connections,
                "rate": rate,
                "time_limit": time_limit,
                "messages": str(pickled),
                "out": str(out),
            }
        )
    )
    subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(job)],
        cwd=ROOT,
        check=True,
        timeout=time_limit + 120,
    )
    data = json.loads(out.read_text())
    for path in (pickled, out, job):
        path.unlink(missing_ok=True)
    return LoadResult(
        start=data["start"],
        end=data["end"],
        sent=[tuple(s) for s in data["sent"]],
        unsent=data["unsent"],
        errors=data["errors"],
        client_cpu=data["client_cpu"],
    )


# --- the ceiling ---------------------------------------------------------------------


@dataclass
class CeilingResult:
    msg_s: float
    cpu_us: float
    p50_ms: float | None
    p99_ms: float | None
    runs: list[float]


def measure_ceiling(
    workdir: Path, batch: Sequence[BenchMessage], connections: int, repeat: int
) -> CeilingResult:
    """Median of ``repeat`` runs of the do-nothing server on exactly ``batch``."""
    server = ServerProcess("bench.ceiling")
    try:
        run_load(workdir, server.port, batch[: min(50, len(batch))], connections)  # warm-up
        rates, cpus, lat = [], [], []
        for _ in range(repeat):
            cpu0 = server.cpu()
            res = run_load(workdir, server.port, batch, connections)
            cpus.append((server.cpu() - cpu0) / max(1, len(res.accepted)) * 1e6)
            rates.append(res.intake_rate)
            lat = [(s[2] - s[1]) * 1000 for s in res.accepted]
        k = rates.index(statistics.median_low(rates))
        return CeilingResult(rates[k], cpus[k], _pct(lat, 0.5), _pct(lat, 0.99), rates)
    finally:
        server.stop()


# --- a gateway session ---------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    sent: int
    accepted: int
    msg_s: float
    intake_msg_s: float
    cpu_us: float
    p50_ms: float | None
    p99_ms: float | None
    peak_rss_mb: float
    start: float
    done: float
    correct: bool
    problems: list[str]
    client_cpu_us: float
    sink_cpu_us: float
    notes: list[str] = field(default_factory=list)


class Session:
    """One daemon on one database with its sink; phases run one after another."""

    def __init__(
        self,
        workdir: Path,
        database_url: str = "",
        *,
        log_level: str = "WARNING",
        profile_dir: Path | None = None,
        processing_process: bool = True,
    ) -> None:
        self.workdir = workdir
        self.sink_file = workdir / "sink.jsonl"
        self.sink = ServerProcess("bench.sink", str(self.sink_file))
        self.config = GatewayConfig(
            workdir,
            relay_port=self.sink.port,
            database_url=database_url,
            log_level=log_level,
            processing_process=processing_process,
        )
        self.config.write()
        upgrade = self.config.cli("db", "upgrade")
        if upgrade.returncode != 0:
            self.sink.stop()
            raise DaemonError(f"imip-gateway db upgrade failed:\n{upgrade.stderr}")
        self.daemon: RunningDaemon | None = None
        self.view = JournalView(self.config.database_url)
        self.sink_seen = 0
        self.profile_dir = profile_dir
        self.db_pid = _postmaster_pid(self.config.database_url)

    @property
    def url(self) -> str:
        return self.config.database_url

    def start(self) -> None:
        self.daemon = RunningDaemon(self.config).start()

    def close(self) -> int | None:
        status = None
        try:
            if self.daemon is not None:
                status = self.daemon.stop()
        finally:
            self.view.close()
            self.sink.stop()
        return status

    def _new_sink_records(self) -> list[dict[str, Any]]:
        records = read_records(str(self.sink_file))
        new = records[self.sink_seen :]
        self.sink_seen = len(records)
        return new

    def _cpu_by_process(self) -> dict[int, float]:
        """CPU seconds of serve and of each process it started, each alone, by pid."""
        assert self.daemon is not None
        return {pid: cpu_seconds(pid, tree=False) for pid in descendants(self.daemon.pid)}

    @contextlib.contextmanager
    def _profiled(self, name: str) -> Iterator[None]:
        if self.profile_dir is None or self.daemon is None:
            yield
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        # One py-spy per process: serve (NAME.txt) and its processing process
        # (NAME.processing.txt, gateway.processing_process); py-spy's own
        # --subprocesses does not follow a child started before it attached.
        procs = []
        for i, pid in enumerate(descendants(self.daemon.pid)):
            out = self.profile_dir / (f"{name}.txt" if i == 0 else f"{name}.processing.txt")
            procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--output",
                        str(out),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # let py-spy attach before the load starts
        try:
            yield
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def phase(
        self,
        name: str,
        batch: Sequence[BenchMessage],
        connections: int,
        *,
        expect_reply: bool,
        rate: float = 0.0,
        settle_timeout: float = 120.0,
    ) -> PhaseResult:
        """Send ``batch``, wait until it is all processed (and answered), check, measure."""
        assert self.daemon is not None
        base_id = self.view.max_id()
        self._new_sink_records()  # whatever arrived before this phase is not ours
        problems: list[str] = []
        notes: list[str] = []
        with self._profiled(name):
            cpu0, sink0 = self.daemon.cpu(), self.sink.cpu()
            own0 = self._cpu_by_process()
            db0 = cpu_seconds(self.db_pid) if self.db_pid else 0.0
            res = run_load(self.workdir, self.config.smtp_port, batch, connections, rate=rate)
            accepted = res.accepted
            if res.unsent or len(accepted) != len(batch):
                refused = Counter(s[3][:40] for s in res.sent if not s[3].startswith("250"))
                problems.append(
                    f"{len(batch) - len(accepted)} of {len(batch)} not accepted"
                    f" (unsent {res.unsent}, replies {dict(refused)}, errors {res.errors[:2]})"
                )
            sent_ids = {s[0] for s in accepted}
            records: list[dict[str, Any]] = []
            deadline = time.time() + settle_timeout + (res.end - res.start) * 5
            answered: set[str] = set()
            while time.time() < deadline:
                finished = self.view.finished_since(base_id)
                if expect_reply:
                    for rec in self._new_sink_records():
                        records.append(rec)
                        if rec["irt"] in sent_ids:
                            answered.add(rec["irt"])
                    if finished >= len(accepted) and len(answered) >= len(sent_ids):
                        break
                elif finished >= len(accepted):
                    break
                time.sleep(0.1)
            else:
                problems.append("timed out waiting for processing/replies")
            cpu1, sink1 = self.daemon.cpu(), self.sink.cpu()
            own1 = self._cpu_by_process()
            if self.db_pid:
                db_us = (cpu_seconds(self.db_pid) - db0) / max(1, len(accepted)) * 1e6
                notes.append(f"PostgreSQL server CPU {db_us:.0f} us/msg (not in us/msg)")
        time.sleep(0.3 if expect_reply else 0.5)  # late duplicates would show up here
        records.extend(self._new_sink_records())

        # -- correctness ------------------------------------------------------------
        check = self.view.check(base_id, [m.message_id for m in batch])
        if not check.ok:
            problems.append(f"journal: {check.describe()}")
        t250 = {s[0]: s[2] for s in accepted}
        smtp_ms = [(s[2] - s[1]) * 1000 for s in accepted]
        notes.append(
            f"SMTP transaction (MAIL FROM -> 250 after DATA) p50 {_pct(smtp_ms, 0.5) or 0:.1f}"
            f" / p99 {_pct(smtp_ms, 0.99) or 0:.1f} ms"
        )
        if expect_reply:
            per_irt = Counter(r["irt"] for r in records)
            missing = [mid for mid in sent_ids if per_irt[mid] == 0]
            twice = [mid for mid in sent_ids if per_irt[mid] > 1]
            stray = [r for r in records if r["irt"] not in sent_ids]
            if missing:
                problems.append(f"sink: {len(missing)} replies missing (e.g. {missing[0]})")
            if twice:
                problems.append(f"sink: {len(twice)} replies arrived twice (e.g. {twice[0]})")
            if stray:
                problems.append(f"sink: {len(stray)} unexpected messages (e.g. {stray[0]})")
            first_arrival: dict[str, float] = {}
            for r in records:
                if r["irt"] in t250:
                    first_arrival.setdefault(r["irt"], r["t"])
            latencies = [(first_arrival[m] - t250[m]) * 1000 for m in first_arrival]
            peers = {r.get("peer") for r in records}
            notes.append(f"relay connections used: {len(peers)} for {len(records)} messages")
            done = max(first_arrival.values(), default=res.end)
        else:
            if records:
                problems.append(f"sink: {len(records)} messages sent, none expected")
            processed = self.view.processed_at(base_id)
            stamps = {m: processed[m].timestamp() for m in t250 if m in processed}
            latencies = [(stamps[m] - t250[m]) * 1000 for m in stamps]
            done = max(stamps.values(), default=res.end)
            problems.extend(self._check_partstats(batch))
        done = max(done, max((s[2] for s in accepted), default=res.end))
        n = max(1, len(accepted))
        notes.append(_process_split(self.daemon.pid, own0, own1, n, done - res.start))
        peak = self.daemon.sampler.between(res.start, done + 1) if self.daemon.sampler else []
        return PhaseResult(
            name=name,
            sent=len(batch),
            accepted=len(accepted),
            msg_s=len(accepted) / max(1e-9, done - res.start),
            intake_msg_s=res.intake_rate,
            cpu_us=(cpu1 - cpu0) / n * 1e6,
            p50_ms=_pct(latencies, 0.5),
            p99_ms=_pct(latencies, 0.99),
            peak_rss_mb=max([*peak, self.daemon.rss_kb()[0]]) / 1024,
            start=res.start,
            done=done,
            correct=not problems,
            problems=problems,
            client_cpu_us=res.client_cpu / n * 1e6,
            sink_cpu_us=(sink1 - sink0) / n * 1e6,
            notes=notes,
        )

    def _check_partstats(self, batch: Sequence[BenchMessage]) -> list[str]:
        replies = [m for m in batch if m.kind == "reply"]
        if not replies:
            return []
        states = self.view.partstats(m.uid for m in replies)
        series = {(u, addr): p for (u, key, addr), p in states.items() if key == ""}
        per_instance: dict[tuple[str, str], list[str]] = {}
        for (u, key, addr), p in states.items():
            if key:
                per_instance.setdefault((u, addr), []).append(p)
        wrong = []
        for m in replies:
            if m.instance:
                ok = m.partstat in per_instance.get((m.uid, m.attendee), [])
            else:
                ok = series.get((m.uid, m.attendee)) == m.partstat
            if not ok:
                wrong.append(m)
        if wrong:
            m = wrong[0]
            return [
                f"organiser copy: {len(wrong)} replies not reflected (e.g. {m.attendee}"
                f" {m.partstat} on {m.uid} instance {m.instance})"
            ]
        return []


def _postmaster_pid(url: str) -> int | None:
    """The PostgreSQL server's main process (its tree holds every backend), if local."""
    if not url.startswith("postgresql"):
        return None
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        pid_file = Path(str(row[0]) if row else "") / "postmaster.pid"
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, psycopg.Error):
        return None


# --- the scenarios -------------------------------------------------------------------


@dataclass
class Options:
    n: int
    connections: int
    quick: bool
    dbs: list[str]
    long_n: int
    latency_n: int
    stored: tuple[int, int] | None
    ceiling_repeat: int
    json_path: Path | None
    keep: bool
    profile_dir: Path | None
    log_level: str
    processing_process: bool = True
    mix: tuple[tuple[EventSpec, int], ...] = msgs.REQUEST_MIX


def _session_url(db: str, pg_base: str | None, name: str) -> str:
    if db == "sqlite":
        return ""
    assert pg_base is not None
    import psycopg

    dsn = pg_base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_base.rsplit("/", 1)[0] + f"/{name}"


def _row_from(
    phase: PhaseResult, scenario: str, db: str, ceiling: CeilingResult | None, target: str
) -> Row:
    row = Row(
        scenario=scenario,
        db=db,
        msgs=phase.accepted,
        msg_s=phase.msg_s,
        ceiling_msg_s=ceiling.msg_s if ceiling else 0.0,
        ratio=phase.msg_s / ceiling.msg_s if ceiling and ceiling.msg_s else None,
        p50_ms=phase.p50_ms,
        p99_ms=phase.p99_ms,
        peak_rss_mb=phase.peak_rss_mb,
        cpu_us=phase.cpu_us,
        correct=phase.correct,
        target=target,
    )
    row.notes.extend(phase.problems)
    row.notes.extend(phase.notes)
    row.notes.append(
        f"intake {phase.intake_msg_s:.0f} msg/s; client {phase.client_cpu_us:.0f} us/msg,"
        f" sink {phase.sink_cpu_us:.0f} us/msg"
    )
    return row


def _process_split(
    serve: int, before: dict[int, float], after: dict[int, float], n: int, seconds: float
) -> str:
    """Which process the daemon's CPU went to, and how busy each was (of one core).

    Matched by pid, so a processing process restarted during the phase counts from
    zero.  A process well under 100% while the phase has a backlog is waiting (for the
    SQLite write lock, or for the other process), not computing.
    """
    parts = []
    for pid, total in after.items():
        if pid == serve:
            name = "intake (serve)" if len(after) > 1 else "serve (one process)"
        else:
            name = "processing"
        used = max(0.0, total - before.get(pid, 0.0))
        parts.append(f"{name} {used / n * 1e6:.0f} us/msg, {used / max(1e-9, seconds):.0%} busy")
    return "daemon CPU by process: " + "; ".join(parts)


def run_all(opts: Options) -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="imip-bench-"))
    rows: list[Row] = []
    now = msgs.now_utc()
    run_tag = uuid.uuid4().hex[:6]
    try:
        # The workloads (the same bytes go to the ceiling and to every gateway).
        req_batch = msgs.request_workload(opts.n, run_id=f"{run_tag}-req", now=now, mix=opts.mix)
        req_warm = msgs.request_workload(20, run_id=f"{run_tag}-reqw", now=now)
        reply_batch, reply_events = msgs.reply_workload(opts.n, run_id=f"{run_tag}-rep", now=now)
        reply_warm, warm_events = msgs.reply_workload(20, run_id=f"{run_tag}-repw", now=now)
        sizes = [len(m.data) for m in req_batch]
        print(
            f"# workload: {opts.n} invitations (mean {statistics.mean(sizes) / 1024:.1f} KB,"
            f" median {statistics.median(sizes) / 1024:.1f} KB), {opts.n} replies, "
            f"{opts.connections} connections; work dir {base}",
            flush=True,
        )

        print("# ceiling: raw aiosmtpd, same messages ...", flush=True)
        cdir = base / "ceiling"
        cdir.mkdir()
        ceil_req = measure_ceiling(cdir, req_batch, opts.connections, opts.ceiling_repeat)
        ceil_rep = measure_ceiling(cdir, reply_batch, opts.connections, opts.ceiling_repeat)
        for label, c in (("REQUEST mix", ceil_req), ("REPLY mix", ceil_rep)):
            rows.append(
                Row(
                    scenario=f"ceiling: do-nothing aiosmtpd, {label}",
                    db="-",
                    msgs=opts.n,
                    msg_s=c.msg_s,
                    ceiling_msg_s=c.msg_s,
                    ratio=1.0,
                    p50_ms=c.p50_ms,
                    p99_ms=c.p99_ms,
                    cpu_us=c.cpu_us,
                    target="(reference)",
                    notes=[f"runs: {', '.join(f'{r:.0f}' for r in c.runs)} msg/s"],
                )
            )

        pg_ctx: contextlib.AbstractContextManager[str | None] = contextlib.nullcontext(None)
        if "postgresql" in opts.dbs:
            pg_ctx = bench_postgres()
        with pg_ctx as pg_base:
            for db in opts.dbs:
                rows.extend(
                    _main_session(
                        opts,
                        base,
                        db,
                        pg_base,
                        run_tag,
                        now,
                        req_batch,
                        req_warm,
                        reply_batch,
                        reply_events,
                        reply_warm,
                        warm_events,
                        ceil_req,
                        ceil_rep,
                    )
                )
            if opts.stored is not None:
                rows.append(_stored_scenario(opts, base, pg_base, run_tag, now))
    finally:
        if opts.keep:
            print(f"# kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def _daemon_failed(
    db: str, notes: list[str], *, scenario: str = "gateway session", target: str = "daemon runs"
) -> Row:
    """The row saying the daemon itself failed (start-up, mid-run or exit), with why."""
    return Row(
        scenario=f"{scenario} ({db})",
        db=db,
        msgs=0,
        correct=False,
        target=target,
        passed=False,
        notes=notes,
    )


def _main_session(
    opts: Options,
    base: Path,
    db: str,
    pg_base: str | None,
    run_tag: str,
    now: Any,
    req_batch: list[BenchMessage],
    req_warm: list[BenchMessage],
    reply_batch: list[BenchMessage],
    reply_events: dict[EventSpec, int],
    reply_warm: list[BenchMessage],
    warm_events: dict[EventSpec, int],
    ceil_req: CeilingResult,
    ceil_rep: CeilingResult,
) -> list[Row]:
    rows: list[Row] = []
    wdir = base / f"gw-{db}"
    wdir.mkdir()
    url = _session_url(db, pg_base, f"bench_{run_tag}_main")
    try:
        session = Session(
            wdir,
            url,
            log_level=opts.log_level,
            profile_dir=opts.profile_dir,
            processing_process=opts.processing_process,
        )
    except DaemonError as exc:
        return [_daemon_failed(db, [str(exc)])]
    tr = {"sqlite": (0.40, 0.60), "postgresql": (0.25, 0.40)}[db]
    ratio_rows: list[Row] = []
    try:
        # Organiser events for the REPLY phases, stored before the daemon starts.
        n_1000 = opts.n if not opts.quick else 0
        reply5, _ = msgs.reply_workload(
            n_1000, run_id=f"{run_tag}-r5", now=now, mix=((EventSpec(5), 1),)
        )
        reply1000, _ = msgs.reply_workload(
            n_1000, run_id=f"{run_tag}-r1000", now=now, mix=((EventSpec(1000), 1),)
        )
        t0 = time.time()
        plan = [
            (f"{run_tag}-rep", reply_events),
            (f"{run_tag}-repw", warm_events),
            (f"{run_tag}-r5", {EventSpec(5): -(-n_1000 // 5)} if n_1000 else {}),
            (f"{run_tag}-r1000", {EventSpec(1000): -(-n_1000 // 1000)} if n_1000 else {}),
        ]
        stored = sum(
            submit_events(session.config.path, session.url, rid, list(ev.items()), now)
            for rid, ev in plan
        )
        print(
            f"# [{db}] {stored} organiser events stored in {time.time() - t0:.1f}s;"
            " starting the daemon",
            flush=True,
        )
        session.start()

        def phase(name: str, batch: list[BenchMessage], **kw: Any) -> PhaseResult:
            print(f"# [{db}] phase {name}: {len(batch)} messages ...", flush=True)
            res = session.phase(name, batch, opts.connections, **kw)
            print(
                f"#   {res.msg_s:.0f} msg/s end to end, intake {res.intake_msg_s:.0f} msg/s,"
                f" daemon {res.cpu_us:.0f} us/msg, p99 {res.p99_ms or 0:.1f} ms,"
                f" {'ok' if res.correct else 'PROBLEMS: ' + '; '.join(res.problems)}",
                flush=True,
            )
            return res

        phase("warm-up (requests)", req_warm, expect_reply=True)
        phase("warm-up (replies)", reply_warm, expect_reply=False)

        req = phase("request", req_batch, expect_reply=True)
        row = _row_from(
            req, "1. REQUEST in -> auto-accept -> REPLY at sink", db, ceil_req, f">= {tr[0]}"
        )
        ratio_rows.append(row)
        rows.append(row)

        rep = phase("reply", reply_batch, expect_reply=False)
        row = _row_from(rep, "2. REPLY in -> aggregated (no mail out)", db, ceil_rep, f">= {tr[1]}")
        ratio_rows.append(row)
        rows.append(row)
        for r, t in zip(ratio_rows, tr, strict=True):
            r.passed = None if opts.quick or r.ratio is None else r.ratio >= t
            if db == "postgresql":
                r.scenario = "3. " + r.scenario[3:]

        if not opts.quick and db == "sqlite":
            r5 = phase("reply to 5-attendee events", reply5, expect_reply=False)
            r1000 = phase("reply to 1000-attendee events", reply1000, expect_reply=False)
            cost = r1000.cpu_us / max(1e-9, r5.cpu_us)
            rows.append(
                Row(
                    scenario="4. REPLY cost, 1000-attendee vs 5-attendee event",
                    db=db,
                    msgs=r1000.accepted + r5.accepted,
                    msg_s=r1000.msg_s,
                    ratio=cost,
                    p50_ms=r1000.p50_ms,
                    p99_ms=r1000.p99_ms,
                    peak_rss_mb=max(r1000.peak_rss_mb, r5.peak_rss_mb),
                    cpu_us=r1000.cpu_us,
                    correct=r5.correct and r1000.correct,
                    target="<= 1.3x",
                    passed=cost <= 1.3,
                    notes=[
                        f"5-attendee: {r5.msg_s:.0f} msg/s, {r5.cpu_us:.0f} us/msg;"
                        f" 1000-attendee: {r1000.msg_s:.0f} msg/s, {r1000.cpu_us:.0f} us/msg;"
                        f" throughput ratio {r1000.msg_s / max(1e-9, r5.msg_s):.2f}",
                        *r5.problems,
                        *r1000.problems,
                    ],
                )
            )

            half = req.msg_s / 2
            # About 30 s of traffic at that rate (at least 200 messages, at most N).
            lat_n = min(opts.latency_n, max(200, int(half * 30)))
            lat_batch = msgs.request_workload(lat_n, run_id=f"{run_tag}-lat", now=now, mix=opts.mix)
            lat = phase(f"latency at {half:.0f} msg/s", lat_batch, expect_reply=True, rate=half)
            rows.append(
                Row(
                    scenario=f"7. p99 end of DATA -> reply at sink, at {half:.0f} msg/s",
                    db=db,
                    msgs=lat.accepted,
                    msg_s=lat.msg_s,
                    ratio=lat.p99_ms,
                    p50_ms=lat.p50_ms,
                    p99_ms=lat.p99_ms,
                    peak_rss_mb=lat.peak_rss_mb,
                    cpu_us=lat.cpu_us,
                    correct=lat.correct,
                    target="p99 <= 50 ms",
                    passed=lat.p99_ms is not None and lat.p99_ms <= 50,
                    notes=[
                        f"half of scenario 1's {req.msg_s:.0f} msg/s",
                        *lat.problems,
                        *lat.notes,
                    ],
                )
            )

            long_batch = msgs.request_workload(
                opts.long_n, run_id=f"{run_tag}-long", now=now, mix=opts.mix
            )
            long = phase("long run (RSS)", long_batch, expect_reply=True)
            rows.append(_rss_row(session, long, db))
    except DaemonError as exc:
        rows.append(_daemon_failed(db, [str(exc)]))
    finally:
        status = session.close()
        if status not in (0, None):
            for r in rows:
                r.correct = False
                r.notes.append(f"daemon exit status {status} after SIGTERM (expected 0)")
            tail = session.daemon.log_tail() if session.daemon else ""
            rows.append(
                _daemon_failed(
                    db,
                    [f"exit status {status}", tail],
                    scenario="daemon shutdown",
                    target="exit 0 on SIGTERM",
                )
            )
    return rows


def _rss_row(session: Session, long: PhaseResult, db: str) -> Row:
    assert session.daemon is not None
    assert session.daemon.sampler is not None
    span = long.done - long.start
    samples = session.daemon.sampler.between(long.start, long.done + 1)
    early = session.daemon.sampler.between(long.start + 0.1 * span, long.start + 0.2 * span)
    late = session.daemon.sampler.between(long.done - 0.1 * span, long.done + 1)
    start_kb = statistics.median(early) if early else (samples[0] if samples else 0)
    end_kb = statistics.median(late) if late else (samples[-1] if samples else 0)
    growth = (end_kb - start_kb) / start_kb * 100 if start_kb else 0.0
    peak = max([*samples, session.daemon.sampler.peak_hwm_kb]) / 1024
    return Row(
        scenario=f"6. daemon RSS over {long.accepted} messages",
        db=db,
        msgs=long.accepted,
        msg_s=long.msg_s,
        ratio=growth,
        p50_ms=long.p50_ms,
        p99_ms=long.p99_ms,
        peak_rss_mb=peak,
        cpu_us=long.cpu_us,
        correct=long.correct,
        target="<= 150 MB, growth < 10%",
        passed=peak <= 150 and growth < 10,
        notes=[
            f"RSS {start_kb / 1024:.1f} MB at 10-20% of the run -> {end_kb / 1024:.1f} MB at"
            f" the end ({growth:+.1f}%), peak (VmHWM) {peak:.1f} MB",
            *long.problems,
        ],
    )


def _stored_scenario(opts: Options, base: Path, pg_base: str | None, run_tag: str, now: Any) -> Row:
    """Scenario 5: REPLY throughput with few vs many stored events (same load)."""
    small, large = opts.stored or (10_000, 100_000)
    db = opts.dbs[0]
    results: list[PhaseResult] = []
    spec = EventSpec(5)
    for count in (small, large):
        wdir = base / f"stored-{count}"
        wdir.mkdir()
        url = _session_url(db, pg_base, f"bench_{run_tag}_s{count}")
        session = Session(
            wdir, url, log_level=opts.log_level, processing_process=opts.processing_process
        )
        try:
            rid = f"{run_tag}-st"
            batch, events = msgs.reply_workload(opts.n, run_id=rid, now=now, mix=((spec, 1),))
            warm, warm_ev = msgs.reply_workload(20, run_id=f"{rid}w", now=now, mix=((spec, 1),))
            t0 = time.time()
            submit_events(session.config.path, session.url, rid, list(events.items()), now)
            submit_events(session.config.path, session.url, f"{rid}w", list(warm_ev.items()), now)
            template = msgs.organiser_event_uid(rid, spec, 0)
            extra = max(0, count - sum(events.values()) - sum(warm_ev.values()))
            bulk_clone(session.url, template, extra, prefix=f"{rid}-bulk")
            print(
                f"# [{db}] {session.view.count_objects()} stored events ready in"
                f" {time.time() - t0:.1f}s (bulk copy); starting the daemon",
                flush=True,
            )
            session.start()
            session.phase("warm-up", warm, opts.connections, expect_reply=False)
            res = session.phase(
                f"reply with {count} stored", batch, opts.connections, expect_reply=False
            )
            print(f"#   {count} stored: {res.msg_s:.0f} msg/s, {res.cpu_us:.0f} us/msg", flush=True)
            results.append(res)
        finally:
            session.close()
    ratio = results[1].msg_s / max(1e-9, results[0].msg_s)
    return Row(
        scenario=f"5. REPLY throughput, {large} vs {small} stored events",
        db=db,
        msgs=results[1].accepted,
        msg_s=results[1].msg_s,
        ratio=ratio,
        p50_ms=results[1].p50_ms,
        p99_ms=results[1].p99_ms,
        peak_rss_mb=results[1].peak_rss_mb,
        cpu_us=results[1].cpu_us,
        correct=all(r.correct for r in results),
        target=">= 0.9x",
        passed=ratio >= 0.9,
        notes=[
            f"{small}: {results[0].msg_s:.0f} msg/s, {results[0].cpu_us:.0f} us/msg;"
            f" {large}: {results[1].msg_s:.0f} msg/s, {results[1].cpu_us:.0f} us/msg",
            *[p for r in results for p in r.problems],
        ],
    )


# --- output --------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(rows: Sequence[Row], *, quick: bool) -> None:
    header = (
        f"{'scenario':<55} {'db':<10} {'msgs':>6} {'msg/s':>7} {'ratio':>7} {'p50ms':>7}"
        f" {'p99ms':>7} {'RSS MB':>7} {'us/msg':>7} {'correct':>7}  {'target':<24} result"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = _f(r.ratio, ".2f")
        print(
            f"{r.scenario[:55]:<55} {r.db:<10} {r.msgs:>6} {r.msg_s:>7.0f} {ratio:>7}"
            f" {_f(r.p50_ms, '.1f'):>7} {_f(r.p99_ms, '.1f'):>7} {_f(r.peak_rss_mb, '.1f'):>7}"
            f" {_f(r.cpu_us, '.0f'):>7} {'yes' if r.correct else 'NO':>7}  {r.target:<24}"
            f" {r.verdict()}"
        )
    print()
    print("ratio: msg/s / ceiling msg/s (rows 1-3), us/msg 1000 / us/msg 5 (row 4), msg/s large /")
    print("small (row 5), RSS growth % (row 6), p99 ms (row 7).  us/msg: daemon CPU per message.")
    for r in rows:
        for note in r.notes:
            print(f"  - {r.scenario[:40]}: {note}")
    if quick:
        print("\nquick mode: correctness only (timings are not meaningful at this size).")


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark imip-gateway end to end against the raw aiosmtpd ceiling"
        " (issue 5).  Starts the ceiling, a sink relay and the real daemon on 127.0.0.1.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark and print the table")
    run.add_argument(
        "--quick",
        action="store_true",
        help="20 messages, 2 connections, SQLite: correctness smoke (< 60 s)",
    )
    run.add_argument("-n", "--messages", type=int, default=2000, help="messages per phase")
    run.add_argument("-c", "--connections", type=int, default=8)
    run.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    run.add_argument(
        "--all", action="store_true", help="SQLite and PostgreSQL, plus stored events 10k vs 100k"
    )
    run.add_argument("--long", action="store_true", help="RSS run with 100k messages")
    run.add_argument(
        "--long-messages",
        type=int,
        default=None,
        help="messages of the RSS run (default 5000, --long 100000)",
    )
    run.add_argument(
        "--stored",
        default=None,
        metavar="SMALL,LARGE",
        help="scenario 5 with these stored-event counts, e.g. 10000,100000",
    )
    run.add_argument("--big", action="store_true", help="scenario 5 with 10k vs 1M events")
    run.add_argument("--ceiling-repeat", type=int, default=3)
    run.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    run.add_argument("--keep", action="store_true", help="keep the work directory")
    run.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="attach py-spy to the daemon per phase; raw stacks into DIR",
    )
    run.add_argument("--log-level", default="WARNING", help="the daemon's logging.level")
    run.add_argument(
        "--one-process",
        action="store_true",
        help="run the daemon with gateway.processing_process = false (intake and"
        " processing in one process)",
    )
    run.add_argument(
        "--mix",
        choices=("realistic", "typical"),
        default="realistic",
        help="invitations: realistic = 60%% 5 / 20%% 50 / 5%% 200 attendees + 15%% weekly"
        " series with 10 overrides; typical = only 5-attendee single events (~5-8 KB)",
    )
    args = parser.parse_args(argv)
    stored: tuple[int, int] | None = None
    if args.stored:
        a, b = (int(x) for x in args.stored.split(","))
        stored = (a, b)
    elif args.big:
        stored = (10_000, 1_000_000)
    elif args.all:
        stored = (10_000, 100_000)
    n, c = (20, 2) if args.quick else (args.messages, args.connections)
    long_n = args.long_messages or (100_000 if args.long else 5000)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    return Options(
        n=n,
        connections=c,
        quick=args.quick,
        dbs=["sqlite", "postgresql"] if args.all else [args.db],
        long_n=long_n,
        latency_n=min(n, 3000),
        stored=None if args.quick else stored,
        ceiling_repeat=1 if args.quick else args.ceiling_repeat,
        json_path=args.json,
        keep=args.keep,
        profile_dir=args.profile,
        log_level=args.log_level,
        processing_process=not args.one_process,
        mix=((EventSpec(5), 1),) if args.mix == "typical" else msgs.REQUEST_MIX,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a correctness check failed, else 0.

    Missed timing targets do not change the exit status (timings are reported, never
    asserted); a wrong outcome, a lost or doubled reply, or an unclean shutdown does.
    """
    opts = _parse(argv)
    started = time.time()
    rows = run_all(opts)
    print_table(rows, quick=opts.quick)
    ok = all(r.correct for r in rows)
    print(
        f"\ncorrectness: {'all checks passed' if ok else 'FAILED'} ({time.time() - started:.0f}s)"
    )
    if opts.json_path is not None:
        opts.json_path.write_text(
            json.dumps(
                {
                    "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                    "messages": opts.n,
                    "connections": opts.connections,
                    "quick": opts.quick,
                    "correct": ok,
                    "rows": [asdict(r) | {"verdict": r.verdict()} for r in rows],
                },
                indent=2,
            )
        )
    return 0 if ok else 1
