"""gateway.mime.dsn: RFC 3464 reports mapped to original Message-ID and recipients."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import compat32
from pathlib import Path

from gateway.mime.dsn import parse_dsn
from gateway.mime.extract import extract

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"

POSTFIX_STYLE = b"""Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mx.example.org>
To: organiser@example.org
Subject: Delivery Status Notification
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="R"
Message-Id: <bounce-1@mx.example.org>

--R
Content-Type: text/plain

Your message could not be delivered.

--R
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
Arrival-Date: Sat, 21 Nov 2026 19:13:31 +0000

Final-Recipient: rfc822; Gone@Remote.example
Original-Recipient: rfc822;gone@remote.example
Action: failed
Status: 5.1.1
Remote-MTA: dns; in.remote.example
Diagnostic-Code: smtp; 550 5.1.1 <gone@remote.example>: Recipient address
    rejected: User unknown

Final-Recipient: rfc822; slow@other.example
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to other.example: Connection timed out

--R
Content-Type: text/rfc822-headers

From: organiser@example.org
To: gone@remote.example, slow@other.example
Subject: Invitation: Review
Message-ID: <imip-42@example.org>

--R--
"""


def _msg(raw: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(raw, policy=compat32)


def test_postfix_style_report_maps_recipients_and_original_message_id() -> None:
    report = parse_dsn(_msg(POSTFIX_STYLE))
    assert report is not None
    assert report.reporting_mta == "mx.example.org"
    assert report.original_message_id == "<imip-42@example.org>"
    assert report.original_subject == "Invitation: Review"
    first, second = report.recipients
    assert first.final_recipient == "gone@remote.example"
    assert first.action == "failed"
    assert first.status == "5.1.1"
    assert "User unknown" in first.diagnostic
    assert first.remote_mta == "in.remote.example"
    assert first.permanent_failure
    assert second.final_recipient == "slow@other.example"
    assert second.action == "delayed"
    assert second.status == "4.4.1"
    assert not second.permanent_failure
    assert report.failed() == (first,)


def test_extraction_carries_the_dsn_and_flags_the_bounce() -> None:
    ex = extract(POSTFIX_STYLE.replace(b"\n", b"\r\n"))
    assert ex.is_bounce
    assert ex.dsn is not None
    assert ex.dsn.original_message_id == "<imip-42@example.org>"
    assert ex.auto_submitted == "auto-replied"
    assert ex.parts == ()


def test_corpus_bounce_with_returned_imip_request_is_not_an_imip_message() -> None:
    raw = (CORPUS / "misc" / "dsn-bounce-with-calendarserver-request.eml").read_bytes()
    ex = extract(raw)
    # The returned message holds METHOD:REQUEST; it must not be processed as iTIP.
    assert b"METHOD:REQUEST" in raw
    assert ex.parts == ()
    assert ex.problems == ()
    assert ex.is_bounce
    assert ex.dsn is not None
    assert ex.dsn.original_message_id == "<20080812191939.51369.1538816694.0@plugh.example.com>"
    (rcpt,) = ex.dsn.recipients
    assert rcpt.final_recipient == "nonexistant@example.com"
    assert rcpt.action == "failed"
    assert rcpt.status == "5.0.0"
    assert "5.1.1 unknown or illegal alias" in rcpt.diagnostic


def test_status_code_taken_from_diagnostic_when_status_field_is_junk() -> None:
    raw = POSTFIX_STYLE.replace(b"Status: 5.1.1", b"Status: failed")
    report = parse_dsn(_msg(raw))
    assert report is not None
    assert report.recipients[0].status == "5.1.1"


def test_ordinary_mail_is_not_a_report() -> None:
    raw = b"From: a@example.org\nTo: b@example.org\nSubject: hi\n\nbody\n"
    assert parse_dsn(_msg(raw)) is None
    assert not extract(raw).is_bounce


def test_report_with_every_returned_message_id_listed() -> None:
    raw = POSTFIX_STYLE.replace(
        b"Message-ID: <imip-42@example.org>",
        b"Message-Id: <added-by-mta@example.org>\nMessage-ID: <imip-42@example.org>",
    )
    report = parse_dsn(_msg(raw))
    assert report is not None
    assert report.original_message_ids == ("<added-by-mta@example.org>", "<imip-42@example.org>")


def test_report_without_returned_headers_still_lists_recipients() -> None:
    raw = POSTFIX_STYLE.split(b"--R\nContent-Type: text/rfc822-headers")[0] + b"--R--\n"
    report = parse_dsn(_msg(raw))
    assert report is not None
    assert report.original_message_id is None
    assert len(report.recipients) == 2
