"""Batched greedy decoding: prompts in, texts out.

Prompts are sorted by length (longest first, so an out-of-memory shows up on the first batch, and
rows of similar length share a batch so little compute goes to padding), left-padded, and decoded
greedily. A row stops at EOS, at the end of its answer line (``#### X`` or a ``\\boxed{}``), or when it
starts a new ``Question:``; the run-on text is cut from the returned output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

# The end of an answer line: "#### 42" or a closed \boxed{...} followed by a newline.
ANSWER_LINE = re.compile(r"####[^\n]*\S[^\n]*\n|\\boxed\{.*\}[^\n]*\n")
RUN_ON = re.compile(r"\n\s*Question:|^\s*Question:")


@dataclass(frozen=True)
class Generation:
    text: str  # decoded continuation, cut at the stop point
    n_tokens: int  # generated tokens up to and including the stop point (no padding)
    prompt_tokens: int


def cut_at_stop(text: str) -> tuple[str, bool]:
    """Cut ``text`` after its answer line or before a run-on ``Question:``; say whether it stopped."""
    cuts = []
    m = ANSWER_LINE.search(text)
    if m:
        cuts.append(m.end())
    m = RUN_ON.search(text)
    if m:
        cuts.append(m.start())
    if not cuts:
        return text, False
    return text[: min(cuts)], True


class _StopOnText(StoppingCriteria):
    """Marks a row done as soon as its decoded continuation reaches a stop point."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stopped_at: dict[int, int] = {}  # row -> number of generated tokens when it stopped

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        gen = input_ids[:, self.prompt_len :]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if row in self.stopped_at:
                done[row] = True
                continue
            text = self.tokenizer.decode(gen[row], skip_special_tokens=True)
            if cut_at_stop(text)[1]:
                self.stopped_at[row] = gen.shape[1]
                done[row] = True
        return done


def eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return sorted(ids)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    add_special_tokens: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, Generation]]:
    """Greedy-decode ``prompts`` in length-sorted batches; yields ``(prompt index, Generation)``.

    Results come back batch by batch (not in input order) so the caller can stream them to disk.
    ``on_progress(n_rows_done, n_new_tokens)`` is called after each batch.
    ``add_special_tokens`` is False for chat prompts (the template already holds BOS and friends).
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    stop_ids = eos_ids(model, tokenizer)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt").to(device)
        prompt_len = batch["input_ids"].shape[1]
        stopper = _StopOnText(tokenizer, prompt_len)
        out = model.generate(
            **batch, generation_config=cfg, stopping_criteria=StoppingCriteriaList([stopper])
        )
        gen = out[:, prompt_len:].tolist()
        n_new = 0
        for row, i in enumerate(idx):
            ids = gen[row]
            n = stopper.stopped_at.get(row, len(ids))
            for j, t in enumerate(ids[:n]):
                if t in stop_ids:
                    n = j + 1
                    break
            text, _ = cut_at_stop(tokenizer.decode(ids[:n], skip_special_tokens=True))
            n_new += n
            yield i, Generation(text=text, n_tokens=n, prompt_tokens=len(enc[i]))
        if on_progress:
            on_progress(len(idx), n_new)

