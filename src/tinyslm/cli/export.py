"""``tiny-slm export``: a trained model -> GGUF files quantised by llama.cpp, optionally scored."""

from __future__ import annotations

import argparse
from dataclasses import fields

from tinyslm.cli.args import add_config_args
from tinyslm.export import ExportConfig


def add_export_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~tinyslm.export.ExportConfig` field, generated from the field."""
    add_config_args(p, ExportConfig)


def cmd_export(args: argparse.Namespace) -> int:
    from tinyslm.export import export_model

    cfg = ExportConfig(**{f.name: getattr(args, f.name) for f in fields(ExportConfig)})
    export_model(cfg)
    return 0
