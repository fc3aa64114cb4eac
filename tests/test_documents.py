"""Reading documents and e-mails: real files from the shared data, and the bad inputs a batch meets."""

from __future__ import annotations

import io
from email.message import EmailMessage

import pytest

from agentkit.documents import (
    document_text,
    html_to_text,
    parse_email,
    pdf_text,
    strip_quoted,
    strip_signature,
)
from agentkit.errors import InputError


def test_pdf_text_of_a_real_invoice(datasets):
    text = pdf_text((datasets / "invoice2data" / "pdf" / "AmazonWebServices.pdf").read_bytes())
    assert "Amazon Web Services" in text and "4.11" in text


def test_document_text_detects_pdf_and_text(datasets):
    assert "4.11" in document_text((datasets / "invoice2data" / "pdf" / "AmazonWebServices.pdf").read_bytes())
    assert document_text(b"TOTAL 9.00") == "TOTAL 9.00"
    assert document_text({"text": "TOTAL 9.00"}) == "TOTAL 9.00"


def _encrypted_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt(user_password="secret", owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"   \n\t ", "is empty"),
        (bytes(range(256)) * 40, "binary"),
        (b"%PDF-1.4\n garbage that is not a pdf", "unreadable PDF"),
        ("x" * 5_000_000, "the limit is"),
        (12345, "must be a document"),
    ],
    ids=["empty", "whitespace", "binary", "broken-pdf", "5MB-text", "not-a-document"],
)
def test_bad_documents_are_clear_input_errors(data, message):
    with pytest.raises(InputError, match=message):
        document_text(data, name="doc")


def test_an_encrypted_pdf_is_named_as_such():
    with pytest.raises(InputError, match="encrypted PDF"):
        document_text(_encrypted_pdf(), name="locked.pdf")


def test_a_scanned_pdf_without_text_says_so():
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(InputError, match="no text layer"):
        document_text(out.getvalue())


# ---- e-mail ----------------------------------------------------------------------------------


def _eml(body: str, *, html: str | None = None, attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann <ann@example.com>"
    msg["To"] = "desk@example.com"
    msg["Subject"] = "Card not here"
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    if attachment:
        msg.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return bytes(msg)


def test_parse_email_reads_headers_body_and_pdf_attachment(datasets):
    pdf = (datasets / "invoice2data" / "pdf" / "AmazonWebServices.pdf").read_bytes()
    mail = parse_email(_eml("Invoice attached.", attachment=("aws.pdf", pdf)))
    assert (mail.subject, mail.sender) == ("Card not here", "Ann <ann@example.com>")
    assert mail.body == "Invoice attached."
    assert "4.11" in mail.attachments["aws.pdf"]
    assert "[attachment aws.pdf]" in mail.as_text()


def test_an_html_only_email_is_read_as_visible_text():
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "a@b.c", "hi"
    msg.set_content(
        "<html><head><style>p{}</style></head><body><p>My card</p><p>never came &amp; I waited</p>"
        "<script>alert(1)</script></body></html>",
        subtype="html",
    )
    assert parse_email(bytes(msg)).body == "My card\n\nnever came & I waited"


def test_plain_text_without_headers_is_a_body():
    assert parse_email("my card has not arrived yet").body == "my card has not arrived yet"


def test_a_malformed_email_keeps_what_it_can_or_is_an_input_error():
    broken = b"From: a@b.c\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\n"
    with pytest.raises(InputError, match="no readable body"):
        parse_email(broken)
    assert parse_email(broken.replace(b"From: a@b.c", b"From: a@b.c\nSubject: invoice 42")).subject == "invoice 42"
    with pytest.raises(InputError, match="empty"):
        parse_email(b"")


def test_quoted_replies_and_signatures_are_stripped():
    body = "Can you send the report today?\n\nRegards,\nBob\n\nOn Mon, 2 Mar 2020, Ann <a@b.c> wrote:\n> old text"
    assert strip_signature(strip_quoted(body)) == "Can you send the report today?"
    assert strip_quoted("ok\n> quoted\nmore") == "ok\nmore"
    assert html_to_text("<div>a</div><div>b</div>") == "a\n\nb"
