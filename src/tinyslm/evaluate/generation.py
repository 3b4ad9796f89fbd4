"""Greedy decoding: prompts in, texts out.

A row stops at EOS, at the end of its answer line (``#### X`` or a ``\\boxed{}``), or when it starts a new
``Question:``; the run-on text is cut from the returned output. Engines, all giving the same tokens:

* ``fast`` (default) on Llama-family models: continuous batching over :class:`tinyslm.evaluate.decoder.SlotDecoder`.
  ``batch_size`` rows decode at once; a row that stops hands its slot to the next prompt (longest first),
  and the prompts' shared prefix is computed once for the whole run. Each step also verifies tokens guessed
  by prompt lookup (:mod:`tinyslm.evaluate.lookup`) and keeps those greedy decoding would have produced.
* ``fast`` on other architectures: length-sorted fixed batches through the model's own forward with
  transformers' KV cache; the batch's shared prefix is computed once and finished rows are dropped.
* ``hf``: ``model.generate`` on the same length-sorted, left-padded batches with a stopping criterion: the
  reference the others are tested against.
"""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from tinyslm.evaluate.decoder import SlotDecoder, unsupported_reason
from tinyslm.evaluate.llamacpp import LlamaCppDecoder, LlamaCppModel
from tinyslm.evaluate.lookup import DRAFT_TOKENS, PromptLookup, match_limits
from tinyslm.models.load import base_model

# The end of an answer line: "#### 42" or a closed \boxed{...} followed by a newline.
ANSWER_LINE = re.compile(r"####[^\n]*\S[^\n]*\n|\\boxed\{.*\}[^\n]*\n")
RUN_ON = re.compile(r"\n\s*Question:|^\s*Question:")


@dataclass(frozen=True)
class Generation:
    text: str  # decoded continuation, cut at the stop point
    n_tokens: int  # generated tokens up to and including the stop point (no padding)
    prompt_tokens: int


class StopCheck:
    """Whether a row's generated ids have reached a stop point (:func:`cut_at_stop` on their text), decoding
    the text only when the newest token could have completed one.

    Both stop points end in a character of ``"\\n:"`` (the answer line's newline, run-on ``Question:``'s
    colon), so a match first appears on the token that adds that character; any other token leaves the
    answer as it was. Decoding a row's whole text after every token costs O(length) each time, for every
    row of every step: host work that grows with the slot count (256 on a GPU) while a replayed GPU step
    hardly does. Which tokens can end a stop point is looked up once per token id.
    """

    ENDS = "\n:"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.may_end: dict[int, bool] = {}

    def __call__(self, ids: list[int]) -> bool:
        tok = ids[-1]
        may = self.may_end.get(tok)
        if may is None:
            text = self.tokenizer.decode([tok], skip_special_tokens=True)
            may = self.may_end[tok] = any(c in text for c in self.ENDS)
        return may and cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True))[1]


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


def greedy(logits: Any) -> torch.Tensor:
    """The greedy token per row of ``logits`` [..., V] (a tensor, or llama.cpp's numpy array): ``argmax``'s
    answer, ties to the lowest id.

    ``max(-1).indices`` rather than ``argmax(-1)``: both return the first maximal index (documented for
    both), but on CPU ``max`` reduces a 49k-entry vocabulary row about 2.7x faster (1.3 against 3.6 ms for
    28 rows on one thread), which was 2% of a decode run."""
    return torch.as_tensor(logits).max(-1).indices


def eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for src in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return sorted(ids)


def _cache_arg(model) -> str:
    """transformers 5.2x calls the KV cache ``cache``; earlier releases call it ``past_key_values``."""
    return (
        "cache" if "cache" in inspect.signature(base_model(model).forward).parameters else "past_key_values"
    )


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


# A shared prefix shorter than this is recomputed per row: one extra forward pass would cost more than it saves.
MIN_SHARED_PREFIX = 16


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the one whose logits
    start decoding)."""
    if len(rows) < 2:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return max(n, 0)


@torch.inference_mode()  # generate() has it too; this keeps any direct caller (the bench) from building a graph
def _decode_batch_fast(
    model, tokenizer, rows: list[list[int]], *, max_new_tokens: int, stop_ids: list[int], pad_id: int, device
) -> list[list[int]]:
    """Greedy-decode one batch; each row's ids end at (and include) its stop token.

    Two savings over ``model.generate``, neither of which changes what is computed for a row:

    * **Shared prefix, computed once.** Prompts of one benchmark start alike (system prompt, instruction,
      and with k shots every exemplar: ~90% of a 3-shot GSM8K prompt). That prefix goes through the model
      once at batch 1, its KV cache is repeated across the batch, and only each row's own suffix is
      prefilled, left-padded *after* the prefix (padding sits in the middle, masked out; position ids
      count real tokens only, so every row sees the positions it would see alone).
    * **Finished rows leave.** Rows that stop are dropped from the batch and from the KV cache, so later
      steps cost only what is still being generated.
    """
    cache_kw = _cache_arg(model)
    stop_set = set(stop_ids)
    shared = shared_prefix_length(rows)
    cache = None
    if shared >= MIN_SHARED_PREFIX:
        prefix = torch.tensor([rows[0][:shared]], device=device)
        out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
        cache = _returned_cache(out)
        cache.batch_repeat_interleave(len(rows))
    else:
        shared = 0
    suffixes = [r[shared:] for r in rows]
    width = max(len(r) for r in suffixes)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    own = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(suffixes):
        ids[i, width - len(r) :] = torch.tensor(r)
        own[i, width - len(r) :] = 1
    mask = torch.cat([torch.ones((len(rows), shared), dtype=torch.long), own], dim=-1)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    kwargs = {cache_kw: cache} if cache is not None else {}
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kwargs
    )
    cache = _returned_cache(out)
    alive = list(range(len(rows)))  # original row of each current batch row
    gen: list[list[int]] = [[] for _ in rows]
    next_pos = pos[:, -1:] + 1
    while True:
        nxt = greedy(out.logits[:, -1, :])
        keep = []
        for b, (row, tok) in enumerate(zip(alive, nxt.tolist(), strict=True)):
            gen[row].append(tok)
            done = (
                tok in stop_set
                or len(gen[row]) >= max_new_tokens
                or cut_at_stop(tokenizer.decode(gen[row], skip_special_tokens=True))[1]
            )
            if not done:
                keep.append(b)
        if not keep:
            return gen
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(sel)
            nxt, mask, next_pos = nxt[sel], mask[sel], next_pos[sel]
            alive = [alive[b] for b in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        cache = _returned_cache(out)
        next_pos = next_pos + 1


def _decode_batch_hf(
    model, tokenizer, rows: list[list[int]], *, max_new_tokens: int, stop_ids: list[int], pad_id: int, device
) -> list[list[int]]:
    """The same batch through ``model.generate`` (the reference), cut the same way."""
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(device)
    prompt_len = batch["input_ids"].shape[1]
    stopper = _StopOnText(tokenizer, prompt_len)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id
    )
    out = model.generate(**batch, generation_config=cfg, stopping_criteria=StoppingCriteriaList([stopper]))
    result = []
    for row, ids in enumerate(out[:, prompt_len:].tolist()):
        n = stopper.stopped_at.get(row, len(ids))
        for j, t in enumerate(ids[:n]):
            if t in stop_ids:
                n = j + 1
                break
        result.append(ids[:n])
    return result


BATCH_ENGINES = {"fast": _decode_batch_fast, "hf": _decode_batch_hf}
ENGINE_NAMES = tuple(BATCH_ENGINES)


@torch.inference_mode()
def _decode_continuous(
    dec,
    tokenizer,
    rows: list[list[int]],
    shared: int,
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    draft: int = 0,
) -> Iterator[tuple[int, list[int]]]:
    """Greedy-decode every row with continuous batching; yields ``(row, ids)`` as each row finishes.

    ``dec`` is a slot decoder (:class:`SlotDecoder`, or llama.cpp's with the same interface) built with
    the rows' first ``shared`` tokens as its prefix. Up to ``dec.slots`` rows decode at once (the batch
    size). When a row stops, its slot takes the next prompt (longest first) instead of idling until the
    batch's longest answer is done: with answers of 30 to 300 tokens, ``generate``'s fixed batches spend
    much of their compute on rows that have already finished. The prompts' shared prefix (system turn,
    instruction, few-shot exemplars) is computed once for the whole run. Each row sees exactly the tokens
    and positions it would see decoded alone.

    ``draft`` > 0 (on a decoder with ``extend``): each step also feeds every row tokens guessed by prompt
    lookup (:mod:`tinyslm.evaluate.lookup`): ``draft`` after a 3-token match at full occupancy, fewer
    after a shorter one, more when few rows decode (``match_limits``). It keeps the longest run of guesses
    that the step's own greedy choices confirm, plus the model's next token after them. The tokens are the
    ones plain greedy decoding produces; a step yields one or more of them per row.
    """
    stop_set, stopped = set(stop_ids), StopCheck(tokenizer)
    queue = deque(sorted(range(len(rows)), key=lambda i: -len(rows[i])))
    in_slot: list[int] = []  # the row each active slot decodes
    gen: dict[int, list[int]] = {}
    draft = draft if hasattr(dec, "extend") else 0
    history: dict[int, PromptLookup] = {}
    while queue or in_slot:
        new = [queue.popleft() for _ in range(min(dec.slots - len(in_slot), len(queue)))]
        prompts = [rows[i][shared:] for i in new]
        kept = None
        if not draft:  # a pass either starts the new rows (the others wait) or steps every row
            first = len(in_slot) if new else 0
            logits = dec.admit(prompts) if new else dec.step([gen[i][-1] for i in in_slot])
            made = [[t] for t in greedy(logits).tolist()]
        else:  # one pass: each decoding row's last token and guesses, and the new rows' prompts
            first = 0
            runs = []
            # guesses per row by the length of the match they come from; more when few rows decode
            limits = match_limits(draft, len(in_slot), dec.slots)
            for s, i in enumerate(in_slot):
                # and no more than fit the token budget and the slot's cache stretch
                room = min(max_new_tokens - len(gen[i]) - 1, dec.room(s) - 1)
                runs.append([gen[i][-1], *history[i].guess([min(x, room) for x in limits])])
            best = greedy(dec.extend(runs + prompts, new=len(new))).tolist()
            made, at = [], 0
            for run in runs:
                y = best[at : at + len(run)]  # the greedy token after each fed token
                at += len(run)
                ok = 0  # guesses confirmed: guess j+1 is the greedy choice after fed token j
                while ok + 1 < len(run) and run[ok + 1] == y[ok]:
                    ok += 1
                made.append(y[: ok + 1])
            made += [[t] for t in best[at:]]  # a new row's first token
            # cached from here on: the fed last token and the confirmed guesses; a new row's whole prompt
            kept = [len(m) for m in made[: len(runs)]] + [len(p) for p in prompts]
        in_slot += new
        gen.update((i, []) for i in new)
        if draft:
            history.update((i, PromptLookup(rows[i])) for i in new)
        finished = []
        for s, toks in enumerate(made, start=first):
            ids = gen[in_slot[s]]
            for tok in toks:
                ids.append(tok)
                if draft:
                    history[in_slot[s]].append(tok)
                if tok in stop_set or len(ids) >= max_new_tokens or stopped(ids):
                    finished.append(s)
                    break
        if kept is not None:
            dec.keep(kept)
        for s in reversed(finished):  # highest slot first: the row moved into s is one still decoding
            row = in_slot[s]
            history.pop(row, None)
            yield row, gen.pop(row)
            dec.release(s)
            in_slot[s] = in_slot[-1]
            in_slot.pop()


def _shared_prefix(rows: list[list[int]]) -> int:
    shared = shared_prefix_length(rows)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _decode_batched(
    decode_batch,
    model,
    tokenizer,
    rows: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    batch_size: int,
    pad_id: int,
    device,
) -> Iterator[tuple[int, list[int]]]:
    """Length-sorted fixed batches through ``decode_batch``; yields ``(row, ids)`` batch by batch."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        gen = decode_batch(
            model,
            tokenizer,
            [rows[i] for i in idx],
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            pad_id=pad_id,
            device=device,
        )
        yield from zip(idx, gen, strict=True)


def decode_rows(
    model,
    tokenizer,
    rows: list[list[int]],
    *,
    engine: str = "fast",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    stop_ids: list[int] | None = None,
    draft: int | None = None,
    graph: bool = False,
    compile_step: bool = False,
) -> Iterator[tuple[int, list[int]]]:
    """Greedy-decode tokenized prompts; yields ``(row index, generated ids)`` in the order rows finish.

    ``engine="fast"``: continuous batching over our slot decoder for Llama-family models; for other
    architectures, fixed batches through the model's own forward (shared prefix once, finished rows
    dropped). ``engine="hf"``: fixed batches through ``model.generate``, the reference. Every path gives
    the same tokens; each row's ids end at (and include) its stop token. ``draft``: tokens guessed per
    row and step by prompt lookup on the slot decoder (default ``DRAFT_TOKENS``; 0 turns it off).
    ``graph``: the slot decoder's steps have a fixed shape (:meth:`SlotDecoder.fixed_step`), replayed from
    a CUDA graph on a GPU; guesses are then off (they would change the shape from step to step).
    ``compile_step`` (with ``graph``): that step is compiled with ``torch.compile`` before it is captured
    (fewer, fused kernels; see :class:`SlotDecoder`). Same greedy choices in fp32, tested on a CPU.
    """
    if engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_NAMES)}")
    if not rows:
        return
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = eos_ids(model, tokenizer) if stop_ids is None else stop_ids
    shared = _shared_prefix(rows)
    capacity = max(len(r) for r in rows) - shared + max_new_tokens
    if isinstance(model, LlamaCppModel):  # a GGUF: llama.cpp's forward pass, this loop
        dec = LlamaCppDecoder(
            model, slots=min(batch_size, len(rows)), capacity=capacity, prefix=rows[0][:shared]
        )
        try:
            yield from _decode_continuous(
                dec, tokenizer, rows, shared, max_new_tokens=max_new_tokens, stop_ids=stop_ids
            )
        finally:
            dec.close()
        return
    device = next(model.parameters()).device
    if engine == "fast" and unsupported_reason(model, max(len(r) for r in rows) + max_new_tokens) is None:
        dec = SlotDecoder(
            model,
            slots=min(batch_size, len(rows)),
            capacity=capacity,
            device=device,
            prefix=rows[0][:shared],
            graph=graph,
            compile_step=compile_step,
        )
        yield from _decode_continuous(
            dec,
            tokenizer,
            rows,
            shared,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            draft=0 if graph else DRAFT_TOKENS if draft is None else draft,
        )
    else:
        yield from _decode_batched(
            BATCH_ENGINES[engine],
            model,
            tokenizer,
            rows,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            batch_size=batch_size,
            pad_id=tokenizer.pad_token_id,
            device=device,
        )


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    add_special_tokens: bool = False,
    engine: str = "fast",
    draft: int | None = None,
    graph: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, Generation]]:
    """Greedy-decode ``prompts``; yields ``(prompt index, Generation)`` as each one finishes.

    Results come back as rows finish (not in input order) so the caller can stream them to disk.
    ``on_progress(n_rows_done, n_new_tokens)`` is called after each result.
    ``add_special_tokens`` is False for chat prompts (the template already holds BOS and friends).
    """
    enc = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    for i, ids in decode_rows(
        model,
        tokenizer,
        enc,
        engine=engine,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        draft=draft,
        graph=graph,
    ):
        text, _ = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True))
        yield i, Generation(text=text, n_tokens=len(ids), prompt_tokens=len(enc[i]))
        if on_progress:
            on_progress(1, len(ids))
