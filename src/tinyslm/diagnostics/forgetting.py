"""Forgetting: general-knowledge probes answered by the base and the fine-tuned model, on the same items.

Fine-tuning on math can cost skills the base model had. Two multiple-choice probes measure that, scored by
log-likelihood like lm-evaluation-harness (no generation, so no answer-format confound):

* **ARC-Easy** test (``arc_easy/test.jsonl`` under the data directory): a fixed, seeded sample of
  ``limit`` items. Prompt ``Question: <stem>\\nAnswer:``, choices `` <text>`` (lm-eval's ``arc_easy``).
* **MMLU** test (``mmlu/test/<subject>_test.csv``): a fixed, seeded, subject-stratified subset of ``limit``
  items, each subject contributing its proportional share. Cloze form, as lm-eval's ``mmlu_continuation``:
  ``The following are questions (with answers) about <subject>.\\n\\nQuestion: <q>\\nAnswer:`` and each
  choice's text as the continuation. The letter form (`` A``..`` D``) sits at chance for 135M-parameter
  models, where the cloze form does not, and a probe at chance cannot show forgetting.

``acc``: the choice with the highest summed log-probability of its continuation tokens given the prompt.
``acc_norm``: the same, divided by the continuation's length in characters (lm-eval's ``acc_norm``), which
removes the bias towards short answers. Both models see the same items and prompts, so the change is a
paired comparison: the exact McNemar test on the items that only one of the two gets right.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.core.stats import mcnemar_exact

PROBE_SEED = 20240607  # fixes the probe items: every run of a study is probed on the same questions
MAX_TOKENS = 1024  # prompt + continuation; longer prompts lose their beginning (a few MMLU passages)


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: the prompt, the continuations to score, the right one's index."""

    id: str
    prompt: str
    choices: tuple[str, ...]  # as scored: each starts with the separator space
    answer: int
    subject: str | None = None


# ---------------------------------------------------------------------------------------------------
# The probe sets.


def load_arc_easy(data_dir: Path) -> list[MCItem]:
    """All ARC-Easy test questions (labels A-E or 1-4; the ``para`` retrieval context is ignored)."""
    path = data_dir / "arc_easy" / "test.jsonl"
    if not path.is_file():
        raise UserError(f"ARC-Easy probe file not found: {path} (check --data-dir / $TINYSLM_DATA_DIR)")
    items = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                q = r["question"]
                labels = [c["label"] for c in q["choices"]]
                items.append(
                    MCItem(
                        id=str(r["id"]),
                        prompt=f"Question: {q['stem'].strip()}\nAnswer:",
                        choices=tuple(f" {c['text'].strip()}" for c in q["choices"]),
                        answer=labels.index(r["answerKey"]),
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{path}:{lineno}: malformed ARC record ({type(e).__name__}: {e})") from None
    return items


def load_mmlu(data_dir: Path) -> list[MCItem]:
    """All MMLU test questions (``question,choice0..choice3,answer`` with a 0-based answer)."""
    files = sorted((data_dir / "mmlu" / "test").glob("*_test.csv"))
    if not files:
        raise UserError(
            f"MMLU probe files not found: {data_dir / 'mmlu' / 'test'}/*_test.csv "
            "(check --data-dir / $TINYSLM_DATA_DIR)"
        )
    items = []
    for path in files:
        subject = path.name.removesuffix("_test.csv")
        topic = subject.replace("_", " ")
        with path.open(encoding="utf-8", newline="") as f:
            for i, r in enumerate(csv.DictReader(f)):
                try:
                    choices = tuple(f" {str(r[f'choice{j}']).strip()}" for j in range(4))
                    items.append(
                        MCItem(
                            id=f"{subject}/{i}",
                            prompt=f"The following are questions (with answers) about {topic}.\n\n"
                            f"Question: {r['question'].strip()}\nAnswer:",
                            choices=choices,
                            answer=int(r["answer"]),
                            subject=subject,
                        )
                    )
                except (KeyError, ValueError, AttributeError) as e:
                    raise UserError(f"{path} row {i + 2}: malformed MMLU record ({e})") from None
                if not 0 <= items[-1].answer < 4:
                    raise UserError(f"{path} row {i + 2}: answer must be 0..3, got {r['answer']}")
    return items


def sample_items(items: Sequence[MCItem], limit: int | None, seed: int) -> list[MCItem]:
    """``limit`` items drawn with ``seed``, kept in file order (all of them when limit is None)."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def stratified_items(items: Sequence[MCItem], limit: int | None, seed: int) -> list[MCItem]:
    """A subject-stratified subset: each subject's share of ``limit`` is proportional to its size.

    Quotas are floored, and the seats left over go to the subjects with the largest remainders (ties broken
    by a seeded shuffle), so the subset estimates the item-weighted MMLU accuracy; within a subject the items
    are a seeded sample. With fewer seats than subjects, the subjects that get one are the seeded tie-break.
    """
    if limit is None or limit >= len(items):
        return list(items)
    rng = random.Random(seed)
    by_subject: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_subject.setdefault(it.subject or "", []).append(i)
    subjects = sorted(by_subject)
    rng.shuffle(subjects)  # the tie-break order
    total = len(items)
    quotas = {s: limit * len(by_subject[s]) // total for s in subjects}
    by_remainder = sorted(
        subjects, key=lambda s: -(limit * len(by_subject[s]) % total)
    )  # stable: ties keep shuffle
    for s in by_remainder[: limit - sum(quotas.values())]:
        quotas[s] += 1
    keep = sorted(i for s in sorted(by_subject) for i in rng.sample(by_subject[s], quotas[s]))
    return [items[i] for i in keep]


# ---------------------------------------------------------------------------------------------------
# Log-likelihood scoring.


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as lm-eval splits them: encode the whole text, cut at the context.

    Encoding the whole string keeps the tokenizer's merges across the boundary (" Paris" is one token, not
    " " + "Paris"). A BOS token is prepended when the tokenizer adds one by itself.
    """
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    if not cont:  # the continuation merged into the context's last token: score it as its own tokens
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        whole = ctx + cont
    bos = tokenizer.bos_token_id
    with_special = tokenizer("x")["input_ids"]
    if bos is not None and with_special and with_special[0] == bos:
        ctx = [bos, *ctx]
    return ctx, cont


def continuation_logprobs(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """``log p(continuation | context)`` summed over the continuation's tokens, for each (context, continuation).

    Sequences are sorted by length and right-padded in batches (real tokens keep their positions, and a
    causal model's real tokens never see the padding after them); only the positions that predict
    continuation tokens go through the output head (``logits_to_keep``) and the softmax.
    """
    import torch

    from tinyslm.models.loss import supports_logits_to_keep

    device = next(model.parameters()).device
    keep_logits = supports_logits_to_keep(model)
    encoded = []
    for context, continuation in requests:
        ctx, cont = _encode_pair(tokenizer, context, continuation)
        ids = (ctx + cont)[-(MAX_TOKENS + 1) :]
        encoded.append((ids, len(cont)))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk) - 1
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = encoded[i][0][:-1]  # the last token is only predicted, never fed
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        # Position firsts[i] predicts row i's first continuation token; only the span of positions that
        # predict continuation tokens goes through the output head (most of a row is prompt).
        firsts = {i: len(encoded[i][0]) - 1 - encoded[i][1] for i in chunk}
        lo = min(firsts.values()) if keep_logits else 0
        kwargs = {"logits_to_keep": torch.arange(lo, width, device=device)} if keep_logits else {}
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False, **kwargs
            ).logits
        for row, i in enumerate(chunk):
            ids, n_cont = encoded[i]
            first = firsts[i] - lo
            targets = torch.tensor(ids[-n_cont:], device=device)
            logp = torch.log_softmax(logits[row, first : first + n_cont].float(), dim=-1)
            out[i] = float(logp.gather(1, targets[:, None]).sum())
        if progress is not None:
            progress(len(chunk))
    return out


def score_items(items: Sequence[MCItem], logprobs: Sequence[float]) -> tuple[list[bool], list[bool]]:
    """Per item, whether ``acc`` and ``acc_norm`` pick the right choice; ``logprobs`` is flat, item by item."""
    acc, acc_norm = [], []
    k = 0
    for it in items:
        lp = logprobs[k : k + len(it.choices)]
        k += len(it.choices)
        norm = [x / max(len(c), 1) for x, c in zip(lp, it.choices, strict=True)]
        acc.append(max(range(len(lp)), key=lp.__getitem__) == it.answer)
        acc_norm.append(max(range(len(norm)), key=norm.__getitem__) == it.answer)
    if k != len(logprobs):
        raise ValueError(f"{len(logprobs)} log-probabilities for {k} choices")
    return acc, acc_norm


def requests_for(items: Sequence[MCItem]) -> list[tuple[str, str]]:
    return [(it.prompt, c) for it in items for c in it.choices]


def compare(items: Sequence[MCItem], base: Sequence[float], tuned: Sequence[float]) -> dict[str, Any]:
    """Accuracy before and after, its change and the paired exact McNemar test, from both models' scores."""
    b_acc, b_norm = score_items(items, base)
    t_acc, t_norm = score_items(items, tuned)
    n = len(items)
    out: dict[str, Any] = {"n": n}
    for name, before, after in (("acc", b_acc, t_acc), ("acc_norm", b_norm, t_norm)):
        lost = sum(x and not y for x, y in zip(before, after, strict=True))
        gained = sum(y and not x for x, y in zip(before, after, strict=True))
        out[name] = {
            "base": sum(before) / n if n else None,
            "tuned": sum(after) / n if n else None,
            "delta": (sum(after) - sum(before)) / n if n else None,
            "lost": lost,  # right before, wrong after
            "gained": gained,  # wrong before, right after
            "mcnemar_p": mcnemar_exact(lost, gained),
        }
    out["items"] = {
        "ids": [it.id for it in items],
        "base_correct": [int(x) for x in b_acc],
        "tuned_correct": [int(x) for x in t_acc],
    }
    return out


PROBES: dict[str, tuple[str, Callable[[Path], list[MCItem]], Callable[..., list[MCItem]]]] = {
    "arc_easy": ("ARC-Easy test, seeded sample", load_arc_easy, sample_items),
    "mmlu": ("MMLU test, seeded subject-stratified subset, cloze form", load_mmlu, stratified_items),
}


def probe_items(data_dir: Path, limit: int | None, seed: int = PROBE_SEED) -> dict[str, list[MCItem]]:
    """The items of every probe: the same for every run with the same limit and seed."""
    return {name: choose(load(data_dir), limit, seed) for name, (_, load, choose) in PROBES.items()}
