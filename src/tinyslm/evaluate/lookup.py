"""Draft tokens by prompt lookup: guess a row's next tokens from its own prompt and output.

Greedy decoding of a small model repeats itself a great deal: it copies names and numbers from the
question ("Janet's ducks lay 16 eggs per day"), restates its own intermediate results, and, when it falls
into a repetition loop, emits the same span again and again until the token budget runs out. Where the
row's last few tokens occurred earlier in its prompt or output, the tokens that followed that occurrence
are a good guess of what comes next. The decoder then feeds the row its last token *and* the guesses in
one forward pass and keeps the guesses the model itself would have produced (greedy verification), so the
output is the model's own greedy output, only computed in fewer passes. This is the "prompt lookup"
candidate generator of transformers' assisted generation and llama.cpp's lookup decoding, without a draft
model.

Measured on SmolLM2-135M-Instruct's zero-shot GSM8K outputs (300 rows, this project's reference study):
drafting up to 3 tokens from the most recent earlier match of the last 3, 2 or 1 tokens, 48% of drafted
tokens are right and a decode pass yields 2.2 tokens per row instead of 1.
"""

from __future__ import annotations

from collections.abc import Iterable

# Guesses per row and step after a MAX_NGRAM-token match at full occupancy (``--draft-tokens``; 0 = off);
# shorter matches and fuller batches guess less (``match_limits``).
DRAFT_TOKENS = 3
MAX_GUESSES = 16  # per row and step, however few rows decode

# Longest and shortest n-gram matched against the row's history (the longest match is tried first).
MAX_NGRAM = 3
MIN_NGRAM = 1


class PromptLookup:
    """One row's token history with an index from every n-gram (``MIN_NGRAM`` .. ``MAX_NGRAM`` tokens) to
    where its most recent occurrence is followed by another token; ``draft`` reads it in O(``MAX_NGRAM``).
    """

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self.seq: list[int] = []
        # n-gram -> index of the token that followed its most recent occurrence
        self._next: dict[tuple[int, ...], int] = {}
        for t in ids:
            self.append(t)

    def append(self, token: int) -> None:
        """Add the row's next token; the n-grams it completes a continuation for become findable."""
        seq, end = self.seq, len(self.seq)
        # every n-gram ending just before this token is now followed by it (at index ``end``)
        for n in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
            self._next[tuple(seq[end - n : end])] = end
        seq.append(int(token))

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the most recent earlier occurrence of the longest suffix
        (``MAX_NGRAM`` tokens down to ``MIN_NGRAM``) found in the history; empty when none occurred."""
        return self.guess([k] * (MAX_NGRAM + 1))

    def match_length(self) -> int:
        """Tokens in the longest suffix of the history that occurred before (0: none did)."""
        seq, end = self.seq, len(self.seq)
        for n in range(min(MAX_NGRAM, end), MIN_NGRAM - 1, -1):
            if tuple(seq[end - n :]) in self._next:
                return n
        return 0

    def guess(self, limits: list[int]) -> list[int]:
        """``draft``, with as many tokens as ``limits[n]`` allows when the longest suffix found has ``n``
        tokens: a longer match is a better guess (see ``match_limits``)."""
        seq, end = self.seq, len(self.seq)
        for n in range(min(MAX_NGRAM, end), MIN_NGRAM - 1, -1):
            at = self._next.get(tuple(seq[end - n :]))
            if at is not None:
                return seq[at : at + limits[n]] if limits[n] > 0 else []
        return []


def match_limits(k: int, rows: int, slots: int) -> list[int]:
    """Guesses per row for this step by the length of the match they come from: ``k`` after a
    ``MAX_NGRAM``-token match, one fewer per token shorter; times ``slots // (2 x rows)`` (at least 1)
    when few rows decode, since a step's fixed cost (reading the weights) is then shared by fewer tokens;
    at most ``MAX_GUESSES``.

    Measured on SmolLM2-135M-Instruct's zero-shot GSM8K outputs (reference study, 60 rows): the first guess
    is right 76% of the time after a 3-token match, 62% after 2 and 35% after 1, and each further guess
    of a 3-token match 79-85% (given the ones before it). A step at 16 rows costs about 80 ms plus 1.8 ms per
    fed token, so a guess pays above about 27% at full occupancy and far lower with few rows. Replaying
    the outputs through that cost model (``scripts/draft_policy.py``), these limits cost 5.20 ms per token
    at 16 rows against 5.50 for one guess per row (what the schedule they replaced allowed a full batch),
    7.86 against 8.04 for three at 8 rows, 12.6 against 13.0 at 4. Measured end to end on
    ``bench/speed.py --quick``'s prompts, in one process, two alternating rounds: 132.7 and 135.0 tokens/s
    against 129.3 and 132.3 (+2-3%), the same tokens.
    """
    scale = max(1, slots // (2 * max(rows, 1)))
    return [0] + [min(max(k - (MAX_NGRAM - n), 0) * scale, MAX_GUESSES) for n in range(1, MAX_NGRAM + 1)]
