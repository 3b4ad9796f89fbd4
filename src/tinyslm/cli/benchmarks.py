"""``tiny-slm benchmarks``: list the benchmark registry."""

from __future__ import annotations

import argparse


def cmd_benchmarks(args: argparse.Namespace) -> int:
    from tinyslm.data.benchmarks import BENCHMARKS

    print(f"{'name':<10} {'style':<7} {'offline file':<20} {'hub id':<40} description")
    for b in BENCHMARKS.values():
        hub = b.hub.path if b.hub else "-"
        print(f"{b.name:<10} {b.answer_style:<7} {b.local_file or '-':<20} {hub:<40} {b.description}")
    print(
        "\nor a test set of your own: --benchmark PATH.jsonl, or a Hugging Face dataset id owner/name (its test\n"
        "split): records with question and answer; add :math or :number to choose the answer style (else\n"
        "LaTeX answers mean math), :question=FIELD or :answer=FIELD where the fields are named otherwise\n"
        "(PATH.jsonl:question=problem). See the README's Benchmarks section."
    )
    return 0
