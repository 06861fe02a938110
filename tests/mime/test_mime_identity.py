"""gateway.mime.identity: Authentication-Results read only from trusted authserv-ids."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import compat32

from gateway.domain.identity import AuthVerdict
from gateway.mime.extract import extract
from gateway.mime.identity import parse_authentication_results, sender_identity

# Shapes copied from real headers in ../shared/corpus (Gmail's mx.google.com with
# header.i=@domain and comments; a Postfix/OpenDKIM host with header.d/header.s/header.b).
GMAIL_STYLE = (
    "Authentication-Results: mx.google.com;\r\n"
    "       spf=pass (google.com: domain of bounces@calendar.example designates 17.151.1.98 "
    "as permitted sender) smtp.mail=bounces@calendar.example;\r\n"
    "       dkim=pass header.i=@calendar.example;\r\n"
    "       dmarc=pass (p=REJECT dis=NONE) header.from=calendar.example\r\n"
)
OPENDKIM_STYLE = (
    "Authentication-Results: mx.example.net;\r\n"
    "\tdkim=pass header.d=outlook.com header.s=selector1 header.b=Om6GTgV1;\r\n"
    "\tdmarc=pass (policy=none) header.from=outlook.com;\r\n"
    '\tarc=pass ("microsoft.com:s=arcselector9901:i=1");\r\n'
    "\tspf=pass smtp.mailfrom=p@outlook.com\r\n"
)


def raw_mail(headers: str, from_: str = "Pat <p@outlook.com>") -> bytes:
    return (
        f"{headers}From: {from_}\r\nTo: ann@example.net\r\nReply-To: real@attendee.example\r\n"
        "Subject: x\r\n\r\nbody\r\n"
    ).encode()


def ident(
    raw: bytes,
    trusted: tuple[str, ...] = ("mx.example.net",),
    relays: tuple[str, ...] = (),
    envelope: str = "p@outlook.com",
):  # type: ignore[no-untyped-def]
    return sender_identity(
        extract(raw), envelope_from=envelope, trusted_authserv_ids=trusted, attendee_relays=relays
    )


def test_trusted_header_gives_dkim_domains_and_dmarc() -> None:
    si = ident(raw_mail(OPENDKIM_STYLE))
    assert si.dkim is AuthVerdict.PASS
    assert si.dkim_domains == ("outlook.com",)
    assert si.dmarc is AuthVerdict.PASS
    assert si.from_addresses == ("p@outlook.com",)
    assert si.envelope_from == "p@outlook.com"
    assert si.reply_to == ("real@attendee.example",)
    assert not si.trusted_relay


def test_header_i_form_and_comments_are_understood() -> None:
    si = ident(raw_mail(GMAIL_STYLE), trusted=("MX.Google.com",))
    assert si.dkim is AuthVerdict.PASS
    assert si.dkim_domains == ("calendar.example",)
    assert si.dmarc is AuthVerdict.PASS


def test_untrusted_authserv_id_is_ignored_even_when_it_says_pass() -> None:
    si = ident(raw_mail(GMAIL_STYLE), trusted=("mx.example.net",))
    assert si.dkim is AuthVerdict.NONE
    assert si.dkim_domains == ()
    assert si.dmarc is AuthVerdict.NONE
    assert any("untrusted 'mx.google.com'" in n for n in si.notes)


def test_forged_pass_below_our_own_header_is_ignored() -> None:
    ours = (
        "Authentication-Results: mx.example.net; dkim=fail header.d=evil.example;"
        " dmarc=fail header.from=bank.example\r\n"
    )
    forged = (
        "Authentication-Results: mx.example.net; dkim=pass header.d=bank.example; dmarc=pass\r\n"
    )
    si = ident(raw_mail(ours + forged))
    assert si.dkim is AuthVerdict.FAIL
    assert si.dkim_domains == ()
    assert si.dmarc is AuthVerdict.FAIL
    assert any("older" in n for n in si.notes)


def test_dmarc_fail_from_a_trusted_host_is_reported_as_fail() -> None:
    header = (
        "Authentication-Results: mx.example.net; dkim=none;"
        " dmarc=fail (p=reject) header.from=x.example\r\n"
    )
    si = ident(raw_mail(header))
    assert si.dmarc is AuthVerdict.FAIL
    assert si.dkim is AuthVerdict.NONE


def test_no_authentication_results_gives_none() -> None:
    si = ident(raw_mail(""))
    assert si.dkim is AuthVerdict.NONE
    assert si.dmarc is AuthVerdict.NONE


def test_attendee_relay_by_address_or_domain_marks_trusted_relay() -> None:
    raw = raw_mail("", from_="Google Calendar <calendar-notification@google.com>")
    assert ident(raw, relays=("calendar-notification@google.com",)).trusted_relay
    assert ident(raw, relays=("@google.com",)).trusted_relay
    assert not ident(raw, relays=("@notgoogle.com",)).trusted_relay
    si = ident(raw, relays=("@google.com",))
    # The real attendee from Reply-To becomes a claimed identity only for relays.
    assert "real@attendee.example" in si.claimed()


def test_envelope_sender_alone_can_match_a_relay() -> None:
    si = ident(raw_mail(""), relays=("bounces@relay.example",), envelope="<Bounces@Relay.example>")
    assert si.trusted_relay
    assert si.envelope_from == "bounces@relay.example"


def test_works_on_a_parsed_message_too() -> None:
    msg = message_from_bytes(raw_mail(OPENDKIM_STYLE), policy=compat32)
    si = sender_identity(
        msg, envelope_from="", trusted_authserv_ids=["mx.example.net"], attendee_relays=[]
    )
    assert si.dkim_domains == ("outlook.com",)
    assert si.envelope_from == ""


def test_parser_handles_version_quoted_values_and_none() -> None:
    authserv, results = parse_authentication_results(
        'mx.example.net 1; dkim/1=pass header.d="quoted.example"; spf=none'
    )
    assert authserv == "mx.example.net"
    assert [(r.method, r.result) for r in results] == [("dkim", "pass"), ("spf", "none")]
    assert results[0].properties["header.d"] == "quoted.example"
    assert parse_authentication_results("mx.example.net; none") == ("mx.example.net", [])
    assert parse_authentication_results("") == ("", [])
