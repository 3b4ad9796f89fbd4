"""Answer extraction and equivalence: model text -> final answer -> correct or not (no torch)."""
