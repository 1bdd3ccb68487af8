"""Blocked terms: case-insensitive, on word boundaries (letters and digits make words), multi-word terms
across any separators, a trailing ``*`` for prefixes, normalised text (NFKC, case folding, no invisible
format characters)."""

from __future__ import annotations

import pytest

from kubediffusion.api.moderation import BlockedTerms

TERMS = BlockedTerms(["ass", "naked woman", "nud*", "Forbidden Fruit", "r2d2"])


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("kick ASS", "ass"),
        ("ass.", "ass"),
        ("(ass)", "ass"),
        ("a Naked_Woman", "naked woman"),
        ("naked - woman", "naked woman"),
        ("naked\nwoman", "naked woman"),
        ("nudity is art", "nud*"),
        ("nude", "nud*"),
        ("\uff4e\uff55\uff44\uff45", "nud*"),  # fullwidth letters
        ("nu\u200bde", "nud*"),  # a zero-width space does not split the word
        ("the forbidden-fruit!", "Forbidden Fruit"),
        ("R2D2 beeps", "r2d2"),
    ],
)
def test_a_term_matches(text: str, term: str) -> None:
    assert TERMS.find(text) == term


@pytest.mark.parametrize(
    "text",
    [
        "an assassin in class",  # the Scunthorpe problem: not inside a word
        "passage",
        "naked",  # one word of a two-word term
        "woman naked",
        "denude",  # the wildcard extends the end of a word, not its start
        "forbidden fruits",  # no wildcard, no plural
        "r2d22",
        "",
    ],
)
def test_a_term_does_not_match(text: str) -> None:
    assert TERMS.find(text) is None


def test_no_terms_match_nothing() -> None:
    empty = BlockedTerms([])
    assert not empty and len(empty) == 0 and empty.find("anything at all") is None
    assert len(TERMS) == 5 and TERMS


def test_regex_characters_in_terms_are_literal() -> None:
    terms = BlockedTerms(["a.b (c)"])
    assert terms.find("a b c") == "a.b (c)"  # punctuation separates words
    assert terms.find("axb c") is None
