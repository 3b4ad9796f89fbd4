"""Prompt lookup drafts exactly what followed the most recent earlier occurrence of the longest suffix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tinyslm.evaluate.lookup import MAX_GUESSES, MAX_NGRAM, MIN_NGRAM, PromptLookup, match_limits


def brute_force(seq: list[int], k: int, limits: list[int] | None = None) -> list[int]:
    """The definition, by scanning: for n = MAX_NGRAM .. MIN_NGRAM, the latest start s < len - n whose
    n tokens equal the last n; the k tokens after it (``limits[n]`` of them, if given)."""
    end = len(seq)
    for n in range(min(MAX_NGRAM, end), MIN_NGRAM - 1, -1):
        for s in range(end - n - 1, -1, -1):
            if seq[s : s + n] == seq[end - n :]:
                return seq[s + n : s + n + (k if limits is None else limits[n])]
    return []


def longest_match(seq: list[int]) -> int:
    end = len(seq)
    for n in range(min(MAX_NGRAM, end), MIN_NGRAM - 1, -1):
        if any(seq[s : s + n] == seq[end - n :] for s in range(end - n)):
            return n
    return 0


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


@settings(max_examples=300, deadline=None)
@given(
    seq=st.lists(st.integers(0, 4), max_size=40),
    limits=st.lists(st.integers(0, 5), min_size=MAX_NGRAM + 1, max_size=MAX_NGRAM + 1),
)
def test_guess_takes_as_many_as_its_match_length_allows(seq, limits):
    look = PromptLookup(seq)
    assert look.match_length() == longest_match(seq)
    assert look.guess(limits) == brute_force(seq, 0, limits)


def test_match_limits_guess_less_after_short_matches_and_more_for_few_rows():
    assert match_limits(3, rows=16, slots=16) == [0, 1, 2, 3]
    assert match_limits(3, rows=9, slots=16) == [0, 1, 2, 3]
    assert match_limits(3, rows=4, slots=16) == [0, 2, 4, 6]
    assert match_limits(3, rows=1, slots=16) == [0, 8, 16, MAX_GUESSES]
    assert match_limits(1, rows=16, slots=16) == [0, 0, 0, 1]  # K = 1: only after a 3-token match
    assert match_limits(0, rows=2, slots=16) == [0, 0, 0, 0]


def test_draft_policy_script_replays_a_finished_evaluation(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """scripts/draft_policy.py: guesses on a looping output are right, on text that never repeats there
    are none; with no guesses a row makes one token per step at the modelled cost of one fed token."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "draft_policy.py"
    spec = importlib.util.spec_from_file_location("draft_policy", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bench = tmp_path / "run" / "eval" / "gsm8k"
    bench.mkdir(parents=True)
    (bench / "results.json").write_text(json.dumps({"model_ref": str(tiny_model_dir)}))
    loop = "She has 3 apples and 4 pears. " * 8
    rows = [{"prompt": "How many apples?", "output": loop}, {"prompt": "Name it.", "output": "Zebra"}]
    (bench / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    loaded = script.load_rows(tmp_path / "run", "gsm8k", 10, 256)
    assert len(loaded) == 2 and all(prompt and output for prompt, output in loaded)
    tried, right = script.acceptance(loaded[:1], 4)
    assert tried[(3, 0)] > 10 and right[(3, 0)] / tried[(3, 0)] > 0.8  # inside the loop: right
    assert script.replay(loaded, [0, 0, 0, 0], 80.0, 2.0, 16) == (80.0 / 16 + 2.0, 1.0)
    ms, per_step = script.replay(loaded[:1], match_limits(3, 16, 16), 80.0, 2.0, 16)
    assert per_step > 2 and ms < 80.0 / 16 + 2.0
    monkeypatch.setattr(sys, "argv", ["draft_policy.py", str(tmp_path / "run"), "--rows", "2"])
    script.main()
    out = capsys.readouterr().out
    assert "match length | guess" in out and "match_limits (K=3)" in out
