"""Segmentation is deterministic and bounded."""

from __future__ import annotations

import uuid

from indexer.indexing.segmentation import MAX_SEGMENT_CHARS, split


def test_same_text_same_segments_and_ids() -> None:
    doc = uuid.uuid4()
    text = "First paragraph. It has two sentences.\n\n\n  Second   paragraph\twith  spaces.\r\n\r\nThird."
    one, two = split(doc, text), split(doc, text)
    assert one == two
    assert [s.content for s in one] == [
        "First paragraph. It has two sentences.",
        "Second paragraph with spaces.",
        "Third.",
    ]
    assert [s.position for s in one] == [0, 1, 2]
    assert split(uuid.uuid4(), text)[0].id != one[0].id  # ids are per document


def test_long_paragraphs_are_packed_by_sentence_then_word_then_cut() -> None:
    sentence = "word " * 150 + "end."
    text = " ".join([sentence.strip()] * 3) + "\n\n" + "x" * (MAX_SEGMENT_CHARS * 2 + 5)
    segments = split(uuid.uuid4(), text)
    assert all(0 < len(s.content) <= MAX_SEGMENT_CHARS for s in segments)
    assert "".join(s.content for s in segments if s.content.startswith("x")) == "x" * (
        MAX_SEGMENT_CHARS * 2 + 5
    )
    assert " ".join(s.content for s in segments if not s.content.startswith("x")) == " ".join(
        [sentence.strip()] * 3
    )


def test_blank_text_has_no_segments() -> None:
    assert split(uuid.uuid4(), " \n\n\t \n") == []
