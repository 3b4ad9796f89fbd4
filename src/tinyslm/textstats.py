"""Properties of generated text that the report and the diagnostics both count.

Pure functions over one model output; no model, no tokenizer. Word-level, because a user reading a
prediction sees words, and the same loop must count the same way whatever tokenizer produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REPEATS = 4  # "the same n-gram repeated 4+ times in a row" (the study's repetition-loop definition)

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class RepetitionLoop:
    ngram: str  # the repeated words, joined by single spaces
    n: int  # words in the n-gram
    repeats: int  # consecutive copies found (>= the threshold asked for)
    start_word: int  # index of the first copy's first word


def find_repetition_loop(text: str, min_repeats: int = REPEATS, max_n: int = 64) -> RepetitionLoop | None:
    """The shortest n-gram (1 <= n <= max_n words) that occurs ``min_repeats`` or more times back to back.

    For each n, position i starts a run of k copies exactly when words[j] == words[j + n] for the
    (k - 1) * n positions j from i on; so one pass per n over that equality array suffices
    (O(words x max_n)). Whitespace is normalised; punctuation stays part of a word, so "5 + 5 + 5 + 5"
    counts only if the same tokens come back.
    """
    words = _WORD.findall(text)
    need_copies = max(2, min_repeats)
    for n in range(1, min(max_n, len(words) // need_copies) + 1):
        run = 0
        for j in range(len(words) - n):
            run = run + 1 if words[j] == words[j + n] else 0
            if run >= (need_copies - 1) * n:
                # words[start .. j + n] is periodic with period n; extend it to count every copy.
                start, end = j + 1 - run, j
                while end + 1 + n < len(words) and words[end + 1] == words[end + 1 + n]:
                    end += 1
                copies = (end - start + 1 + n) // n
                return RepetitionLoop(" ".join(words[start : start + n]), n, copies, start)
    return None


def has_repetition_loop(text: str, min_repeats: int = REPEATS) -> bool:
    """Whether ``text`` repeats some n-gram ``min_repeats``+ times in a row (see find_repetition_loop)."""
    return find_repetition_loop(text, min_repeats) is not None
