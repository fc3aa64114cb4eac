"""Corpus: reading documents, passages with stable ids, BM25 search, persistence."""

from __future__ import annotations

import json

import pytest

from agentkit.corpus import Corpus, read_documents, split_passages
from agentkit.errors import InputError


@pytest.fixture
def normans(datasets):
    """The first six paragraphs of the SQuAD 2.0 Normans article, as JSONL records."""
    lines = (datasets / "squad_v2_normans" / "corpus.jsonl").read_text().splitlines()[:6]
    return [json.loads(line) for line in lines]


def test_split_passages_respects_the_size_limit_and_keeps_all_text():
    text = "First para is short.\n\nSecond one. " + "A sentence that goes on. " * 40 + "\n\n\nLast."
    pieces = split_passages(text, max_chars=200)
    assert all(len(p) <= 200 for p in pieces)
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())


def test_read_documents_from_a_folder(tmp_path, normans):
    (tmp_path / "faq.md").write_text("# Refunds\n\nRefunds take 5 working days.\n")
    (tmp_path / "notes.txt").write_text("Opening hours: 9 to 5.")
    with (tmp_path / "kb.jsonl").open("w") as fh:
        for rec in normans[:2]:
            fh.write(json.dumps(rec) + "\n")
    docs = read_documents([tmp_path])
    assert {d["doc_id"] for d in docs} == {"faq", "notes", "Normans_00", "Normans_01"}


def test_bad_documents_give_clear_errors(tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(InputError, match="not a text file"):
        read_documents([tmp_path / "blob.txt"])
    (tmp_path / "bad.jsonl").write_text('{"text": "no id"}\n')
    with pytest.raises(InputError, match="needs 'id'"):
        read_documents([tmp_path / "bad.jsonl"])
    with pytest.raises(InputError, match="no such file"):
        read_documents([tmp_path / "missing.md"])
    (tmp_path / "empty.md").write_text("   \n")
    with pytest.raises(InputError, match="no text"):
        Corpus.build(tmp_path / "empty.md")


def test_search_finds_the_gold_paragraph(normans):
    corpus = Corpus()
    corpus.add_documents({"doc_id": r["doc_id"], "text": r["text"], "title": r["title"]} for r in normans)
    hits = corpus.search("Who was the Norse leader who swore fealty to King Charles III?", 3)
    assert hits[0][0].doc_id == "Normans_00"
    assert corpus.search("zzzz qqqq", 3) == []  # no shared term: nothing, not noise


def test_saved_index_reloads_without_rebuilding(tmp_path, normans, monkeypatch):
    corpus = Corpus(path=tmp_path / "index")
    corpus.add_documents(normans)
    query = "What religion were the Normans?"
    before = [(p.id, round(s, 6)) for p, s in corpus.search(query, 3)]

    def no_rebuild(self):
        raise AssertionError("load must read the saved index, not rebuild it")

    monkeypatch.setattr(Corpus, "_index", no_rebuild)
    loaded = Corpus.load(tmp_path / "index")
    assert [(p.id, round(s, 6)) for p, s in loaded.search(query, 3)] == before
    assert [p.id for p in loaded.passages] == [p.id for p in corpus.passages]


def test_adding_documents_updates_the_saved_index(tmp_path, normans):
    corpus = Corpus(path=tmp_path)
    corpus.add_documents(normans[:3])
    ids = [p.id for p in corpus.passages]
    assert corpus.add_documents(normans[:3]) == 0  # unchanged documents are skipped
    assert corpus.add_documents([{"doc_id": "faq", "text": "Refunds take five working days."}]) == 1
    loaded = Corpus.load(tmp_path)
    assert [p.id for p in loaded.passages] == [*ids, "faq#0"]
    assert loaded.search("how long do refunds take", 1)[0][0].id == "faq#0"
    # a changed document replaces its passages; ids of the others do not move
    loaded.add_documents([{"doc_id": "faq", "text": "Refunds take ten working days."}])
    again = Corpus.load(tmp_path)
    assert [p.id for p in again.passages] == [*ids, "faq#0"]
    assert "ten working days" in again["faq#0"].text


def test_load_of_a_folder_without_a_corpus_is_a_clear_error(tmp_path):
    from agentkit.errors import ConfigError

    with pytest.raises(ConfigError, match="no saved corpus"):
        Corpus.load(tmp_path)


def test_fingerprint_follows_the_content_not_the_folder(tmp_path, normans):
    a, b = Corpus(path=tmp_path / "a"), Corpus(path=tmp_path / "b")
    a.add_documents(normans)
    b.add_documents(normans)
    b = Corpus.load(tmp_path / "b")
    assert a.fingerprint() == b.fingerprint()  # same documents saved elsewhere and reloaded
    before = a.fingerprint()
    a.add_documents([{"doc_id": "extra", "text": "A new paragraph about something else."}])
    assert a.fingerprint() != before


def test_document_ids_are_paths_in_the_folder_so_same_named_files_do_not_replace_each_other(tmp_path):
    (tmp_path / "cards").mkdir()
    (tmp_path / "loans").mkdir()
    (tmp_path / "cards" / "faq.md").write_text("Cards arrive within 5 working days.")
    (tmp_path / "loans" / "faq.md").write_text("Loans are decided within 2 working days.")
    (tmp_path / "hours.txt").write_text("Open 9 to 5.")
    docs = read_documents([tmp_path])
    assert sorted(d["doc_id"] for d in docs) == ["cards/faq", "hours", "loans/faq"]
    corpus = Corpus.build(tmp_path)
    assert {p.id for p in corpus.passages} == {"cards/faq#0", "hours#0", "loans/faq#0"}
    assert [d["doc_id"] for d in read_documents([tmp_path / "cards" / "faq.md"])] == ["faq"]  # a file given: its stem
    assert len(read_documents([tmp_path, tmp_path / "hours.txt"])) == 3  # a file reached twice is read once


def test_two_documents_that_would_share_an_id_are_a_config_error(tmp_path):
    from agentkit.errors import ConfigError

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "faq.md").write_text("one")
    (tmp_path / "b" / "faq.md").write_text("two")
    with pytest.raises(ConfigError, match="'faq'.*a/faq.md and .*b/faq.md"):
        read_documents([tmp_path / "a" / "faq.md", tmp_path / "b" / "faq.md"])
    (tmp_path / "a" / "faq.txt").write_text("three")
    with pytest.raises(ConfigError, match="two documents have the id 'a/faq'"):
        read_documents([tmp_path])
    (tmp_path / "kb.jsonl").write_text('{"id": "x", "text": "one"}\n{"id": "x", "text": "two"}\n')
    with pytest.raises(ConfigError, match="kb.jsonl:1 and .*kb.jsonl:2"):
        read_documents([tmp_path / "kb.jsonl"])
    corpus = Corpus()
    with pytest.raises(ConfigError, match="two documents have the id 'x'"):
        corpus.add_documents([{"doc_id": "x", "text": "one"}, {"doc_id": "x", "text": "two"}])
    assert corpus.passages == []  # nothing was added
    with pytest.raises(InputError, match="needs 'doc_id'"):
        corpus.add_documents([{"text": "no id"}])


def test_jsonl_that_is_too_deep_or_too_long_a_number_is_an_input_error(tmp_path):
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(InputError, match="not JSON"):
        read_documents([tmp_path / "deep.jsonl"])
    (tmp_path / "long.jsonl").write_text('{"id": ' + "9" * 5000 + ', "text": "x"}\n')
    with pytest.raises(InputError, match="not JSON"):
        read_documents([tmp_path / "long.jsonl"])
