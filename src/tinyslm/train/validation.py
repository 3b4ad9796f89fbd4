"""Validation during training: the loss on a held-out split (cheap, batched, no generation) and, when
asked, exact match on some of its problems through the evaluation's own engine, prompt and scorer.

Why both: the loss is smooth and costs one forward pass per row, so it can be measured every few steps; exact
match is what the study compares methods on, so a learning-rate sweep can select by it (``val_em``) at the
price of generation. Neither ever looks at a test benchmark: choosing settings on the test set would make
the reported test accuracy optimistic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from tinyslm.core.stats import wilson_interval
from tinyslm.data.benchmarks import Example

Z95 = 1.959963984540054


def ratio_interval(sums: Sequence[float], counts: Sequence[int]) -> tuple[float, tuple[float, float]]:
    """The token-weighted mean loss ``sum(sums) / sum(counts)`` over rows, and its 95% interval.

    Rows, not tokens, are the independent units (the tokens of one answer are correlated), so the interval is
    the ratio estimator's normal approximation over rows: se^2 = sum((s_i - R c_i)^2) / (n (n - 1) cbar^2).
    """
    n, total = len(sums), sum(counts)
    if n == 0 or total == 0:
        return float("nan"), (float("nan"), float("nan"))
    r = sum(sums) / total
    if n < 2:
        return r, (r, r)
    cbar = total / n
    var = sum((s - r * c) ** 2 for s, c in zip(sums, counts, strict=True)) / (n * (n - 1) * cbar**2)
    half = Z95 * math.sqrt(var)
    return r, (r - half, r + half)


class Validator:
    """The validation split of one run, encoded once; :meth:`measure` scores a model on it."""

    def __init__(
        self,
        tokenizer: Any,
        examples: list[Example],
        answer_style: str,
        *,
        max_length: int,
        micro_batch_size: int,
        keep_logits: bool,
        generate: int = 0,
        max_new_tokens: int = 256,
    ) -> None:
        from tinyslm.data.prompts import build_prompt
        from tinyslm.data.training import encode_examples

        self.tokenizer, self.answer_style, self.keep_logits = tokenizer, answer_style, keep_logits
        self.examples = examples
        self.rows, _ = encode_examples(tokenizer, examples, answer_style, max_length)
        order = sorted(range(len(self.rows)), key=lambda i: len(self.rows[i].input_ids))  # little padding
        self.chunks = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
        self.place = {row: k for k, row in enumerate(order)}  # a row's place in the single-process order
        self.generated = examples[:generate]
        self.prompts = [build_prompt(tokenizer, e, answer_style) for e in self.generated]
        self.max_new_tokens, self.batch_size = max_new_tokens, max(micro_batch_size, 1)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    def measure(
        self, model: Any, step: int, *, rank: int = 0, world: int = 1, gather: Any = None
    ) -> dict[str, Any]:
        """One validation line for ``metrics.jsonl``: the loss with its interval, and exact match when asked.
        The model is put in eval mode (no dropout) for the measurement and restored after it.

        With ``world`` > 1 processes each measures every ``world``-th micro-batch and generated problem from
        ``rank`` on, and ``gather`` (every rank's list, concatenated, on every rank: accelerate's
        ``gather_object``) brings the parts together: the line is the one a single process writes, for
        ``1 / world`` of the work (each row is still scored in the same micro-batch, and rows are put back
        in the single process's order before anything is summed)."""
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            rows = self._loss_rows(model, self.chunks[rank::world])
            correct = (
                self._correct(model, list(range(len(self.generated)))[rank::world])
                if self.generated
                else None
            )
        finally:
            model.train(was_training)
        if world > 1:
            rows = sorted(gather(rows))
            correct = None if correct is None else sum(gather([correct]))
        loss, ci = ratio_interval([r[1] for r in rows], [r[2] for r in rows])
        n = len(self.generated)
        line: dict[str, Any] = {
            "step": step,
            "split": "val",
            "val_loss": loss,
            "val_loss_ci95": list(ci),
            "val_correct": correct,
            "val_n": n,
            "val_em": None if correct is None else correct / n,
            "time_s": round(time.perf_counter() - t0, 3),
        }
        if correct is not None:
            line["val_em_ci95"] = list(wilson_interval(correct, n))
        return line

    def _loss_rows(self, model: Any, chunks: list[list[int]]) -> list[tuple[int, float, int]]:
        """(place in the single-process order, summed target loss, target tokens) of every row in ``chunks``."""
        import torch

        from tinyslm.data.training import collate
        from tinyslm.models.loss import target_loss_per_row

        device = next(model.parameters()).device
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        out: list[tuple[int, float, int]] = []
        with torch.no_grad():
            for chunk in chunks:
                batch = {k: v.to(device) for k, v in collate([self.rows[i] for i in chunk], pad).items()}
                s, c = target_loss_per_row(model, batch, self.keep_logits)
                out += [
                    (self.place[i], float(x), int(y))
                    for i, x, y in zip(chunk, s.tolist(), c.tolist(), strict=True)
                ]
        return out

    def _correct(self, model: Any, which: list[int]) -> int:
        """How many of the generated problems ``which`` (indices into ``self.generated``) are answered right."""
        import torch

        from tinyslm.data.prompts import is_chat_tokenizer
        from tinyslm.evaluate.generation import generate
        from tinyslm.scoring.equivalence import score_output

        if not which:
            return 0
        side = self.tokenizer.padding_side  # the decoder pads on the left; training's collate does its own
        try:
            with torch.no_grad():
                outs = dict(
                    generate(
                        model,
                        self.tokenizer,
                        [self.prompts[j] for j in which],
                        max_new_tokens=self.max_new_tokens,
                        batch_size=self.batch_size,
                        add_special_tokens=not is_chat_tokenizer(self.tokenizer),  # as the evaluation does
                    )
                )
        finally:
            self.tokenizer.padding_side = side
        return sum(
            bool(score_output(outs[k].text, self.generated[j].reference, self.answer_style)["correct"])
            for k, j in enumerate(which)
        )
