"""Evaluation: the runner (config -> predictions -> results), generation and the decode engine."""
