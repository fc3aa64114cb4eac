"""Rebuild the example data in ``examples/`` from ``../shared/datasets`` (deterministic; outputs are committed).

    python examples/build_data.py [--shared ../shared/datasets]

- ``data/receipts_labelled.jsonl``: the SROIE receipts on the train side of ``agentkit.split_of`` (seed 0),
  the invoice workflow's retrieved examples. The test side is what ``bench/workflows.py`` measures on.
- ``invoices/``: three invoice2data PDFs and two held-out SROIE receipts (text), the quick start's inputs.
- ``emails/``: labelled .eml files for the email workflow (see ``make_emails`` below) and ``labels.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from email.message import EmailMessage
from pathlib import Path

from agentkit.data import read_jsonl, split_records
from agentkit.documents import Email

HERE = Path(__file__).resolve().parent


def receipts(shared: Path) -> None:
    split = split_records(read_jsonl(shared / "sroie2019" / "dev.jsonl"), seed=0)
    with (HERE / "data" / "receipts_labelled.jsonl").open("w") as fh:
        for r in split.train:
            fh.write(json.dumps({"id": r["id"], "input": r["input"], "expected": r["expected"]}) + "\n")
    out = HERE / "invoices"
    out.mkdir(exist_ok=True)
    for name in ("AmazonWebServices.pdf", "coolblue1.pdf", "oyo.pdf"):
        shutil.copy(shared / "invoice2data" / "pdf" / name, out / name)
    for r in split.test[:2]:
        (out / f"sroie-{r['id']}.txt").write_text(r["input"] + "\n")


KB_INTENTS = (
    "card_arrival", "lost_or_stolen_card", "exchange_rate", "pin_blocked", "change_pin",
    "activate_my_card", "top_up_limits", "transfer_timing", "cash_withdrawal_charge", "terminate_account",
)  # fmt: skip
HELD_OUT_PER_CLASS = 14
POOL_PER_CLASS = 40


def _eml(subject: str, sender: str, body: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "inbox@harborbank.example"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0000"
    msg.set_content(body)
    if attachment:
        name, data = attachment
        maintype, subtype = ("application", "pdf") if name.endswith(".pdf") else ("text", "plain")
        if maintype == "text":
            msg.add_attachment(data.decode("utf-8"), filename=name)
        else:
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        msg.set_boundary(f"==agentkit-{hashlib.sha256(body.encode() + data).hexdigest()[:20]}==")  # reproducible
    return bytes(msg)


def emails(shared: Path) -> None:
    """Labelled by construction: spam = SMS spam, action_request = Enron "ask" sentences, invoice =
    invoice2data PDFs (attached) and SROIE receipts (in the body), support_question = Banking77
    queries of the intents the knowledge base covers, other = SMS ham and Enron "not_ask" sentences.
    Held-out .eml files come from the test side of ``split_of`` (seed 0); the classifier's labelled
    pool (``data/emails_labelled.jsonl``) from the train side, so no held-out message is in a prompt."""
    sms = split_records(read_jsonl(shared / "sms_spam_collection" / "dev.jsonl"), seed=0)
    enron = split_records(read_jsonl(shared / "enron_email_intent" / "train.jsonl"), seed=0)
    bank = split_records(
        (r for r in read_jsonl(shared / "banking77" / "train.jsonl") if r["expected"] in KB_INTENTS), seed=0
    )
    sroie = split_records(read_jsonl(shared / "sroie2019" / "dev.jsonl"), seed=0)

    def pick(records: list, label: str, n: int) -> list:
        return [r for r in records if r["expected"] == label][:n]

    def round_robin(records: list, n: int) -> list:
        """``n`` records taking each label in turn (so support questions span the knowledge base)."""
        by_label = {label: [r for r in records if r["expected"] == label] for label in KB_INTENTS}
        rows = [r for group in zip(*by_label.values(), strict=False) for r in group]
        return rows[:n]

    def texts(side: str, n: int) -> dict[str, list[tuple[str, str]]]:
        """(subject, body) per class."""
        get = lambda split: getattr(split, side)  # noqa: E731
        half = n // 2
        return {
            "spam": [("", r["input"]) for r in pick(get(sms), "spam", n)],
            "action_request": [("", r["input"]) for r in pick(get(enron), "ask", n)],
            "support_question": [("", r["input"]) for r in round_robin(get(bank), n)],
            "other": [("", r["input"]) for r in pick(get(sms), "ham", half)]
            + [("", r["input"]) for r in pick(get(enron), "not_ask", n - half)],
        }

    # the labelled pool, as the classifier reads a message (Email.as_text)
    pool = texts("train", POOL_PER_CLASS)
    with (HERE / "data" / "emails_labelled.jsonl").open("w") as fh:
        for label, items in pool.items():
            for subject, body in items:
                fh.write(json.dumps({"input": Email(subject=subject, body=body).as_text(), "expected": label}) + "\n")
        for r in sroie.train[:POOL_PER_CLASS]:
            text = Email(subject="Receipt", body=f"Receipt for your purchase:\n\n{r['input']}").as_text()
            fh.write(json.dumps({"input": text, "expected": "invoice"}) + "\n")

    out = HERE / "emails"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    labels = []
    for label, items in texts("test", HELD_OUT_PER_CLASS).items():
        for n, (subject, body) in enumerate(items, 1):
            name = f"{label}-{n:02d}.eml"
            (out / name).write_bytes(_eml(subject, f"{label.split('_')[0]}{n}@mail.example", body))
            labels.append({"file": name, "expected": label})
    pdfs = sorted((shared / "invoice2data" / "pdf").glob("*.pdf"))
    for n, pdf in enumerate(pdfs, 1):
        name = f"invoice-{n:02d}.eml"
        body = "Hello,\n\nplease find our invoice attached.\n\nBest regards,\nAccounts"
        (out / name).write_bytes(_eml("Invoice attached", "billing@vendor.example", body, (pdf.name, pdf.read_bytes())))
        labels.append({"file": name, "expected": "invoice"})
    for n, r in enumerate(sroie.test[: HELD_OUT_PER_CLASS - len(pdfs)], len(pdfs) + 1):
        name = f"invoice-{n:02d}.eml"
        (out / name).write_bytes(_eml("Receipt", "shop@vendor.example", f"Receipt for your purchase:\n\n{r['input']}"))
        labels.append({"file": name, "expected": "invoice"})
    with (out / "labels.jsonl").open("w") as fh:
        for row in labels:
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "datasets")
    args = p.parse_args()
    receipts(args.shared)
    emails(args.shared)


if __name__ == "__main__":
    main()
