"""``tiny-slm models [list | install NAME]``: the offline model aliases."""

from __future__ import annotations

import argparse

from tinyslm.core.errors import UserError


def add_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "install"], default="list")
    p.add_argument("name", nargs="?", help="alias to install")


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "install":
        if not args.name:
            raise UserError("usage: tiny-slm models install NAME (see `tiny-slm models`)")
        cmd_models_install(args.name)
    else:
        cmd_models_list()
    return 0


def cmd_models_list() -> int:
    """``tiny-slm models``: print the alias table."""
    from tinyslm.models.zoo import cache_home, list_aliases

    rows = list_aliases()
    header = ["name", "installed", "download", "disk", "params", "licence", "type", "packages"]
    table = [
        [
            r["name"] + (" (default)" if r["default"] else ""),
            "yes" if r["installed"] else "no",
            f"{r['size_mb']} MB",
            f"{r['disk_mb']} MB",
            r["params"],
            r["license"],
            r["kind"],
            r["source"],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
    for line in [header, *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    print(f"\ncache: {cache_home()}  (install one with: tiny-slm models install NAME)")
    return 0


def cmd_models_install(name: str) -> int:
    """``tiny-slm models install NAME``: install (or confirm) one alias and print where it lives."""
    from tinyslm.models.zoo import get_alias, install_alias, is_installed

    alias = get_alias(name)
    already = is_installed(alias)
    path = install_alias(alias.name)
    print(f"{alias.name}: {'already installed' if already else 'installed'} at {path}")
    return 0
