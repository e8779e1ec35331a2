"""Deterministic segmentation: the same text always yields the same segments with the same ids.

Paragraphs (split on blank lines) with whitespace collapsed; a paragraph longer than `max_chars` is packed
greedily from sentences, a sentence longer than that from words, a word longer than that is cut.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

MAX_SEGMENT_CHARS = 1000

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SegmentText:
    id: uuid.UUID
    position: int
    content: str


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _pack(pieces: list[str], max_chars: int, sep: str) -> Iterator[str]:
    current = ""
    for piece in pieces:
        candidate = f"{current}{sep}{piece}" if current else piece
        if len(candidate) <= max_chars:
            current = candidate
            continue
        if current:
            yield current
        current = piece
    if current:
        yield current


def _chunks(paragraph: str, max_chars: int) -> Iterator[str]:
    if len(paragraph) <= max_chars:
        yield paragraph
        return
    for sentence_group in _pack(_SENTENCE_END.split(paragraph), max_chars, " "):
        if len(sentence_group) <= max_chars:
            yield sentence_group
            continue
        for word_group in _pack(sentence_group.split(" "), max_chars, " "):
            for start in range(0, len(word_group), max_chars):
                yield word_group[start : start + max_chars]


def split(document_id: uuid.UUID, text: str, *, max_chars: int = MAX_SEGMENT_CHARS) -> list[SegmentText]:
    contents = [
        chunk
        for raw in _PARAGRAPH.split(text.replace("\r\n", "\n"))
        if (paragraph := _WHITESPACE.sub(" ", raw).strip())
        for chunk in _chunks(paragraph, max_chars)
    ]
    return [
        SegmentText(
            id=uuid.uuid5(document_id, f"{position}:{text_sha256(content)}"),
            position=position,
            content=content,
        )
        for position, content in enumerate(contents)
    ]
