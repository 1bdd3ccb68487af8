"""Blocked terms: the prompt check every model server (and the router) runs before any GPU work.

A term matches case-insensitively and on word boundaries, so ``ass`` blocks "ass" but not "assassin" or
"class" (the Scunthorpe problem). Word characters are letters and digits only: ``_`` and ``-`` separate
words, as prompt writers use them (``nude_female``, ``x-rated``). A term of several words matches
them with any separators between (``naked woman`` matches "naked_woman", "Naked  Woman"). A trailing
``*`` matches any continuation of the last word (``nud*`` matches "nude", "nudity"). Text and terms are
compared after NFKC normalisation and case folding (fullwidth letters are their ASCII selves), with invisible
format characters (zero-width spaces, joiners) removed first, so they cannot split a word.

It is a list, not a classifier: spelling a word differently gets past it. The image checker
(:mod:`kubediffusion.inference.safety`) looks at what was made.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_TERM_CHARS = 200
MAX_TERMS = 10_000
_SEPARATORS = re.compile(r"[\W_]+")
_WORD_BOUNDARY_BEFORE = r"(?<![^\W_])"  # not preceded by a letter or digit
_WORD_BOUNDARY_AFTER = r"(?![^\W_])"


def normalize_text(text: str) -> str:
    """NFKC, case-folded, without format characters (category Cf: zero-width spaces, joiners, marks)."""
    visible = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return unicodedata.normalize("NFKC", visible).casefold()


def term_words(term: str) -> tuple[list[str], bool]:
    """A term's words (normalised) and whether it ends with the prefix wildcard; ValueError when empty."""
    text = term.strip()
    prefix = text.endswith("*")
    words = [word for word in _SEPARATORS.split(normalize_text(text.rstrip("*"))) if word]
    if not words:
        raise ValueError(f"blocked term {term!r} has no letters or digits")
    return words, prefix


def term_pattern(term: str) -> str:
    words, prefix = term_words(term)
    body = r"[\W_]+".join(re.escape(word) for word in words)
    return _WORD_BOUNDARY_BEFORE + body + (r"[^\W_]*" if prefix else "") + _WORD_BOUNDARY_AFTER


class BlockedTerms:
    """One compiled alternation of every term; ``find`` says which term a text contains, if any."""

    def __init__(self, terms: Iterable[str] = ()) -> None:
        self.terms = tuple(term.strip() for term in terms if term.strip())
        patterns = [f"(?P<t{index}>{term_pattern(term)})" for index, term in enumerate(self.terms)]
        self._regex = re.compile("|".join(patterns)) if patterns else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def __len__(self) -> int:
        return len(self.terms)

    def find(self, text: str) -> str | None:
        """The first term ``text`` contains (for the log, never for the client), or None."""
        if self._regex is None:
            return None
        match = self._regex.search(normalize_text(text))
        if match is None:
            return None
        return self.terms[int(str(match.lastgroup)[1:])]


def check_terms(terms: list[str]) -> list[str]:
    """Validation of a configured list: stripped, non-empty, bounded, each with a letter or digit."""
    if len(terms) > MAX_TERMS:
        raise ValueError(f"at most {MAX_TERMS} blocked terms, got {len(terms)}")
    cleaned = []
    for term in terms:
        text = term.strip()
        if not text or len(text) > MAX_TERM_CHARS:
            raise ValueError(f"blocked terms must have 1 to {MAX_TERM_CHARS} characters, got {term!r}")
        term_words(text)
        cleaned.append(text)
    return cleaned
