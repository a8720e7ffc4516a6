"""Keep ``<think>`` sections, which some reasoning models emit, out of replies."""

from __future__ import annotations

import re

OPEN = "<think>"
CLOSE = "</think>"
_SECTION = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def strip_think(text: str) -> str:
    """Remove every think section; an unclosed one runs to the end of the text.

    Text without a think section comes back unchanged.
    """
    if OPEN not in text:
        return text
    return _SECTION.sub("", text).strip()


class ThinkFilter:
    """Drop think sections from streamed text whose tags may be split across pieces."""

    def __init__(self) -> None:
        self._inside = False
        self._pending = ""

    def feed(self, piece: str) -> str:
        """Return the part of ``piece`` that is outside think sections and safe to show."""
        text = self._pending + piece
        self._pending = ""
        shown: list[str] = []
        while text:
            tag = CLOSE if self._inside else OPEN
            index = text.find(tag)
            if index >= 0:
                if not self._inside:
                    shown.append(text[:index])
                text = text[index + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _partial_tag_length(text, tag)
            if not self._inside:
                shown.append(text[: len(text) - keep])
            self._pending = text[len(text) - keep :] if keep else ""
            break
        return "".join(shown)


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could start ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
