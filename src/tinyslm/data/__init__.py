"""Benchmarks (registry, readers, few-shot), prompts, and the training sets with their encoding."""
