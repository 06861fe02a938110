"""CI smoke of the benchmark (issue 5): ``python -m bench run --quick`` end to end.

It starts the real daemon from its CLI with a config file, the sink relay and the
ceiling server on 127.0.0.1, sends 20 invitations and 20 replies over SMTP, and must
find every outcome as expected: each invitation applied and answered at the sink
exactly once, each reply applied to the organiser copy, nothing else sent, and a clean
SIGTERM shutdown.  Timings are printed by the bench but never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bench_verifies_every_outcome_and_reply(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = proc.stdout[-6000:] + "\n" + proc.stderr[-4000:]
    assert out.exists(), f"the bench wrote no JSON report (exit {proc.returncode}):\n{report}"
    result = json.loads(out.read_text())
    failed = [r for r in result["rows"] if not r["correct"]]
    assert not failed, "correctness checks failed:\n" + "\n".join(
        f"{r['scenario']}: {'; '.join(r['notes'])}" for r in failed
    )
    scenarios = [r["scenario"] for r in result["rows"]]
    assert any(s.startswith("1. REQUEST") for s in scenarios), report
    assert any(s.startswith("2. REPLY") for s in scenarios), report
    by_name = {r["scenario"][:2]: r for r in result["rows"]}
    assert by_name["1."]["msgs"] == 20
    assert by_name["2."]["msgs"] == 20
    assert result["correct"] is True
    assert proc.returncode == 0, report
