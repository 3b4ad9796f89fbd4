"""Prompt lookup drafts exactly what followed the most recent earlier occurrence of the longest suffix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tinyslm.evaluate.lookup import MAX_NGRAM, MIN_NGRAM, PromptLookup


def brute_force(seq: list[int], k: int) -> list[int]:
    """The definition, by scanning: for n = MAX_NGRAM .. MIN_NGRAM, the latest start s < len - n whose
    n tokens equal the last n; the k tokens after it."""
    end = len(seq)
    for n in range(min(MAX_NGRAM, end), MIN_NGRAM - 1, -1):
        for s in range(end - n - 1, -1, -1):
            if seq[s : s + n] == seq[end - n :]:
                return seq[s + n : s + n + k]
    return []


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 5), max_size=30),
    out=st.lists(st.integers(0, 5), max_size=30),
    k=st.integers(0, 6),
)
def test_draft_matches_the_definition_after_every_token(prompt, out, k):
    look = PromptLookup(prompt)
    seq = list(prompt)
    assert look.draft(k) == brute_force(seq, k)
    for t in out:  # the index stays right as the row's output grows
        look.append(t)
        seq.append(t)
        assert look.draft(k) == brute_force(seq, k)


def test_a_loop_is_drafted_whole():
    loop = [7, 8, 9, 10, 11]
    look = PromptLookup([1, 2] + loop * 2)
    assert look.draft(5) == loop  # after "... 10 11", the earlier "10 11" was followed by the loop's start
    assert PromptLookup([1, 2, 3]).draft(4) == []  # nothing repeats: no guess
