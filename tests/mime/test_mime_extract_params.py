"""A calendar part's parameters, parsed once, give what the email package gives (issue 5).

``_leaf`` used to parse the Content-Type parameters twice, once inside
``Message.get_filename()`` and once for charset/method.  They are now parsed once and
shared; these tests pin the file name and the parameter dict to the email package's
own answers for any mix of Content-Type and Content-Disposition headers.
"""

from __future__ import annotations

import sys
from email.message import Message
from email.utils import collapse_rfc2231_value
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mime import headers as hdr

EXTRACT: ModuleType = sys.modules["gateway.mime.extract"]


def reference_filename(part: Message) -> str | None:
    """The former ``_filename``: ``get_filename()`` with its errors meaning "no name"."""
    try:
        name = part.get_filename()
    except (ValueError, LookupError, TypeError):
        return None
    return hdr.decode_value(name) if name else None


def reference_params(part: Message) -> dict[str, str]:
    """The former ``_params``: ``get_params()`` by lower-case name, first wins."""
    out: dict[str, str] = {}
    for key, value in part.get_params() or []:
        raw: object = value
        text = collapse_rfc2231_value(raw) if isinstance(raw, tuple) else raw
        if isinstance(text, str):
            out.setdefault(key.lower(), text)
    return out


_PARAM = st.sampled_from(
    [
        'name="invite.ics"',
        "name=invite.ics",
        "NAME=Other.ICS",
        'filename="a b.ics"',
        "filename*=utf-8''caf%C3%A9.ics",
        "name*0=part1; name*1=part2.ics",
        'charset="UTF-8"',
        "charset=iso-8859-1",
        "method=REQUEST",
        "METHOD=reply",
        'name="=?utf-8?q?caf=C3=A9?=.ics"',
        "name=",
        'name="unterminated',
        "; ;",
        "x=(comment)",
        "name=  spaced.ics  ",
    ]
)
_CTYPE = st.sampled_from(["text/calendar", "application/ics", "application/octet-stream", ""])
_DISPOSITION = st.sampled_from(["attachment", "inline", "", None])


@settings(max_examples=600, deadline=None)
@given(
    _CTYPE,
    st.lists(_PARAM, max_size=4),
    _DISPOSITION,
    st.lists(_PARAM, max_size=3),
)
def test_filename_and_params_equal_the_email_packages(
    ctype: str, ct_params: list[str], disposition: str | None, cd_params: list[str]
) -> None:
    part = Message()
    if ctype or ct_params:
        part["Content-Type"] = "; ".join([ctype, *ct_params])
    if disposition is not None:
        part["Content-Disposition"] = "; ".join([disposition, *cd_params])
    parsed = EXTRACT._content_type_params(part)
    assert EXTRACT._filename(part, parsed) == reference_filename(part)
    assert EXTRACT._params(part, parsed) == reference_params(part)


def test_the_usual_calendar_part_headers() -> None:
    part = Message()
    part["Content-Type"] = 'application/ics; name="invite.ics"; charset=UTF-8; method=REQUEST'
    part["Content-Disposition"] = 'attachment; filename="invite.ics"'
    parsed = EXTRACT._content_type_params(part)
    assert EXTRACT._filename(part, parsed) == "invite.ics"
    assert EXTRACT._params(part, parsed) == {
        "application/ics": "",
        "name": "invite.ics",
        "charset": "UTF-8",
        "method": "REQUEST",
    }
