"""Training data: a dataset name -> :class:`Example` rows -> token ids with completion-only labels.

Three kinds of ``--dataset``:

* ``gsm8k-train`` (the offline default): the 7,473 GSM8K training problems, from
  ``<data dir>/gsm8k/train.jsonl`` or, with no data directory, the Hub. Parsed by the benchmark
  registry's GSM8K reader, so the targets are the very solutions that serve as few-shot exemplars:
  calculator annotations ``<<..>>`` removed, ``#### N`` kept.
* ``orcamath``: a seeded, stratified 10,000-row subset of ``microsoft/orca-math-word-problems-200k``
  (Hub only), disjoint from the 500 rows that the ``orcamath`` benchmark holds out
  (see :func:`orcamath_train_indices`).
* any JSONL file or Hub dataset id (``owner/name``, split ``train``) with ``--question-field`` and
  ``--answer-field``: the answer is the target; one without a ``#### `` line gets ``#### <last number>``.
  Calculator annotations ``<<..>>`` are removed from every target.

Encoding (:func:`encode_examples`) builds each training sequence from exactly what evaluation will show
the model, the zero-shot prompt of :func:`tinyslm.data.prompts.build_prompt`, followed by the target and the
token that ends the model's turn (the chat template's end-of-turn, or EOS for base models), so a
fine-tuned model learns to stop. Only target tokens carry labels (completion-only loss); prompt and
padding are ``IGNORE_INDEX``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.data.benchmarks import (
    FEWSHOT_POOLS,
    HUB_ID,
    Example,
    HubSource,
    clean_gsm8k_solution,
    load_fewshot_pool,
    load_hub_rows,
    orcamath_answer,
    orcamath_holdout_indices,
    read_jsonl_records,
    record_text,
    resolve_data_dir,
)
from tinyslm.data.prompts import build_messages, build_prompt, format_target, is_chat_tokenizer
from tinyslm.scoring.gold import gold_from_gsm8k_answer

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding): torch's cross_entropy default

ORCAMATH_HUB = HubSource("microsoft/orca-math-word-problems-200k", "train")
ORCAMATH_TRAIN_SEED = 20240602
ORCAMATH_TRAIN_SIZE = 10_000
# The validation split's seed: fixed, not the training seed, so that every trial, method and seed of a study
# holds out the very same rows and their validation metrics compare like with like.
VAL_SEED = 20251203


NAMED_DATASETS = {
    "gsm8k-train": "GSM8K train split, 7,473 problems (offline file or Hub)",
    "orcamath": f"Orca-Math: seeded stratified {ORCAMATH_TRAIN_SIZE:,} rows, disjoint from the eval holdout",
}


@dataclass
class TrainingSet:
    name: str
    source: str  # file path or hub:<id>
    examples: list[Example]
    answer_style: str = "number"
    info: dict[str, Any] = field(default_factory=dict)  # how the rows were chosen, for run.json
    validation: list[Example] = field(default_factory=list)  # held-out rows (--val-size), never trained on


# ---------------------------------------------------------------------------------------------------
# Loading rows.


def load_training_set(
    dataset: str,
    *,
    data_dir: str | Path | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    limit: int | None = None,
    val_size: int = 0,
    val_seed: int = VAL_SEED,
) -> TrainingSet:
    """Rows of ``dataset`` (a :data:`NAMED_DATASETS` name, JSONL path or Hub id), the first ``limit`` kept.

    ``val_size`` > 0 first draws that many rows (``random.Random(val_seed)``, from all rows) into
    ``validation``; training takes the first ``limit`` of the rest, so the two never share a row and the
    split does not depend on ``limit``. GSM8K-train and Orca-Math's training rows are disjoint from every
    benchmark tiny-slm evaluates (GSM8K's test split; Orca-Math's held-out rows are never training rows).
    """
    spec = dataset.strip()
    path = Path(spec).expanduser()
    if spec == "gsm8k-train":
        ts = _gsm8k_train(resolve_data_dir(data_dir))
    elif spec == "orcamath":
        ts = _orcamath_train()
    elif path.is_file():
        ts = _jsonl_file(path, question_field, answer_field)
    elif spec.endswith((".jsonl", ".json")) or spec.startswith((".", "~", "/")) or spec.count("/") > 1:
        raise UserError(f"dataset file not found: {spec}")
    elif HUB_ID.fullmatch(spec):
        ts = _hub_dataset(spec, question_field, answer_field)
    else:
        raise UserError(
            f"unknown dataset '{spec}' (choose from: {', '.join(NAMED_DATASETS)}; "
            "or pass a .jsonl file or a Hugging Face dataset id owner/name)"
        )
    if val_size:
        if val_size >= len(ts.examples):
            raise UserError(
                f"--val-size {val_size} leaves no training rows: dataset '{spec}' has {len(ts.examples)}"
            )
        held = set(random.Random(val_seed).sample(range(len(ts.examples)), val_size))
        ts.validation = [e for i, e in enumerate(ts.examples) if i in held]
        ts.examples = [e for i, e in enumerate(ts.examples) if i not in held]
        ts.info["validation"] = {"size": val_size, "seed": val_seed, "held_out_before_limit": True}
    if limit is not None:
        ts.examples = ts.examples[:limit]
        ts.info["limit"] = limit
    if not ts.examples:
        raise UserError(f"dataset '{spec}' has no usable rows")
    return ts


def _gsm8k_train(data_dir: Path | None) -> TrainingSet:
    local, hub, _, _ = FEWSHOT_POOLS["gsm8k-train"]
    source = str(data_dir / local) if data_dir is not None else f"hub:{hub.path}"
    examples = load_fewshot_pool("gsm8k-train", data_dir)  # the exemplar pool: same parsing and cleaning
    return TrainingSet("gsm8k-train", source, examples, info={"calculator_annotations": "removed"})


def orcamath_train_indices(
    answer_lengths: Sequence[int],
    usable: Sequence[bool],
    size: int = ORCAMATH_TRAIN_SIZE,
    seed: int = ORCAMATH_TRAIN_SEED,
) -> list[int]:
    """The Orca-Math training subset: ``size`` row indices, stratified by answer length, never a held-out row.

    Why stratify: Orca-Math answers range from one line to long derivations, and a plain random 5% sample can
    over- or under-represent the long ones by chance; the answer length is what the model learns to produce.
    How: the usable rows (an answer with a number in it, not among :func:`orcamath_holdout_indices`) are
    ranked by their answer's character length (ties by index) and cut into four equal-sized quartiles; each
    quartile contributes its proportional share (largest remainder) drawn with ``random.Random(seed)``.
    """
    held = set(orcamath_holdout_indices(len(answer_lengths)))
    pool = sorted(
        (i for i in range(len(answer_lengths)) if usable[i] and i not in held),
        key=lambda i: (answer_lengths[i], i),
    )
    if len(pool) < size:
        raise UserError(f"Orca-Math has only {len(pool)} usable training rows, {size} requested")
    strata = [pool[q * len(pool) // 4 : (q + 1) * len(pool) // 4] for q in range(4)]
    quotas = [size * len(s) // len(pool) for s in strata]
    by_remainder = sorted(range(4), key=lambda q: -(size * len(strata[q]) % len(pool)))
    for q in by_remainder[: size - sum(quotas)]:
        quotas[q] += 1
    rng = random.Random(seed)
    return sorted(i for s, k in zip(strata, quotas, strict=True) for i in rng.sample(s, k))


def _orcamath_train() -> TrainingSet:
    rows = load_hub_rows(ORCAMATH_HUB, offline_copy=False)  # Hub only
    answers = [str(r.get("answer") or "") for r in rows]
    golds = [orcamath_answer(a) for a in answers]
    keep = orcamath_train_indices([len(a) for a in answers], [bool(g) for g in golds])
    examples = [
        Example(
            id=str(i),
            question=record_text(rows[i], "question", f"hub:{ORCAMATH_HUB.path} row {i}").strip(),
            reference=golds[i],
            solution=f"{clean_gsm8k_solution(answers[i])}\n#### {golds[i]}",
        )
        for i in keep
    ]
    info = {
        "rows_in_source": len(rows),
        "subset": f"{len(keep)} rows, seed {ORCAMATH_TRAIN_SEED}, stratified by answer-length quartile",
        "excluded": "the 500 evaluation holdout rows and rows whose answer has no number",
        "target": "the answer followed by '#### <last number of the answer>'",
    }
    return TrainingSet("orcamath", f"hub:{ORCAMATH_HUB.path}", examples, info=info)


def with_answer_line(answer: str) -> str | None:
    """``answer`` ending in a ``#### N`` line: kept if it has one, else N = its last number (None if none)."""
    text = clean_gsm8k_solution(answer)
    if "#### " in text:
        return text
    from tinyslm.scoring.extract import extract_answer

    number = extract_answer(text, "number").text
    return f"{text}\n#### {number}" if number else None


def _row_example(rec: dict, q_field: str, a_field: str, rid: str, where: str) -> Example:
    q, a = rec.get(q_field), rec.get(a_field)
    if not isinstance(q, str) or not q.strip():
        raise UserError(f"{where}: field '{q_field}' must be a non-empty string")
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        a = str(a)
    if not isinstance(a, str) or not a.strip():
        raise UserError(f"{where}: field '{a_field}' must be a non-empty string")
    target = with_answer_line(a)
    if target is None:
        raise UserError(f"{where}: answer has no '#### ' line and no number to put on one")
    return Example(id=rid, question=q.strip(), reference=gold_from_gsm8k_answer(target), solution=target)


def _jsonl_file(path: Path, q_field: str, a_field: str) -> TrainingSet:
    records = read_jsonl_records(path, (q_field, a_field))  # UserError naming file:line for bad records
    examples = [
        _row_example(r, q_field, a_field, str(i), f"{path}:{lineno}") for i, (lineno, r) in enumerate(records)
    ]
    return TrainingSet(
        path.name, str(path), examples, info={"question_field": q_field, "answer_field": a_field}
    )


def _hub_dataset(hub_id: str, q_field: str, a_field: str) -> TrainingSet:
    rows = load_hub_rows(HubSource(hub_id, "train"), offline_copy=False)
    examples = []
    for i, r in enumerate(rows):
        missing = [k for k in (q_field, a_field) if k not in r]
        if missing:
            raise UserError(
                f"hub:{hub_id} row {i}: lacks field(s) {', '.join(missing)} "
                "(choose them with --question-field / --answer-field)"
            )
        examples.append(_row_example(r, q_field, a_field, str(i), f"hub:{hub_id} row {i}"))
    return TrainingSet(
        hub_id, f"hub:{hub_id}", examples, info={"question_field": q_field, "answer_field": a_field}
    )


# ---------------------------------------------------------------------------------------------------
# Encoding: prompt + target + end-of-turn, labels on the target only.


@dataclass(frozen=True)
class EncodedExample:
    example_id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens; the token ids themselves on target tokens
    truncated: bool


def prompt_and_completion(tokenizer: Any, example: Example, answer_style: str) -> tuple[str, str]:
    """The evaluation's zero-shot prompt, and the text the model should answer with, up to its stop token.

    Chat models: the completion is what the chat template renders for an assistant turn holding the target,
    i.e. the target plus the template's end-of-turn marker (``<|im_end|>`` for SmolLM2/Qwen). Base models: the
    target after ``Answer:`` (with the space few-shot exemplars have there) plus the EOS token.
    """
    prompt = build_prompt(tokenizer, example, answer_style)
    target = format_target(example, answer_style)
    eos = tokenizer.eos_token or ""
    if is_chat_tokenizer(tokenizer):
        msgs = [*build_messages(example, answer_style, []), {"role": "assistant", "content": target}]
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        if full.startswith(prompt) and target in full[len(prompt) :]:
            return prompt, full[
                len(prompt) :
            ].rstrip()  # drop the newline the template puts after end-of-turn
        return prompt, target + eos  # a template that re-renders earlier turns differently: fall back to EOS
    return prompt, " " + target + eos


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], answer_style: str, max_length: int
) -> tuple[list[EncodedExample], dict[str, int]]:
    """Token ids and completion-only labels for each example, cut to ``max_length`` tokens.

    Prompt and completion are tokenized separately so the prompt tokens are exactly those the evaluation
    feeds (chat prompts carry their own special tokens; base prompts get the tokenizer's BOS). A sequence
    longer than ``max_length`` loses its end (it is counted as truncated, and does not learn to stop); one
    whose prompt alone fills ``max_length`` has no target token left and is dropped (counted too).
    """
    chat = is_chat_tokenizer(tokenizer)
    pairs = [prompt_and_completion(tokenizer, e, answer_style) for e in examples]
    prompt_ids = tokenizer([p for p, _ in pairs], add_special_tokens=not chat)["input_ids"]
    completion_ids = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    out: list[EncodedExample] = []
    stats = {"examples": len(examples), "truncated": 0, "dropped": 0, "target_tokens": 0, "tokens": 0}
    for ex, p, c in zip(examples, prompt_ids, completion_ids, strict=True):
        ids = list(p) + list(c)
        labels = [IGNORE_INDEX] * len(p) + list(c)
        truncated = len(ids) > max_length
        ids, labels = ids[:max_length], labels[:max_length]
        n_target = sum(t != IGNORE_INDEX for t in labels[1:])  # the first token is never predicted
        if truncated:
            stats["truncated"] += 1
        if n_target == 0:
            stats["dropped"] += 1
            continue
        stats["target_tokens"] += n_target
        stats["tokens"] += len(ids)
        out.append(EncodedExample(ex.id, ids, labels, truncated))
    return out, stats


def collate(rows: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: ``input_ids``, ``attention_mask`` and ``labels`` (padding labelled IGNORE_INDEX).

    Right padding keeps every real token at the position it has unpadded, and a causal model's real tokens
    never attend to the padding after them, so a row's loss does not depend on its batch-mates.
    """
    import torch

    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
