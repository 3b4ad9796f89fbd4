"""``tiny-slm run CONFIG.yaml``: run a study (models x methods x seeds), then its report."""

from __future__ import annotations

import argparse
import shlex


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study config (YAML); see configs/quick.yaml, offline.yaml, paper.yaml")
    p.add_argument(
        "--output", help="study directory (default: the config's output:, else runs/<config name>)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    p.add_argument(
        "--print-commands",
        action="store_true",
        help="print one shell command per cell (for a cluster scheduler); run nothing",
    )
    p.add_argument(
        "--cell", help="run only this cell (an id from --dry-run, e.g. smollm2-135m-instruct/lora/seed1234)"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="rerun cells that failed before (default: keep them)"
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_run(args: argparse.Namespace) -> int:
    from tinyslm.study.grid import load_config, plan_cells, read_cell
    from tinyslm.study.runner import output_dir, run_study

    cfg = load_config(args.config)
    root = output_dir(cfg, args.config, args.output)
    cells = plan_cells(cfg)
    if args.dry_run or args.print_commands:
        if args.dry_run:
            print(f"{len(cells)} cells -> {root}")
        for c in cells:
            if args.print_commands:
                cmd = [
                    "tiny-slm",
                    "run",
                    str(args.config),
                    "--output",
                    str(root),
                    "--cell",
                    c.id,
                    "--no-progress",
                ]
                print(shlex.join(cmd))
            else:
                rec = read_cell(c.dir(root)) or {}
                status = rec.get("status", "pending")
                reason = f"  ({rec['reason']})" if rec.get("reason") else ""
                print(f"  {c.id:<50} {status}{reason}")
        if args.print_commands:
            print(
                f"# then: tiny-slm-report {shlex.quote(str(root))} --output {shlex.quote(str(root / 'report'))}"
            )
        return 0
    result = run_study(
        args.config,
        args.output,
        only=args.cell,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        report=not args.no_report,
    )
    recs = [r for r in result["cells"].values() if r]
    done = sum(r.get("status") == "finished" for r in recs)
    failed = [r for r in recs if r.get("status") in ("failed", "diverged")]
    diverged = sum(r.get("status") == "diverged" for r in failed)
    print(
        f"{done}/{len(cells)} cells finished, {len(failed)} failed"
        + (f" ({diverged} diverged)" if diverged else "")
        + f"; study in {result['output']} ({result['wall_s']:.0f} s)"
    )
    for r in failed:
        print(f"  {r['status']}: {r['id']}: {r.get('reason')}")
    if "report" in result:
        print(f"report: {result['report']}")
    return 1 if failed else 0  # a scheduler (or make) sees that something needs a look; the rest is on disk
