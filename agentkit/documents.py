"""Documents in, text out: PDF (text layer via pypdf), e-mail (.eml: headers, MIME parts, HTML),
plain text. Whatever cannot be read is an :class:`InputError` saying why — never a crash.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import html
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from agentkit.errors import ConfigError, InputError

if TYPE_CHECKING:
    from pypdf import PageObject

__all__ = [
    "Email",
    "decode_text",
    "document_text",
    "html_to_text",
    "parse_email",
    "pdf_text",
    "strip_quoted",
    "strip_signature",
]

_MAX_DOCUMENT_CHARS = 200_000
"""Longer extracted texts are refused (a 5 MB text is not an invoice)."""


def pdf_text(data: bytes, *, name: str = "document") -> str:
    """The text layer of a PDF, pages separated by a form feed line. Laid out as printed (pypdf's
    layout mode, like ``pdftotext -layout``: a label and its value stay on one line, words are not
    glued together), or in reading order where layout extraction fails."""
    try:
        from pypdf import PdfReader
    except ImportError as e:
        raise ConfigError("reading PDF needs pypdf", hint="pip install 'agentkit[pdf]'") from e
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # an empty user password opens some
            raise InputError(f"{name} is an encrypted PDF (a password is needed)")
        pages = [_page_text(page) for page in reader.pages]
    except InputError:
        raise
    except Exception as e:  # pypdf raises many types on a damaged file
        raise InputError(f"{name} is an unreadable PDF: {type(e).__name__}: {e}") from None
    text = "\n\f\n".join(pages)
    if not text.strip():
        raise InputError(f"{name} has no text layer (a scan? run OCR first)")
    return text


def _page_text(page: PageObject) -> str:
    try:
        return page.extract_text(extraction_mode="layout") or ""
    except Exception:  # noqa: BLE001 - layout mode is stricter on some files: fall back to reading order
        return page.extract_text() or ""


def decode_text(data: bytes, *, name: str = "input") -> str:
    """UTF-8 text (a BOM is dropped); binary data (a NUL byte anywhere, or bytes that are not UTF-8) is an
    :class:`InputError`."""
    if b"\x00" in data:
        raise InputError(f"{name} is not a text file (binary data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name} is binary or not UTF-8 text") from None


def _unicode(text: str, name: str) -> str:
    """``text``, or an :class:`InputError` if it holds lone surrogates (not text any encoder can write)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{name} is not valid Unicode text (it holds lone surrogates)") from None
    return text


def document_text(value: Any, *, name: str = "input") -> str:
    """Text of a document given as bytes (a PDF or text file), a string, or ``{"text": ...}``."""
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        value = value["text"]
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if isinstance(value, bytes):
        value = pdf_text(value, name=name) if value.lstrip()[:5] == b"%PDF-" else decode_text(value, name=name)
    if not isinstance(value, str):
        raise InputError(f"{name} must be a document (bytes or text), got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{name} is empty")
    if len(value) > _MAX_DOCUMENT_CHARS:
        raise InputError(f"{name} is {len(value):,} characters, the limit is {_MAX_DOCUMENT_CHARS:,}")
    if "\x00" in value:
        raise InputError(f"{name} contains NUL characters (binary data?)")
    return _unicode(value, name)


# ---- e-mail ------------------------------------------------------------------------------


@dataclass
class Email:
    """One message: headers, its body as plain text, and readable attachments as text."""

    subject: str = ""
    sender: str = ""
    to: str = ""
    date: str = ""
    body: str = ""
    attachments: dict[str, str] = field(default_factory=dict)
    """File name → extracted text (PDF or text attachments; others are listed with an empty text and a
    note). Two attachments with one name are told apart by a counter: ``a.pdf``, ``a (2).pdf``."""
    notes: list[str] = field(default_factory=list)
    """What could not be read, and why (a broken base64 part, an unknown charset, a binary attachment)."""

    def as_text(self, attachment_chars: int | None = 400) -> str:
        """Subject, body and the first ``attachment_chars`` characters of each attachment's words
        (whitespace collapsed; ``None``: all of them), as a classifier reads the message."""
        parts = [f"Subject: {self.subject}"] if self.subject else []
        parts.append(self.body)
        for name, text in self.attachments.items():
            words = " ".join(text.split())  # words, not a laid-out page's margins
            start = words if attachment_chars is None else words[:attachment_chars]
            parts.append(f"[attachment {name}]\n{start}".strip())
        return "\n\n".join(p for p in parts if p).strip()


class _TextOfHtml(HTMLParser):
    _BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "table", "section"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML part: scripts and styles dropped, blocks on their own lines."""
    parser = _TextOfHtml()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # noqa: BLE001 - markup the parser cannot follow: its tags are cut out instead
        text = re.sub(r"<[^>]*>?", " ", markup)
    lines = (re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in html.unescape(text).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_HEADER = re.compile(
    rb"^(From|To|Subject|Date|Message-ID|MIME-Version|Content-Type|Received|Return-Path):", re.I | re.M
)
_BROKEN_BASE64 = (email.errors.InvalidBase64CharactersDefect, email.errors.InvalidBase64LengthDefect)
"""A base64 part the email package could not decode: it hands back the raw text (or bytes with its
invalid characters skipped), which must not be read as the part's content. Missing padding alone is
decoded correctly and is not among them."""
_MAX_DEPTH = 8
"""Parts nested deeper than this (multiparts in multiparts, forwarded messages) are noted, not read."""


def parse_email(value: bytes | str, *, name: str = "email") -> Email:
    """An .eml message (RFC 5322 headers, MIME parts, HTML-only bodies) or, when ``value`` has no
    e-mail headers, a plain-text message.

    A part that cannot be read (broken base64, binary data, an unreadable PDF) is left out and the reason
    kept in :attr:`Email.notes`; a message with nothing readable at all is an :class:`InputError`."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if isinstance(value, str):
        value = _unicode(value, name).encode("utf-8")
    if not isinstance(value, bytes):
        raise InputError(f"{name} must be an email (bytes or text), got {type(value).__name__}")
    data = value
    if not data.strip():
        raise InputError(f"{name} is empty")
    if not _HEADER.search(data[:4096]):
        return Email(body=decode_text(data, name=name).strip())
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out = Email(
            subject=_header(msg, "subject"),
            sender=_header(msg, "from"),
            to=_header(msg, "to"),
            date=_header(msg, "date"),
        )
        _read_message(msg, out, name, depth=0)
    except InputError:
        raise
    except Exception as e:  # the email package raises many types on a broken message
        raise InputError(f"{name} is a malformed email: {type(e).__name__}: {e}") from None
    if not out.body and not any(out.attachments.values()) and not out.subject:
        why = f" ({'; '.join(out.notes)})" if out.notes else ""
        raise InputError(f"{name} has no readable body, subject or attachment{why}"[:2000])
    return out


def _text(value: str) -> str:
    """A string the email package made, as valid Unicode: raw 8-bit bytes it kept as surrogate escapes are
    read as UTF-8 (invalid sequences replaced)."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def _header(msg: MIMEPart, key: str) -> str:
    """A header's value, decoded; its raw text where the header cannot be parsed; ``""`` if absent."""
    try:
        value = msg.get(key)
        return "" if value is None else _text(str(value)).strip()
    except Exception:  # noqa: BLE001 - a header the parser chokes on is kept as it was written
        raw = next((v for k, v in msg.raw_items() if k.lower() == key), "")
        return _text(str(raw)).strip()


def _read_message(msg: MIMEPart, out: Email, name: str, *, depth: int) -> None:
    """Fill ``out.body`` and ``out.attachments`` from ``msg`` (notes for what cannot be read)."""
    bodies = [part for kind in ("plain", "html") if (part := _body(msg, kind)) is not None]
    for part in bodies:
        try:
            text = _part_text(part, f"{name} body", out.notes)
        except Exception as e:  # noqa: BLE001 - broken base64, binary data, a decoder the email package lacks
            out.notes.append(f"body not read: {e}" if isinstance(e, InputError) else f"body not read: {e!r}")
            continue
        out.body = (html_to_text(text) if part.get_content_subtype() == "html" else text).strip()
        if out.body:
            break
    if msg.get_content_maintype() != "multipart":
        if not bodies:  # the message is one part that is not a body: a PDF, a forwarded message, an attached text
            _read_attachment(msg, out, name, depth=depth + 1, skip=())
        return
    for part in _attachments(msg, bodies):
        _read_attachment(part, out, name, depth=depth + 1, skip=bodies)


def _body(msg: MIMEPart, kind: str) -> MIMEPart | None:
    """The message's ``text/<kind>`` body part, if it has one."""
    try:
        return msg.get_body(preferencelist=(kind,))
    except Exception:  # noqa: BLE001 - the email package trips on some broken trees (a multipart without parts)
        want = f"text/{kind}"
        return next((p for p in _leaves(msg) if p.get_content_type() == want and not p.is_attachment()), None)


def _attachments(msg: MIMEPart, bodies: Sequence[MIMEPart]) -> list[MIMEPart]:
    """The parts of a multipart message that are not its body."""
    try:
        return list(msg.iter_attachments())
    except Exception:  # noqa: BLE001 - as in _body: every part but the body, then
        return [p for p in _parts(msg) if not any(p is body for body in bodies)]


def _leaves(part: MIMEPart, depth: int = 0) -> Iterator[MIMEPart]:
    """The parts of a multipart tree that are not multiparts (a forwarded message is one: not entered)."""
    if part.get_content_maintype() != "multipart":
        yield part
    elif depth < _MAX_DEPTH:
        for sub in _parts(part):
            yield from _leaves(sub, depth + 1)


def _parts(part: MIMEPart) -> list[MIMEPart]:
    """The parts of a multipart (none when the parser could not split it into parts)."""
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, MIMEPart)] if isinstance(payload, list) else []


def _read_attachment(part: MIMEPart, out: Email, name: str, *, depth: int, skip: Sequence[MIMEPart]) -> None:
    """Read ``part`` (a multipart: each of its parts but ``skip``, the body) into ``out.attachments``."""
    try:
        filename = _text(part.get_filename() or "").strip()
    except Exception:  # noqa: BLE001 - a Content-Disposition the parser chokes on: the part is still read
        filename = ""
    filename = filename or f"attachment-{len(out.attachments) + 1}"
    if depth > _MAX_DEPTH:
        out.notes.append(f"attachment {filename} not read: nested more than {_MAX_DEPTH} levels deep")
        return
    ctype = part.get_content_type()
    if ctype.startswith("multipart/"):  # a multipart inside the message: each of its parts is read
        subparts = _parts(part)
        if not subparts:
            out.notes.append(f"attachment {filename} not read: a multipart with no parts")
        for sub in subparts:
            if not any(sub is body for body in skip):
                _read_attachment(sub, out, name, depth=depth + 1, skip=skip)
        return
    key = _unique(filename, out.attachments)
    text: str | bytes
    try:
        if ctype == "message/rfc822":  # a forwarded message: its subject, body and attachments
            inner = part.get_content()
            cte = str(part.get("content-transfer-encoding", "")).strip().lower()
            if cte not in ("", "7bit", "8bit", "binary"):
                raise InputError(f"a forwarded message in {cte[:40]} (not allowed for message/rfc822)")
            if not isinstance(inner, EmailMessage):
                raise InputError("not a message")
            forwarded = Email(subject=_header(inner, "subject"))
            _read_message(inner, forwarded, key, depth=depth)
            out.notes += [f"{key}: {note}" for note in forwarded.notes]
            text = forwarded.as_text(attachment_chars=None)
        elif part.get_content_maintype() == "text":
            text = _part_text(part, key, out.notes)
            if part.get_content_subtype() == "html":
                text = html_to_text(text)
        else:
            text = _payload(part, key)
        out.attachments[key] = document_text(text, name=key)
    except InputError as e:
        out.attachments[key] = ""
        out.notes.append(f"attachment {key} not read: {e}")
    except Exception as e:  # noqa: BLE001 - one broken part is noted; the rest of the message is read
        out.attachments[key] = ""
        out.notes.append(f"attachment {key} not read: {type(e).__name__}: {e}")


def _unique(filename: str, taken: dict[str, str]) -> str:
    """``filename``, or ``stem (2).suffix`` and so on if an attachment already has that name."""
    if filename not in taken:
        return filename
    stem, dot, suffix = filename.rpartition(".") if "." in filename.lstrip(".") else (filename, "", "")
    n = 2
    while f"{stem} ({n}){dot}{suffix}" in taken:
        n += 1
    return f"{stem} ({n}){dot}{suffix}"


def _payload(part: MIMEPart, name: str) -> bytes:
    """A leaf part's content, its transfer encoding undone; :class:`InputError` if that encoding is broken."""
    payload = part.get_payload(decode=True)
    broken = [d for d in part.defects if isinstance(d, _BROKEN_BASE64)]
    if broken:
        raise InputError(f"{name} is broken base64 ({type(broken[0]).__name__}): not read as text")
    return payload if isinstance(payload, bytes) else b""


def _part_text(part: MIMEPart, name: str, notes: list[str]) -> str:
    """A text part decoded with its charset (UTF-8 when none is given); bytes that are not in the charset
    are replaced and an unknown charset is read as UTF-8, each noted; binary data is an :class:`InputError`."""
    data = _payload(part, name)
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset)
    except UnicodeDecodeError:
        notes.append(f"{name}: bytes that are not {charset[:40]} replaced")
        text = data.decode(charset, errors="replace")
    except Exception:  # noqa: BLE001 - LookupError, or a codec that is not for text (idna, rot13, base64)
        notes.append(f"{name}: unknown charset {charset[:40]!r}, read as UTF-8")
        text = data.decode("utf-8", errors="replace")
    text = _text(text)
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r\f")
    replaced = text.count("\ufffd")
    if "\x00" in text or controls > max(8, len(text) // 20) or controls + replaced > max(2, len(text) * 0.3):
        raise InputError(f"{name} is not text (binary data, or not in its charset)")
    return text


_ORIGINAL_MESSAGE = re.compile(r"-{2,}\s*Original Message\s*-{2,}", re.I)
_OUTLOOK_FIELD = re.compile(
    r"^[ \t]*\*?(From|Sent|Date|To|Cc|Bcc|Subject|Reply-To|Importance|Von|Gesendet|An|Betreff|Datum"
    r"|De|Envoyé|À|A|Objet)\*?[ \t]*:[ \t]*\S",
    re.I,
)
_OUTLOOK_FROM = re.compile(r"^[ \t]*\*?(From|Von|De)\*?[ \t]*:", re.I)


def _outlook_header(lines: list[str], i: int) -> bool:
    """Whether a reply header block starts at line ``i``: "From:" then, in the lines that follow, a date
    ("Sent:" or "Date:") and a "Subject:" (Outlook's, also in German and French)."""
    if not _OUTLOOK_FROM.match(lines[i]):
        return False
    names = set()
    for line in lines[i : i + 8]:
        m = _OUTLOOK_FIELD.match(line)
        if not m:
            break
        names.add(m.group(1).lower())
    return bool(names & {"sent", "date", "gesendet", "datum", "envoyé"}) and bool(
        names & {"subject", "betreff", "objet"}
    )


def _reply_header(lines: list[str], i: int) -> bool:
    """Whether a quoted message's header starts at line ``i``: "-----Original Message-----", "On … wrote:"
    with a date in it (possibly wrapped onto a second line), or a "From: / Sent: / Subject:" block."""
    line = lines[i].strip()
    if _ORIGINAL_MESSAGE.fullmatch(line):
        return True
    if line[:3].lower() == "on ":
        if not line.lower().endswith("wrote:") and i + 1 < len(lines):
            line = f"{line} {lines[i + 1].strip()}"
        return line.lower().endswith("wrote:") and len(line) <= 300 and any(c.isdigit() for c in line)
    return _outlook_header(lines, i)


def strip_quoted(body: str) -> str:
    """The new part of a reply: quoted lines (``>``) are dropped, and so is everything from a reply
    header on: "On … wrote:" (with a date), "-----Original Message-----", or a "From: / Sent: / To: /
    Subject:" block. A lone "From: Name <address>" line is content, and a message that is nothing but a
    quote is kept whole."""
    lines = body.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    end = next((i for i in range(first + 1, len(lines)) if _reply_header(lines, i)), len(lines))
    return "\n".join(line for line in lines[:end] if not line.lstrip().startswith(">")).strip()


_CLOSING = re.compile(
    r"^(Sent from my \w.*|(Best|Kind|Warm|Warmest|With kind)? ?regards|Best|Best wishes|All the best|Thanks|Thank you"
    r"|Many thanks|Thanks again|Thanks a lot|Cheers|Sincerely|Yours sincerely|Yours faithfully|Yours truly|Cordially"
    r"|Mit freundlichen Grüßen|Viele Grüße|Cordialement|Bien à vous|Merci)[ \t]*[,.!]?$",
    re.I,
)
_SIGNATURE_LINES = 4
"""At most this many short lines (a name, a title, a phone number) follow a closing like "Regards,"."""


def _signature_block(lines: list[str]) -> bool:
    """Whether ``lines`` (what follows a closing) look like a name block, not more of the message."""
    words = [line.strip() for line in lines if line.strip()]
    return len(words) <= _SIGNATURE_LINES and all(len(w) <= 60 and len(w.split()) <= 8 and "?" not in w for w in words)


def strip_signature(body: str) -> str:
    """The body without its sign-off and signature: from a ``-- `` line (the signature delimiter; ``--``
    alone when at most a dozen lines follow it), or from a closing line ("Regards,", "Thanks", "Sent from
    my phone") followed only by a short name block at the end. A closing word with more of the message
    after it is content."""
    lines = body.rstrip().split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    tail = len(lines) - 1 - 2 * _SIGNATURE_LINES  # a closing is one of the last lines
    for i in range(first + 1, len(lines)):
        line, rest = lines[i].rstrip("\r"), len(lines) - i - 1
        if line == "-- " or (line.strip() == "--" and rest <= 12):
            return "\n".join(lines[:i]).strip()
        if i >= tail and _CLOSING.match(line.strip()) and _signature_block(lines[i + 1 :]):
            return "\n".join(lines[:i]).strip()
    return body.strip()
