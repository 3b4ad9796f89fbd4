"""The ``llama-cpp`` backend: a GGUF file decoded by llama.cpp, with the same rows, stop rule and files.

Only the forward pass changes. Prompts are built and tokenized by the same transformers tokenizer (read
from the GGUF), token ids go to llama.cpp, and the greedy token comes back to the same continuous-
batching loop as the torch engine (:func:`tinyslm.evaluate.generation.decode_rows`), which cuts a row at
the end of its answer line, decodes the text with the same tokenizer and scores it with the same scorer.
So a difference between a float model and its quantised file is the weights' doing, not the harness's.

:class:`LlamaCppDecoder` has :class:`tinyslm.evaluate.decoder.SlotDecoder`'s interface (``admit``,
``step``, ``release``, ``slots``) over llama.cpp's sequence API: one KV-cache sequence per slot in a
unified cache, the shared prefix decoded once into its own sequence and shared into each slot by
``llama_memory_seq_cp`` (cells are shared, not copied).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from tinyslm.core.errors import UserError
from tinyslm.models.llamacpp import gguf_facts, import_llama_cpp

N_BATCH = 512  # tokens per llama_decode call: prompts are prefilled in chunks of this many


class LlamaCppModel:
    """A loaded GGUF: the llama.cpp model handle plus what results.json records about it."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file() or self.path.suffix.lower() != ".gguf":
            raise UserError(f"--backend llama-cpp needs a .gguf file for --model; {path} is not one")
        self.lib = import_llama_cpp()
        self.facts = gguf_facts(self.path)
        self.threads = threads or len(os.sched_getaffinity(0))
        lib = self.lib
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        # No "extra buffer types": on a CPU with AMX (this project's has it) llama.cpp would repack q8_0
        # weights for AMX, and that path crashed (segfault at the first decode) for every q8_0 file tried
        # with llama-cpp-python 0.3.36 here, SmolLM2-135M included. Its AVX-512 kernels run instead.
        params.use_extra_bufts = False
        self.handle = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.handle:
            raise UserError(
                f"llama.cpp cannot load {self.path} (not a model GGUF, or an architecture it lacks)"
            )
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.handle))

    def close(self) -> None:
        if getattr(self, "handle", None):
            self.lib.llama_model_free(self.handle)
            self.handle = None

    def __del__(self) -> None:  # the model is small, but a long session loads many
        self.close()


class LlamaCppDecoder:
    """Greedy decoding over ``slots`` llama.cpp sequences sharing ``prefix``, up to ``capacity`` tokens each
    after it; the interface of :class:`tinyslm.evaluate.decoder.SlotDecoder`."""

    def __init__(self, model: LlamaCppModel, *, slots: int, capacity: int, prefix: list[int] | None = None):
        lib = self.lib = model.lib
        self.model, self.slots, self.capacity = model, slots, capacity
        self.prefix = list(prefix or [])
        self.prefix_seq = slots  # the sequence that holds the shared prefix
        params = lib.llama_context_default_params()
        params.n_ctx = len(self.prefix) + slots * capacity + 8
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = slots + 1
        params.kv_unified = True  # slots share the prefix's cells
        params.n_threads = params.n_threads_batch = model.threads
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(model.handle, params)
        if not self.ctx:
            raise UserError(f"llama.cpp could not make a context of {params.n_ctx} tokens for {model.path}")
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(N_BATCH, 0, 1)
        self.seq: list[int] = []  # the sequence of each active slot
        self.pos: list[int] = []  # the next position of each active slot
        self.free = list(range(slots))
        if self.prefix:
            self._decode([(self.prefix_seq, 0, self.prefix)], logits=False)

    @property
    def active(self) -> int:
        return len(self.seq)

    def _decode(self, rows: list[tuple[int, int, list[int]]], *, logits: bool = True) -> np.ndarray:
        """Decode ``(seq, first position, tokens)`` rows in chunks of N_BATCH tokens; each row's last-token
        logits [len(rows), V] (in row order) when ``logits``."""
        out = np.empty((len(rows), self.model.n_vocab), dtype=np.float32)
        items = [(r, seq, p0 + j, t) for r, (seq, p0, toks) in enumerate(rows) for j, t in enumerate(toks)]
        last = {sum(len(x[2]) for x in rows[: r + 1]) - 1: r for r in range(len(rows))}
        b = self.batch
        for start in range(0, len(items), N_BATCH):
            chunk = items[start : start + N_BATCH]
            wanted = []
            for k, (r, seq, pos, tok) in enumerate(chunk):
                b.token[k], b.pos[k], b.n_seq_id[k] = tok, pos, 1
                b.seq_id[k][0] = seq
                is_last = logits and (start + k) in last
                b.logits[k] = 1 if is_last else 0
                if is_last:
                    wanted.append(r)
            b.n_tokens = len(chunk)
            rc = self.lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc} (KV cache full?)")
            if wanted:
                ptr = self.lib.llama_get_logits(self.ctx)
                arr = np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (len(wanted), out.shape[1])
                )
                out[wanted] = arr
        return out

    def admit(self, rows: list[list[int]]) -> np.ndarray:
        """Start ``rows`` (ids after the prefix) in free slots after the active ones; their next logits."""
        if len(rows) > len(self.free) or not all(rows) or max(map(len, rows)) > self.capacity:
            raise ValueError(f"cannot admit {len(rows)} rows: {len(self.free)} free slots of {self.capacity}")
        todo = []
        for r in rows:
            seq = self.free.pop()
            self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
            if self.prefix:
                self.lib.llama_memory_seq_cp(self.mem, self.prefix_seq, seq, -1, -1)
            todo.append((seq, len(self.prefix), r))
            self.seq.append(seq)
            self.pos.append(len(self.prefix) + len(r))
        return self._decode(todo)

    def step(self, tokens: list[int]) -> np.ndarray:
        """Feed one token to each active slot; the next-token logits [active, V]."""
        rows = [(seq, p, [t]) for seq, p, t in zip(self.seq, self.pos, tokens, strict=True)]
        for s in range(len(self.pos)):
            if self.pos[s] - len(self.prefix) >= self.capacity:
                raise ValueError(f"a row outgrew its {self.capacity} cache positions")
            self.pos[s] += 1
        return self._decode(rows)

    def release(self, slot: int) -> None:
        """Free ``slot``; the last active row moves into it (as SlotDecoder does)."""
        seq = self.seq[slot]
        self.lib.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.free.append(seq)
        self.seq[slot], self.pos[slot] = self.seq[-1], self.pos[-1]
        self.seq.pop()
        self.pos.pop()

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:
        self.close()
