"""Every real client mail of ``tests/data/corpus/`` through ``imip-gateway ingest``.

The ``.eml`` files are complete messages written by real clients (licences in
``tests/data/corpus/ORIGIN.md``).  Each goes through the same path as a delivery
(journal, extraction, engine) with every address that appears in the corpus configured
as a local user, so the gateway acts on whichever role the file calls for.  Each must
give at least one outcome that is not an error, and the command must exit 0.  Files
are ingested in name order into one database, so a REPLY may find the event an
earlier file created.
"""

from __future__ import annotations

import json
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from tests.e2e.support import User, cli, write_config

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
FILES = sorted(CORPUS.rglob("*.eml"))

# Outcomes that mean the gateway could not make sense of the message at all.
ERRORS = {"quarantined-invalid", "error", "failed"}

_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def addresses_in(path: Path) -> set[str]:
    """Every mail address in the headers and decoded text parts of one message."""
    msg = message_from_bytes(path.read_bytes(), policy=policy.compat32)
    texts = [str(value) for _, value in msg.items()]
    for part in msg.walk():
        if part.is_multipart():
            continue
        for _, value in part.items():
            texts.append(str(value))
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            texts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    # Unfold iCalendar lines first: an address may be split across a fold.
    joined = "\n".join(texts).replace("\r\n ", "").replace("\n ", "").replace("\n\t", "")
    found = set()
    for match in _ADDRESS.findall(joined):
        address = match.lower().strip(".")
        if "." in address.rpartition("@")[2]:
            found.add(address)
    return found


def test_the_corpus_has_eml_files() -> None:
    assert FILES, f"no .eml files under {CORPUS}"


@pytest.fixture(scope="module")
def corpus_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    addresses = sorted(set().union(*(addresses_in(p) for p in FILES)))
    users = [User(a, "accept") for a in addresses]
    directory = tmp_path_factory.mktemp("corpus")
    # No daemon: ingest opens the database itself; the relay is never contacted.
    return write_config(directory, hostname="corpus.gw.test", users=users, relay_port=9)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_corpus_file_gives_a_sensible_outcome(corpus_config: Path, path: Path) -> None:
    result = cli(corpus_config, "ingest", "--json", str(path), expect=None)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    outcomes = report["outcomes"]
    for o in outcomes:
        print(
            f"{path.relative_to(CORPUS)} | {o['recipient'] or '-'} | {o['method'] or '-'}"
            f" | {o['component'] or '-'} | {o['outcome']} | {o['reason']}"
        )
    assert outcomes, "no outcome at all"
    assert [o for o in outcomes if o["outcome"] not in ERRORS], outcomes
