"""Documents in, text out: PDF (text layer via pypdf), e-mail (.eml: headers, MIME parts, HTML),
plain text. Whatever cannot be read is an :class:`InputError` saying why — never a crash.
"""

from __future__ import annotations

import email
import email.policy
import html
import io
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
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
    """UTF-8 text (a BOM is dropped); binary data is an :class:`InputError`."""
    if b"\x00" in data[:8192]:
        raise InputError(f"{name} is not a text file (binary data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name} is binary or not UTF-8 text") from None


def document_text(value: Any, *, name: str = "input") -> str:
    """Text of a document given as bytes (a PDF or text file), a string, or ``{"text": ...}``."""
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        value = value["text"]
    if isinstance(value, bytes):
        value = pdf_text(value, name=name) if value.lstrip()[:5] == b"%PDF-" else decode_text(value, name=name)
    if not isinstance(value, str):
        raise InputError(f"{name} must be a document (bytes or text), got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{name} is empty")
    if len(value) > _MAX_DOCUMENT_CHARS:
        raise InputError(f"{name} is {len(value):,} characters, the limit is {_MAX_DOCUMENT_CHARS:,}")
    return value


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
    """File name → extracted text (PDF or text attachments; others are listed with an empty text)."""

    def as_text(self, attachment_chars: int = 400) -> str:
        """Subject, body and the first ``attachment_chars`` characters of each attachment's words
        (whitespace collapsed), as a classifier reads the message."""
        parts = [f"Subject: {self.subject}"] if self.subject else []
        parts.append(self.body)
        for name, text in self.attachments.items():
            start = " ".join(text.split())[:attachment_chars]  # words, not a laid-out page's margins
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
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in html.unescape("".join(parser.parts)).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_HEADER = re.compile(
    rb"^(From|To|Subject|Date|Message-ID|MIME-Version|Content-Type|Received|Return-Path):", re.I | re.M
)


def parse_email(value: bytes | str, *, name: str = "email") -> Email:
    """An .eml message (RFC 5322 headers, MIME parts, HTML-only bodies) or, when ``value`` has no
    e-mail headers, a plain-text message."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if not data.strip():
        raise InputError(f"{name} is empty")
    if not _HEADER.search(data[:4096]):
        return Email(body=decode_text(data, name=name).strip())
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out = Email(
            subject=str(msg.get("subject", "") or ""),
            sender=str(msg.get("from", "") or ""),
            to=str(msg.get("to", "") or ""),
            date=str(msg.get("date", "") or ""),
        )
        plain = msg.get_body(preferencelist=("plain",))
        rich = msg.get_body(preferencelist=("html",))
        if plain is not None:
            out.body = str(plain.get_content()).strip()
        elif rich is not None:
            out.body = html_to_text(str(rich.get_content()))
        for part in msg.iter_attachments():
            filename = part.get_filename() or f"attachment-{len(out.attachments) + 1}"
            payload = part.get_payload(decode=True) or b""
            try:
                out.attachments[filename] = document_text(payload, name=filename)
            except InputError:
                out.attachments[filename] = ""
    except InputError:
        raise
    except Exception as e:  # the email package raises many types on a broken message
        raise InputError(f"{name} is a malformed email: {type(e).__name__}: {e}") from None
    if not out.body and not any(out.attachments.values()) and not out.subject:
        raise InputError(f"{name} has no readable body, subject or attachment")
    return out


_QUOTE_HEADER = re.compile(
    r"^(On .{3,200} wrote:|-{2,}\s*Original Message\s*-{2,}|-{2,}\s*Forwarded by|From: .+ <?\S+@\S+>?)\s*$",
    re.I | re.M,
)
_SIGNATURE = re.compile(r"^(-- ?|Sent from my \w+.*|Best regards,?|Kind regards,?|Regards,?|Thanks,?|Cheers,?)$", re.I)


def strip_quoted(body: str) -> str:
    """The new part of a reply: quoted lines (``>``) and everything after an "On … wrote:" or
    "Original Message" header are dropped."""
    m = _QUOTE_HEADER.search(body)
    if m and m.start() > 0:
        body = body[: m.start()]
    return "\n".join(line for line in body.split("\n") if not line.lstrip().startswith(">")).strip()


def strip_signature(body: str) -> str:
    """The body without its sign-off and signature (from a ``--`` line or a closing like
    "Regards," in the last lines)."""
    lines = body.rstrip().split("\n")
    for i in range(len(lines) - 1, max(-1, len(lines) - 8), -1):
        if _SIGNATURE.match(lines[i].strip()) and i > 0:
            return "\n".join(lines[:i]).rstrip()
    return body.strip()
