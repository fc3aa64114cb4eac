"""Write the held-out sets that are *not* in ../shared/datasets (run once; the outputs are committed).

    python bench/data/build.py CLINC_DATA_FULL_JSON SQUAD_DEV_V2_JSON [BANKING77_TEST_CSV ENRON_ASK_TEST_TXT]
    python bench/data/build.py squad-train SQUAD_TRAIN_V2_EXCERPT_JSON

- ``clinc150_test.jsonl``: CLINC150's official test split (4,500 in-scope + 1,000 out-of-scope queries,
  less 2 that also occur in its train/val splits);
  ../shared/datasets/clinc150_oos holds only its train and val splits.
- ``squad_v2_rhine/``: the "Rhine" article of the SQuAD 2.0 dev set (44 paragraphs, 498 questions);
  ../shared/datasets/squad_v2_normans holds only the "Normans" article. Same format as that folder.
- ``squad_v2_train10/``: ten articles of the SQuAD 2.0 *train* set (694 paragraphs, 4,719 questions, 348
  unanswerable) — training data for a tuned reader (``bench/tune_reader.py``); no Normans or Rhine paragraph.
- ``banking77_test.jsonl``, ``enron_email_intent_test.jsonl``: the official *test* splits of BANKING77 and of
  the Parakweet "ask" sentences (../shared/datasets has only their train files), less any text that also occurs
  in the shared train file. Same fields as the shared files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _shared_texts(name: str, *files: str) -> set[str]:
    """The inputs of ../shared/datasets/NAME/FILES, stripped and lower-cased (to leave them out)."""
    shared = HERE.parents[2] / "shared" / "datasets" / name
    return {json.loads(line)["input"].strip().lower() for f in files for line in (shared / f).read_text().splitlines()}


def clinc(data_full: Path, domains: dict[str, list[str]]) -> None:
    d = json.loads(data_full.read_text())
    domain_of = {intent: dom for dom, intents in domains.items() for intent in intents}
    seen = _shared_texts("clinc150_oos", "train.jsonl", "val.jsonl")
    rows = [
        {"input": text, "expected": label, "domain": domain_of.get(label, "oos"), "is_oos": label == "oos",
         "orig_split": split}
        for split in ("test", "oos_test")
        for text, label in d[split]
        if text.strip().lower() not in seen  # the official splits share 2 queries with train/val
    ]  # fmt: skip
    write_jsonl(HERE / "clinc150_test.jsonl", rows)
    print(f"clinc150_test.jsonl: {len(rows)} records")


def write_unseen(name: str, rows: list[dict], seen: set[str]) -> None:
    """``rows`` less those whose input is in ``seen`` (a shared train file's), as bench/data/NAME."""
    kept = [r for r in rows if r["input"].strip().lower() not in seen]
    write_jsonl(HERE / name, kept)
    print(f"{name}: {len(kept)} of {len(rows)} records (the rest occur in the train file)")


def banking77(test_csv: Path) -> None:
    import csv

    seen = _shared_texts("banking77", "train.jsonl")
    with test_csv.open(newline="", encoding="utf-8") as f:
        rows = [{"input": r["text"], "expected": r["category"]} for r in csv.DictReader(f)]
    write_unseen("banking77_test.jsonl", rows, seen)


def enron_ask(test_txt: Path) -> None:
    seen = _shared_texts("enron_email_intent", "train.jsonl")
    rows = []
    for line in test_txt.read_text(encoding="utf-8").splitlines():
        label, _, sentence = line.partition("\t")
        if sentence.strip():
            rows.append({"input": sentence, "expected": "ask" if label == "Yes" else "not_ask", "raw_label": label})
    write_unseen("enron_email_intent_test.jsonl", rows, seen)


def _squad_article(article: dict) -> tuple[list[dict], list[dict]]:
    title = article["title"]
    corpus, questions = [], []
    for i, para in enumerate(article["paragraphs"]):
        doc_id = f"{title}_{i:02d}"
        corpus.append({"doc_id": doc_id, "title": title, "text": para["context"]})
        for qa in para["qas"]:
            answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
            questions.append({
                "id": qa["id"], "input": qa["question"],
                "expected": {"answerable": not qa["is_impossible"], "answers": answers},
                "gold_doc_id": doc_id, "title": title, "answer_spans": qa["answers"],
                "plausible_answers": qa.get("plausible_answers", []),
            })  # fmt: skip
    return corpus, questions


def squad(dev: Path, title: str = "Rhine", out_name: str | None = None) -> None:
    """One article of a SQuAD 2.0 file (or all of them, ``title=None``) as corpus.jsonl + questions.jsonl."""
    corpus, questions = [], []
    for article in json.loads(dev.read_text())["data"]:
        if title is None or article["title"] == title:
            c, q = _squad_article(article)
            corpus += c
            questions += q
    out = HERE / (out_name or f"squad_v2_{title.lower()}")
    write_jsonl(out / "corpus.jsonl", corpus)
    write_jsonl(out / "questions.jsonl", questions)
    print(f"{out.name}: {len(corpus)} paragraphs, {len(questions)} questions")


if __name__ == "__main__":
    if sys.argv[1] == "squad-train":  # python bench/data/build.py squad-train TRAIN_V2_EXCERPT_JSON
        squad(Path(sys.argv[2]), title=None, out_name="squad_v2_train10")
        sys.exit()
    clinc_path, squad_path = map(Path, sys.argv[1:3])
    domains = json.loads((clinc_path.parent / "domains.json").read_text())
    clinc(clinc_path, domains)
    squad(squad_path)
    if len(sys.argv) > 4:
        banking77(Path(sys.argv[3]))
        enron_ask(Path(sys.argv[4]))
