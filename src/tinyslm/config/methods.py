"""The adaptation methods, named once: every module that lists them imports these tuples."""

from __future__ import annotations

# Methods that train weights (tiny-slm-train --method): full fine-tuning and the two adapters.
TRAINED_METHODS: tuple[str, ...] = ("full", "lora", "dora")
# The adapter methods (peft): final/ holds an adapter on the --model base.
PEFT_METHODS: tuple[str, ...] = ("lora", "dora")
# In-context methods (no training): the study's baselines.
ICL_METHODS: tuple[str, ...] = ("zero-shot", "few-shot")
# Every method a study can run, in the order tables list them.
ALL_METHODS: tuple[str, ...] = ICL_METHODS + TRAINED_METHODS
