"""A decode-only forward pass for Llama-family models with a preallocated, per-slot KV cache.

Why not ``model(...)`` with transformers' ``DynamicCache``: that cache grows by ``torch.cat`` every step,
so each new token copies the whole cache (on this project's 2-core CPU, 29% of a SmolLM2-135M decode step
at batch 16), and every row of a batch must sit at the same cache position, so a finished row can only be
dropped, never replaced. Here each of ``slots`` rows owns a fixed stretch of one preallocated cache and
its own length, which is what continuous batching needs: a slot freed by a finished answer takes the next
prompt while the other rows go on decoding.

Only the attention and the cache are ours. Everything else is the model's own modules, called the way its
decoder layer calls them (``input_layernorm``, ``q/k/v/o_proj``, the rotary embedding and
``apply_rotary_pos_emb`` of the model's own module, ``mlp``, ``norm``, ``lm_head``), so weights, biases
(Qwen2), RoPE variants, and PEFT adapter layers wrapped around the projections all behave as in
``generate``. Architectures with anything else in the layer (Gemma's scaled embeddings and soft-capping,
OLMo's QKV clipping, sliding windows shorter than the cache) are refused by :func:`unsupported_reason`, and
the caller falls back to the model's own forward.

A slot holds its row's tokens left-aligned (a long shared prefix apart, which is stored once): every
token's position id is its index among the row's real tokens, as in ``generate`` with left padding
(where position ids count real tokens only).
Active rows always occupy slots ``0 .. n-1`` (a finished row's slot is refilled or the last row is moved
into it), so a decode step works on plain slices of the cache.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tinyslm.models.load import base_model

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# A shared prompt prefix at least this long is read once per step for the whole batch instead of per row
# (measured on a 2-core CPU, SmolLM2-135M shapes: 2.5x faster attention at 640 prefix tokens, 10-30% slower
# at 58, where the second attention call costs more than the rows' prefix reads).
CASCADE_MIN_PREFIX = 128
# PyTorch's CPU flash-attention op returns the log-sum-exp the prefix merge needs (a private op: checked).
CPU_FLASH_LSE = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
# CPU weights are repacked for oneDNN (a second copy of them) only up to this size: 135M-500M models in fp32.
MAX_PACKED_BYTES = 4 << 30


def unsupported_reason(model: Any, capacity: int) -> str | None:
    """Why this decoder cannot run ``model`` for sequences of ``capacity`` tokens; ``None`` if it can."""
    base = base_model(model)
    cfg = base.config
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {cfg.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) and window and window < capacity:
        return f"sliding-window attention ({window} tokens) shorter than the {capacity}-token cache"
    inner = getattr(base, "model", None)
    layer = inner.layers[0] if inner is not None and len(getattr(inner, "layers", [])) else None
    attn = getattr(layer, "self_attn", None)
    if attn is None or not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
        return "its layers are not laid out as Llama's (self_attn.q_proj ... o_proj)"
    if (
        not hasattr(inner, "rotary_emb")
        or getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None) is None
    ):
        return "no rotary embedding module"
    return None


def _attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp per query (float32): [b, h, T, d] and [b, h, T].

    On CPU, PyTorch's flash-attention kernel (what ``scaled_dot_product_attention`` runs there, and
    ``generate`` with it) returns both; elsewhere they are computed directly."""
    if q.device.type == "cpu" and CPU_FLASH_LSE:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, attn_mask=bias, scale=scale
        )
        return out, lse
    s = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if bias is not None:
        s = s + bias
    lse = torch.logsumexp(s, -1)
    return torch.matmul(torch.exp(s - lse[..., None]).to(v.dtype), v), lse


@dataclass(frozen=True)
class _Group:
    """Rows fed in one ``extend`` pass that share an attention call: slots ``lo .. hi-1``."""

    lo: int
    hi: int
    t: int  # the longest run: queries are padded to it
    kt: int  # keys read per row
    bias: torch.Tensor
    first: int  # the group's first token in the pass's flat token order
    row: torch.Tensor  # each of its tokens' row (from lo) and place in its run
    col: torch.Tensor


class SlotDecoder:
    """Greedy-decoding forward passes over ``slots`` rows that start with the same ``prefix`` tokens and
    have up to ``capacity`` tokens each after it.

    The prefix is computed once at construction. ``admit`` starts new rows in the slots after the active
    ones (own tokens prefilled) and returns their next-token logits; ``step`` feeds one token to each
    active row and returns the next logits; ``release`` frees a finished row's slot by moving the last
    active row into it.

    A prefix of ``CASCADE_MIN_PREFIX`` tokens or more stays in one place and every step reads it once for
    the whole batch (see ``_attend``); a shorter one is copied into each slot and read with the row's own
    keys in one attention call, which costs less than a second call at that size.
    """

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        capacity: int,
        device: torch.device | str,
        prefix: list[int] | None = None,
        graph: bool = False,
        compile_step: bool = False,
    ) -> None:
        base = base_model(model)
        self.base, self.inner = base, base.model
        cfg = base.config
        attn0 = self.inner.layers[0].self_attn
        self.apply_rope = sys.modules[type(attn0).__module__].apply_rotary_pos_emb
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(attn0, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.group = self.n_heads // self.n_kv
        self.scaling = attn0.scaling
        self.device = torch.device(device)
        self.dtype = next(base.parameters()).dtype
        # torch.compile cannot take the oneDNN-packed weights as inputs: a compiled step runs plain ones
        self.packed = {} if compile_step else self._pack_cpu_weights(slots)
        self.prefix_len = len(prefix or [])
        self.cascade = self.prefix_len >= CASCADE_MIN_PREFIX
        self.offset = 0 if self.cascade else self.prefix_len  # slot index where a row's own tokens start
        self.slots, self.capacity = slots, self.offset + capacity
        shape = (len(self.inner.layers), slots, self.n_kv, self.capacity, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.lens = [0] * slots  # cache positions used by each slot
        self.active = 0  # slots 0 .. active-1 hold rows being decoded
        self.prefix_k = self.prefix_v = None
        if prefix:
            self.prefix_k, self.prefix_v = self._compute_prefix(prefix)
        self.graph = graph  # steps of fixed shape, replayed from a CUDA graph on a GPU (see fixed_step)
        self._fixed: dict[str, torch.Tensor] = {}
        self._cuda_graph: Any = None
        if compile_step:
            if not graph:
                raise ValueError("compile_step compiles the fixed-shape step: it needs graph=True")
            # One fixed pass launches about 41 kernels a layer (an RMS norm alone is 8), each a few
            # microseconds on a GPU even when replayed from a CUDA graph; inductor fuses the elementwise ones.
            # Compiled on the first step (114 s for the 30-layer 135M shape on a 2-core CPU; not yet timed on a
            # GPU), then captured as before. Fixed shapes (slots x capacity): other shapes compile again.
            self.fixed_pass = torch.compile(self.fixed_pass, dynamic=False)  # type: ignore[method-assign]

    def _pack_cpu_weights(self, slots: int) -> dict[torch.nn.Module, torch.Tensor]:
        """oneDNN-blocked copies of the plain ``nn.Linear`` weights, for fp32 on CPU.

        MKL's ``sgemm`` (what ``F.linear`` runs) is slow for the skinny products of decoding: a batch of 16
        rows against a 576 x 1536 weight reaches 40-75 GFLOP/s on this project's 2-core AVX2 machine, and the
        49152-row vocabulary projection 38. Weights reordered once into oneDNN's blocked layout (what
        ``torch.compile`` does for CPU inference) run the same products 1.2-2x faster. The results differ
        from ``F.linear`` only in summation order (relative 1e-6); the greedy tokens are tested equal to
        ``generate``'s. PEFT-wrapped projections keep their own forward (adapter included).
        """
        params = list(self.base.parameters())
        if (
            self.device.type != "cpu"
            or self.dtype != torch.float32
            or not torch.backends.mkldnn.is_available()
            or sum(p.numel() * p.element_size() for p in params) > MAX_PACKED_BYTES
        ):
            return {}
        try:
            reorder = torch.ops.mkldnn._reorder_linear_weight
            _ = torch.ops.mkldnn._linear_pointwise
        except (AttributeError, RuntimeError):
            return {}
        modules = [self.base.lm_head]
        for layer in self.inner.layers:
            a, m = layer.self_attn, layer.mlp
            modules += [a.q_proj, a.k_proj, a.v_proj, a.o_proj]
            modules += [getattr(m, n) for n in ("gate_proj", "up_proj", "down_proj") if hasattr(m, n)]
        packed = {}
        for mod in modules:
            if type(mod) is torch.nn.Linear:
                packed[mod] = reorder(mod.weight.detach(), slots)
        return packed

    def _proj(self, mod: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = self.packed.get(mod)
        if w is None:
            return mod(x)
        return torch.ops.mkldnn._linear_pointwise(x, w, mod.bias, "none", [], "")

    def _mlp(self, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return mlp(x)
        return self._proj(
            mlp.down_proj, mlp.act_fn(self._proj(mlp.gate_proj, x)) * self._proj(mlp.up_proj, x)
        )

    # -- the layer stack ------------------------------------------------------------------------------

    def _layers(self, ids: torch.Tensor, pos: torch.Tensor, write, attend) -> torch.Tensor:
        """Run ``ids`` [n, T] at positions ``pos`` [n, T] through every layer; ``write(i, k, v)`` stores a
        layer's new keys/values and ``attend(i, q)`` returns the attention output [n, T, heads*dim]."""
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, pos)
        n, t = ids.shape
        for i, layer in enumerate(self.inner.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = self._proj(a.q_proj, h).view(n, t, -1, self.head_dim).transpose(1, 2)
            k = self._proj(a.k_proj, h).view(n, t, -1, self.head_dim).transpose(1, 2)
            v = self._proj(a.v_proj, h).view(n, t, -1, self.head_dim).transpose(1, 2)
            q, k = self.apply_rope(q, k, cos, sin)
            write(i, k, v)
            x = x + self._proj(a.o_proj, attend(i, q))
            x = x + self._mlp(layer.mlp, layer.post_attention_layernorm(x))
        return self.inner.norm(x)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._proj(self.base.lm_head, hidden)

    def _bias(self, mask: torch.Tensor) -> torch.Tensor:
        """The additive attention bias for ``_attend`` from a boolean ``mask`` [n or 1, 1, T, S] of the own keys
        each query sees (True: seen); built once per forward pass, shared by the layers."""
        if mask.shape[2] > 1:
            mask = mask.repeat(1, 1, self.group, 1)  # query row j * T + s is position s of grouped head j
        return torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill_(
            ~mask, float("-inf")
        )

    def _attend(
        self, i: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Softmax attention of ``q`` [n, heads, T, dim] over layer ``i``'s shared prefix and the rows' own
        ``keys``/``values`` [n, kv_heads, S, dim], with ``bias`` from ``_bias``. Returns [n, T, heads * dim].

        The prefix is read once for the whole batch (every row's queries against it in one call) instead of
        once per row: with 3 few-shot exemplars it is ~90% of each row's keys, and reading it row by row
        costs as much as all of a decode step's linear layers. The two parts are merged exactly as one
        softmax over their concatenation, through their log-sum-exps. The query heads sharing a KV head are
        laid out as extra query positions of that head, so grouped-query attention needs no key copies.
        """
        n, _, t, d = q.shape
        kv, g = self.n_kv, self.group
        qg = q.reshape(n, kv, g * t, d)  # head h = kv_head * g + j, as transformers' repeat_kv orders them
        if not (self.cascade and self.prefix_k is not None):
            out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=bias, scale=self.scaling)
        else:
            out, lse = _attention_lse(qg, keys, values, bias, self.scaling)
            qa = qg.transpose(0, 1).reshape(1, kv, n * g * t, d)
            op, lp = _attention_lse(qa, self.prefix_k[i][None], self.prefix_v[i][None], None, self.scaling)
            op = op.view(kv, n, g * t, d).transpose(0, 1)
            lp = lp.view(kv, n, g * t).transpose(0, 1)
            total = torch.logaddexp(lse, lp)
            out = out * torch.exp(lse - total)[..., None].to(out.dtype) + op * torch.exp(lp - total)[
                ..., None
            ].to(op.dtype)
        return out.reshape(n, kv * g, t, d).transpose(1, 2).reshape(n, t, kv * g * d)

    def _causal_bias(self, t: int, before: int) -> torch.Tensor:
        """Queries at cache indices ``before .. before+t-1`` see keys ``0 ..`` their own index."""
        keys = torch.arange(before + t, device=self.device)[None, :]
        return self._bias((keys <= torch.arange(before, before + t, device=self.device)[:, None])[None, None])

    # -- public operations ----------------------------------------------------------------------------

    def _compute_prefix(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        p = len(ids)
        shape = (len(self.inner.layers), self.n_kv, p, self.head_dim)
        pk = torch.empty(shape, dtype=self.dtype, device=self.device)
        pv = torch.empty_like(pk)
        bias = self._causal_bias(p, 0)

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            pk[i], pv[i] = k[0], v[0]

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self._attend(i, q, pk[i][None], pv[i][None], bias)

        self._layers(
            torch.tensor([ids], device=self.device), torch.arange(p, device=self.device)[None], write, attend
        )
        return pk, pv

    def admit(self, rows: list[list[int]]) -> torch.Tensor:
        """Start ``rows`` (token ids after the prefix) in the next free slots; their next-token logits [n, V].

        The rows are prefilled together without padding (see ``extend``); the rows already decoding wait.
        """
        old = self.active
        logits = self.extend(rows, new=len(rows))
        self.keep([0] * old + [len(r) for r in rows])
        return logits

    def step(self, tokens: torch.Tensor | list[int]) -> torch.Tensor:
        """Feed one token to each active row (``tokens`` [active]); the next-token logits [active, V]."""
        tokens = torch.as_tensor(tokens).tolist()
        if self.graph:
            return self.fixed_step(tokens)
        logits = self.extend([[t] for t in tokens])
        self.keep([1] * len(tokens))
        return logits

    def fixed_step(self, tokens: list[int]) -> torch.Tensor:
        """``step`` as one pass of fixed shape: every slot fed one token (idle slots a dummy one, whose
        output is dropped), attention over every slot's whole cache stretch with the positions past its
        length masked. Nothing in it depends on how many rows are active or how long they are, so on a GPU
        it is captured once as a CUDA graph and then replayed: one launch per step instead of about a
        thousand, which at a small model's size are what a decode step's time goes to (SmolLM2-135M shape,
        256 slots, one H200: 36.6k tokens/s against 6.6k launched op by op). It reads more keys than
        ``extend`` (the whole stretch), which on a GPU costs less than the launches it saves. On a CPU the
        same pass runs eagerly (how its arithmetic is tested against ``generate``).
        """
        a, f = len(tokens), self._fixed
        if not f:
            f["ids"] = torch.zeros(self.slots, dtype=torch.long, device=self.device)
            f["lens"] = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        f["ids"][:a].copy_(torch.tensor(tokens))
        f["ids"][a:].zero_()
        f["lens"].copy_(torch.tensor(self.lens))
        if self.device.type != "cuda":
            f["logits"] = self.fixed_pass()
        elif self._cuda_graph is None:
            # warm up on a side stream (what capture requires), then capture; both passes write the same
            # keys and values to the same places as the replay that follows, so running them is harmless
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.fixed_pass()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._cuda_graph):
                f["logits"] = self.fixed_pass()
        if self._cuda_graph is not None:
            self._cuda_graph.replay()
        self.keep([1] * a)
        return f["logits"][:a]

    def fixed_pass(self) -> torch.Tensor:
        """The body of :meth:`fixed_step`: reads ``ids`` and ``lens``, writes the caches, returns [slots, V]."""
        f, n = self._fixed, self.slots
        ids, lens = f["ids"], f["lens"]
        rows = torch.arange(n, device=self.device)
        # a row's own keys: cache indices 0 .. lens[b] (the token fed now included)
        seen = torch.arange(self.capacity, device=self.device)[None, :] <= lens[:, None]
        bias = torch.zeros(seen.shape, dtype=self.dtype, device=self.device).masked_fill_(
            ~seen, float("-inf")
        )
        bias = bias[:, None, None, :]

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            self.k[i, rows, :, lens] = k[:, :, 0]
            self.v[i, rows, :, lens] = v[:, :, 0]

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            return self._attend(i, q, self.k[i], self.v[i], bias)

        pos = (lens + (self.prefix_len - self.offset))[:, None]
        return self._logits(self._layers(ids[:, None], pos, write, attend)[:, 0])

    def room(self, slot: int) -> int:
        """Tokens ``slot``'s row can still be fed before its cache stretch is full."""
        return self.capacity - self.lens[slot]

    def extend(self, runs: list[list[int]], new: int = 0) -> torch.Tensor:
        """Feed rows runs of tokens in one pass and return next-token logits, concatenated in run order.

        The first ``len(runs) - new`` runs are for the rows already decoding, one each (slot ``b`` gets
        ``runs[b]``: the last token the row produced, then any guesses), or there are none of them (the
        decoding rows wait). For these, the logits after every fed token are returned. The last ``new``
        runs start new rows (their tokens after the shared prefix) in the next free slots; for these,
        only the logits after their last token are returned.

        The rows' lengths do not advance: ``keep`` then says how many tokens of each row's run stay in
        the cache (for a decoding row, the last token and the guesses the logits confirmed; for a new row,
        all of them); the rest are overwritten later. Runs of different lengths share one pass without
        padding in the linear layers, which see the fed tokens as one flat batch. Only the attention pads
        queries, per group (decoding rows, new rows) to the group's longest run, and it reads each row's
        keys once however many queries the row has.
        """
        a, o = self.active, self.offset
        old = len(runs) - new
        if old not in (0, a) or not all(runs):
            raise ValueError(f"extend needs one non-empty run for each of the {a} active rows, or none")
        if a + new > self.slots:
            raise ValueError(f"cannot admit {new} rows: {self.slots - a} free slots")
        slot = [r if r < old else a + r - old for r in range(len(runs))]
        for r in range(old, len(runs)):  # new rows start after the shared prefix
            self.lens[slot[r]] = o
        if any(self.lens[s] + len(run) > self.capacity for s, run in zip(slot, runs, strict=True)):
            for r in range(old, len(runs)):
                self.lens[slot[r]] = 0
            raise ValueError(f"a row outgrew its {self.capacity - o} cache positions")
        if new and o:  # a short prefix is copied into each new slot
            self.k[:, a : a + new, :, :o] = self.prefix_k[:, None]
            self.v[:, a : a + new, :, :o] = self.prefix_v[:, None]
        self.active += new
        dev = self.device
        flat_slot = [slot[r] for r, run in enumerate(runs) for _ in run]  # each fed token's slot
        col = [j for run in runs for j in range(len(run))]  # and its place in its run
        at = [self.lens[s] + j for s, j in zip(flat_slot, col, strict=True)]  # cache index written
        row_t, at_t = torch.tensor(flat_slot, device=dev), torch.tensor(at, device=dev)
        # the attention groups: (first slot, rows, their runs, first flat token)
        groups, start = [], 0
        for lo, part in ((0, runs[:old]), (a, runs[old:])):
            if part:
                groups.append(self._group(lo, part, start))
                start += sum(len(x) for x in part)

        def write(i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            self.k[i, row_t, :, at_t] = k[0].transpose(0, 1)
            self.v[i, row_t, :, at_t] = v[0].transpose(0, 1)

        def attend(i: int, q: torch.Tensor) -> torch.Tensor:
            q = q[0].transpose(0, 1)  # [flat, heads, dim]
            outs = []
            for g in groups:
                qg = q[g.first : g.first + g.row.numel()]
                if g.t == 1:
                    padded = qg[:, :, None]  # one token per row: the rows are the batch
                else:
                    padded = qg.new_zeros(g.hi - g.lo, g.t, *qg.shape[1:])
                    padded[g.row, g.col] = qg
                    padded = padded.transpose(1, 2)
                keys, values = self.k[i, g.lo : g.hi, :, : g.kt], self.v[i, g.lo : g.hi, :, : g.kt]
                out = self._attend(i, padded, keys, values, g.bias)
                outs.append(out[:, 0] if g.t == 1 else out[g.row, g.col])
            return torch.cat(outs)[None] if len(outs) > 1 else outs[0][None]

        ids = torch.tensor([[x for run in runs for x in run]], device=dev)
        pos = (at_t + (self.prefix_len - o))[None]
        hidden = self._layers(ids, pos, write, attend)[0]
        if new:  # a new row's logits only after its last token
            ends = list(itertools.accumulate(len(run) for run in runs))
            hidden = hidden[list(range(ends[old - 1] if old else 0)) + [e - 1 for e in ends[old:]]]
        return self._logits(hidden)

    def _group(self, lo: int, runs: list[list[int]], first: int) -> _Group:
        """The attention call of ``extend`` for slots ``lo ..`` fed ``runs``, whose tokens start at flat index
        ``first``."""
        dev, hi = self.device, lo + len(runs)
        t = max(len(r) for r in runs)
        lens = torch.tensor(self.lens[lo:hi], device=dev)
        kt = int(max(self.lens[lo + b] + len(r) for b, r in enumerate(runs)))
        # query j of row b sees keys 0 .. lens[b] + j (its own token included); the rest are masked
        last = lens[:, None] + torch.arange(t, device=dev)[None, :]  # [rows, t]
        bias = self._bias((torch.arange(kt, device=dev)[None, None, :] <= last[:, :, None])[:, None])
        row = torch.tensor([b for b, r in enumerate(runs) for _ in r], device=dev)
        col = torch.tensor([j for r in runs for j in range(len(r))], device=dev)
        return _Group(lo, hi, t, kt, bias, first, row, col)

    def keep(self, counts: list[int]) -> None:
        """After ``extend``: the first ``counts[b]`` tokens of row ``b``'s run stay in its cache."""
        for b, c in enumerate(counts):
            self.lens[b] += c

    def release(self, slot: int) -> None:
        """Free ``slot``; the last active row moves into it (so active rows stay in slots 0 .. n-1)."""
        last = self.active - 1
        if slot != last:
            n = self.lens[last]
            self.k[:, slot, :, :n] = self.k[:, last, :, :n]
            self.v[:, slot, :, :n] = self.v[:, last, :, :n]
            self.lens[slot] = n
        self.lens[last] = 0
        self.active = last
