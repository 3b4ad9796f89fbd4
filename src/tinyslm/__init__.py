"""tiny-slm: compare zero-shot, few-shot, full fine-tuning, LoRA and DoRA on small language models."""

__version__ = "0.1.0"
