"""The study report: ``tiny-slm-report RUN_DIR... --output OUT`` (also ``tiny-slm report``).

Reads study cells, bare training runs and bare evaluations (``collect``), turns them into tables with
paired statistics (``tables``) and figures (``figures``), and writes one document twice (``render``):

* ``OUT/report.md`` with ``OUT/figures/*.png`` beside it;
* ``OUT/report.html``, self-contained (figures as data URIs);
* ``OUT/results.csv``: one row per model x method x benchmark x seed, failed cells included.

Every sentence that states a finding is computed from the runs; nothing is written in advance.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinyslm.core.files import atomic_write_bytes, atomic_write_text
from tinyslm.report.collect import Cell, Collection, collect, method_order
from tinyslm.report.figures import all_figures
from tinyslm.report.render import Bullets, Section, Table, to_html, to_markdown
from tinyslm.report.settings import ReportSettings
from tinyslm.report.tables import (
    ALPHA,
    SMALL_N,
    accuracy_table,
    build_groups,
    comparisons,
    cost_table,
    diagnostics_table,
    edge_table,
    fmt_count,
    half_width,
    negative_transfer_lines,
    qualitative_examples,
    recommendations,
    repetition_table,
    results_csv_rows,
    short_reason,
    strict_table,
    sweep_tables,
)
from tinyslm.results.provenance import short

DEFAULT_PRICE = ReportSettings.price_per_gpu_hour
TITLE = "tiny-slm study report"


def _versions(col: Collection) -> list[str]:
    seen: dict[str, set[str]] = {}
    for c in col.cells:
        sources = [b.results.get("versions") for b in c.benchmarks.values()] + [(c.run or {}).get("versions")]
        for v in sources:
            for pkg, ver in (v or {}).items():
                seen.setdefault(pkg, set()).add(str(ver))
    return [f"{pkg} {', '.join(sorted(vers))}" for pkg, vers in seen.items()]


def _devices(col: Collection) -> list[str]:
    out: dict[str, set[str]] = {}
    for c in col.cells:
        if c.run and c.run.get("device"):
            out.setdefault(f"training on {c.run['device']}", set()).add(str(c.run.get("precision") or "?"))
        for b in c.benchmarks.values():
            if b.results.get("device"):
                out.setdefault(f"evaluation on {b.results['device']}", set()).add(
                    str(b.results.get("dtype") or "?")
                )
    return [f"{k} ({', '.join(sorted(v))})" for k, v in sorted(out.items())]


def _label(c: Cell) -> str:
    return f"{c.model} {c.method}" + (f" seed {c.seed}" if c.seed is not None else "")


def _names(labels: list[str], limit: int = 4) -> str:
    """'a, b, c, d, +2 more': the cells behind a value, cut short."""
    names = sorted(set(labels))
    return ", ".join(names[:limit]) + (f", +{len(names) - limit} more" if len(names) > limit else "")


def _listing(by_digest: dict[str, list[str]]) -> str:
    """'abc123def456 (a, b, c, +2 more); 0123456789ab (d)': each digest with the cells made from it."""
    return "; ".join(
        f"{short(d)} ({_names(labels)})"
        for d, labels in sorted(by_digest.items(), key=lambda kv: -len(kv[1]))
    )


@dataclass
class _Digests:
    """What the header's provenance bullets count: digests by what they identify, and the cells behind each."""

    base: dict[str, dict[str, list[str]]] = field(
        default_factory=dict
    )  # model -> base weight digest -> cells
    data: dict[str, dict[str, list[str]]] = field(
        default_factory=dict
    )  # "gsm8k", "few-shot pool", ... -> ...
    templates: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    code: dict[str, list[str]] = field(default_factory=dict)
    hardware: dict[str, set[str]] = field(default_factory=dict)
    versions: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # package -> version -> cells
    files: int = 0
    unknown: int = 0

    @staticmethod
    def add(table: dict[str, dict[str, list[str]]], key: str, digest: object, label: str) -> None:
        if isinstance(digest, str) and digest:
            table.setdefault(key, {}).setdefault(digest, []).append(label)

    def add_common(self, prov: dict, label: str, role: str, model: str) -> None:
        self.add(self.templates, model, prov.get("chat_template_sha256"), label)
        cr = prov.get("code") or {}
        if cr.get("tiny_slm") or cr.get("git_commit"):
            key = f"tiny-slm {cr.get('tiny_slm') or '?'}" + (
                f" at git {short(cr['git_commit'])}"
                + (" with uncommitted changes" if cr.get("git_dirty") else "")
                if cr.get("git_commit")
                else ""
            )
            self.code.setdefault(key, []).append(label)
        dev = prov.get("device") or {}
        if dev.get("name"):
            self.hardware.setdefault(role, set()).add(f"{dev['name']}, {dev.get('threads', '?')} threads")

    def read(self, col: Collection) -> None:
        for c in col.cells:
            label = _label(c)
            sources = [(b.results, "evaluation") for b in c.benchmarks.values()] + (
                [(c.run, "training")] if c.run else []
            )
            for res, role in sources:
                self.files += 1
                for pkg, ver in (res.get("versions") or {}).items():
                    self.versions.setdefault(pkg, {}).setdefault(str(ver), []).append(label)
                prov = res.get("provenance")
                if not isinstance(prov, dict):
                    self.unknown += 1
                    continue
                self.add_common(prov, label, role, c.model)
                model_digest = (prov.get("model") or {}).get("sha256")
                if role == "training" or not c.trained or prov.get("adapter"):  # not full FT's tuned weights
                    self.add(self.base, c.model, model_digest, label)
                for drole, rec in (prov.get("data") or {}).items():
                    if not isinstance(rec, dict):
                        continue
                    key = {
                        "benchmark": str(res.get("benchmark") or "?"),
                        "fewshot_pool": "few-shot pool",
                        "training_set": f"training set {(res.get('data') or {}).get('dataset') or ''}".strip(),
                    }.get(drole, drole)
                    self.add(self.data, key, rec.get("sha256"), label)

    def lines(self) -> list[str]:
        lines = [
            f"{title} (sha256{', first 12 hex digits' if first else ''}): "
            + "; ".join(f"{k} {' / '.join(short(d) for d in ds)}" for k, ds in sorted(table.items()))
            + "."
            for title, table, first in (
                ("Base model weights", self.base, True),
                ("Data files", self.data, False),
                ("Chat templates", self.templates, False),
            )
            if table
        ]
        if self.code:
            lines.append("Code: " + "; ".join(sorted(self.code)) + ".")
        if self.hardware:
            lines.append(
                "Hardware: "
                + "; ".join(f"{role} on {', '.join(sorted(v))}" for role, v in sorted(self.hardware.items()))
                + "."
            )
        if self.unknown:
            lines.append(
                f"{self.unknown} of {self.files} result files carry no provenance record (written before tiny-slm "
                "recorded it): their weights and data files are unknown."
            )
        return lines

    def warnings(self) -> list[str]:
        warnings: list[str] = []
        for key, ds in sorted(self.data.items()):
            if len(ds) > 1:
                warnings.append(
                    f"Warning: the {key} results were made from {len(ds)} different data files: "
                    f"{_listing(ds)}. Cells built on different files are not comparable."
                )
        for model, ds in sorted(self.base.items()):
            if len(ds) > 1:
                warnings.append(
                    f"Warning: the {model} cells start from {len(ds)} different base weights: {_listing(ds)}."
                )
        for model, ds in sorted(self.templates.items()):
            if len(ds) > 1:
                warnings.append(
                    f"Warning: the {model} cells used {len(ds)} different chat templates: {_listing(ds)}."
                )
        mixed = {pkg: vs for pkg, vs in self.versions.items() if len(vs) > 1}
        if len(self.code) > 1:
            mixed["tiny-slm code"] = self.code
        if mixed:
            warnings.append(
                "Warning: the cells were made with different package versions: "
                + " | ".join(
                    f"{pkg}: " + "; ".join(f"{v} ({_names(cs)})" for v, cs in sorted(vs.items()))
                    for pkg, vs in sorted(mixed.items())
                )
                + "."
            )
        return warnings


def provenance_lines(col: Collection) -> tuple[list[str], list[str]]:
    """Header bullets with the digests (short form) of the weights, data files and chat templates behind the
    results, the code and hardware; and warnings when cells of one table came from different data files,
    base weights, templates or package versions (a table of mixed provenance compares unlike things).

    Results written before provenance was recorded have none: they are counted as unknown, never as a
    difference."""
    digests = _Digests()
    digests.read(col)
    return digests.lines(), digests.warnings()


def _study_lines(col: Collection) -> list[str]:
    lines = []
    for s in col.studies:
        cfg = s.get("config") or {}
        name = s.get("name") or cfg.get("name") or Path(s["_dir"]).name
        desc = f": {s['description']}" if s.get("description") else ""
        lines.append(f"Study '{name}' in {s['_dir']}{desc} (study.json updated {s.get('updated_at', '?')}).")
        settings = [f"seeds {cfg['seeds']}"] if cfg.get("seeds") else []
        for part in ("train", "eval", "hardware"):
            items = (cfg.get(part) or {}).items() if isinstance(cfg.get(part), dict) else []
            shown = [f"{k}={v}" for k, v in items if v is not None and not isinstance(v, dict)]
            if shown:
                settings.append(f"{part}: " + ", ".join(shown))
        if settings:
            lines.append("Settings: " + "; ".join(settings) + ".")
    return lines


def _sweep_line(col: Collection) -> str:
    """The header's account of a learning-rate sweep: how many trials, how chosen, where to look."""
    trials = [c for c in col.cells if c.is_trial]
    done = sum(c.finished for c in trials)
    how = "; ".join(
        f"select by {sw.get('select_by', '?')} on a validation split of {sw.get('val_size', '?')} "
        "training problems"
        for sw in col.sweeps
    )
    return (
        f"Learning-rate sweep: {len(trials)} trial cell(s), {done} finished"
        + (f" ({how})" if how else "")
        + "; every trial is listed under 'Learning-rate sweep', the chosen settings are the '-tuned' rows "
        "(e.g. lora-tuned)."
    )


def _sweep_sections(col: Collection) -> list[Section]:
    tables = sweep_tables(col)
    if not tables:
        return []
    blocks: list = [
        "Every trial of each model \u00d7 method, trained on the training set minus the validation split and "
        "measured on that split only (no test benchmark): its setting (the paper protocol's point marked), "
        "validation loss (token-weighted mean over the split's target tokens; 95% interval over its examples) "
        "and, where generated, validation exact match (Wilson 95% interval), train time, and the trial the "
        "selection rule chose."
    ]
    for t in tables:
        blocks.append(Table(t.columns, t.rows, title=f"{t.model}: learning-rate sweep", notes=t.notes))
    return [Section("Learning-rate sweep", blocks)]


def header(col: Collection, groups: dict) -> list:
    done = [c for c in col.cells if c.finished]
    stamps = sorted(
        str(t)
        for c in col.cells
        for t in [b.results.get("finished_at") for b in c.benchmarks.values()]
        + [(c.run or {}).get("finished_at")]
        if t
    )
    bullets = [
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %z')} from: {', '.join(str(r) for r in col.roots)}.",
        *_study_lines(col),
        f"Cells: {len(col.cells)} (model \u00d7 method \u00d7 seed), {len(done)} finished, "
        f"{len(col.cells) - len(done)} not finished.",
        "Models: "
        + "; ".join(f"{m} ({fmt_count(col.model_parameters(m))} parameters)" for m in col.models)
        + ".",
        "Methods: "
        + ", ".join(sorted({c.method for c in col.cells if not c.is_trial}, key=method_order))
        + ".",
        "Benchmarks: " + (", ".join(col.benchmark_names) or "none") + ".",
    ]
    if col.has_sweep:
        bullets.append(_sweep_line(col))
    if stamps:
        bullets.append(f"Results finished between {stamps[0]} and {stamps[-1]}.")
    if _devices(col):
        bullets.append("Devices: " + "; ".join(_devices(col)) + ".")
    if _versions(col):
        bullets.append("Versions: " + "; ".join(_versions(col)) + ".")
    prov_lines, prov_warnings = provenance_lines(col)
    bullets += prov_lines
    blocks: list = [Bullets(bullets), *prov_warnings]
    ns = [n for g in groups.values() for n in g.ns]
    if ns and min(ns) < SMALL_N:
        n = min(ns)
        blocks.append(
            f"Small samples: the smallest benchmark slice has n = {n} problems, where a 95% interval at 50% "
            f"accuracy is about \u00b1{100 * half_width(n):.0f} pp wide. Differences inside the intervals, and "
            "verdicts that say n.s., are not evidence of a difference either way."
        )
    return blocks


def _tuned_blocks(col: Collection, groups: dict, comps: dict) -> list:
    """With tuned methods: what the <method>-tuned rows are, and the negative-transfer verdict under both
    protocols per model x method."""
    if not any(c.is_tuned for c in col.cells):
        return []
    lines = [
        f"{model}: {line}" for model in col.models for line in negative_transfer_lines(groups, comps, model)
    ]
    blocks: list = [
        "The '-tuned' rows (e.g. lora-tuned): the same method at the setting its learning-rate sweep chose on "
        "the validation split (in brackets), evaluated on the same test problems; the row above it is the paper "
        "protocol's fixed setting. Both are tested against zero-shot, in the same Holm family."
    ]
    return blocks + ([Bullets(lines)] if lines else [])


def build_sections(col: Collection, price: float, examples: int = 3) -> tuple[list[Section], list, tuple]:
    """The report's sections in order, its figures and the rows of results.csv."""
    groups = build_groups(col)
    comps = comparisons(groups)
    sections = [Section("Runs", header(col, groups)), _recommendation_section(col, groups, comps)]
    sections.append(_accuracy_section(col, groups, comps))
    sections += _sweep_sections(col)

    cols, rows, notes = cost_table(col, price)
    sections.append(Section("Table 3: cost", [Table(cols, rows, notes=notes)]))
    edge = edge_table(col)
    if edge is not None:
        sections.append(
            Section("Table 4: on device (llama.cpp on this CPU)", [Table(edge[0], edge[1], notes=edge[2])])
        )

    figures = all_figures(col, groups)
    sections.append(
        Section(
            "Figures",
            list(figures)
            or ["No figure: no training metrics, parameter counts or throughput numbers were found."],
        )
    )
    sections.append(_qualitative_section(col, groups, examples))
    sections += _diagnostics_section(col) + _failed_section(col)
    if col.warnings:
        sections.append(Section("Warnings while reading", [Bullets(col.warnings)]))
    return sections, figures, results_csv_rows(col)


def _recommendation_section(col: Collection, groups: dict, comps: dict) -> Section:
    """Per model: the method to use and whether the data can tell it from the others."""
    rec_blocks: list = []
    for rec in recommendations(col, groups, comps):
        rec_blocks += [f"{rec.model}:", Bullets(rec.text)]
    return Section(
        "Recommendations",
        [
            "Derived from the tables below: per model, the method with the highest exact match pooled over the "
            "benchmarks every method has, and whether the data can tell it from the others (exact McNemar on the "
            f"same problems, \u03b1 = {ALPHA}, Holm-adjusted over the best method's comparisons within the model; a "
            "multi-seed method counts a problem as solved when most seeds solved it).",
            *rec_blocks,
        ],
    )


def _accuracy_section(col: Collection, groups: dict, comps: dict) -> Section:
    """Table 2: exact match with intervals, the paired tests against zero-shot, negative transfer."""
    cols, rows = accuracy_table(groups, comps)
    flagged = [r for r in rows if r[-1].startswith("NEGATIVE TRANSFER")]
    return Section(
        "Table 2: accuracy",
        [
            Table(
                cols,
                rows,
                notes=[
                    "Exact match: the extracted answer equals the gold (flexible: the last number counts when no answer "
                    "is marked). 95% CI: Wilson score interval. With several seeds: mean \u00b1 sample sd over seeds, and "
                    "the interval is Wilson at the mean with the per-seed n (problems are the sampling unit; seeds re-use "
                    "the same problems).",
                    "\u0394: percentage points against the same model's zero-shot on the same benchmark. McNemar: exact "
                    "two-sided test on the problems both answered, joined by id; 'lost/won' counts the problems only "
                    "zero-shot / only this method got right. One test per seed of the method (zero-shot is greedy and "
                    "seed-independent, run once); 'significantly below' needs a negative mean \u0394 and more than half "
                    f"of the seeds below zero-shot with Holm-adjusted p < {ALPHA}. NEGATIVE TRANSFER = a trained method "
                    "significantly below zero-shot; n.s. = not significant.",
                    "Holm: all McNemar tests of one model in this table (every method \u00d7 benchmark \u00d7 seed against "
                    "zero-shot) are one family; the i-th smallest of its m p-values is multiplied by m \u2212 i + 1 (running "
                    "maximum, capped at 1), which keeps the chance of any false flag per model at 5%. Both p-values are "
                    "shown; the verdicts use the adjusted one.",
                ],
            ),
            (
                f"Negative transfer found in {len(flagged)} case(s): "
                + "; ".join(f"{r[0]} {r[1]} on {r[2]} ({r[7]} pp)" for r in flagged)
                + "."
            )
            if flagged
            else "No trained method is significantly below its zero-shot baseline.",
            *_tuned_blocks(col, groups, comps),
        ],
    )


def _qualitative_section(col: Collection, groups: dict, examples: int) -> Section:
    """Side-by-side outputs, repetition loops, strict against flexible match."""
    qual: list = [
        f"The first {examples} problems (by id) that every method of a model answered, each method's lowest "
        "seed; the output is cut to its start and end (the end is where the answer is). \u2713/\u2717 is the "
        "flexible verdict."
    ]
    for title, qcols, qrows in qualitative_examples(groups, examples):
        qual.append(Table(qcols, qrows, title=title))
    rcols, rrows = repetition_table(col)
    qual.append(
        Table(
            rcols,
            rrows,
            title="Repetition loops and arithmetic",
            notes=[
                "A repetition loop: the same word n-gram 4 or more times in a row (tinyslm.core.textstats). Hit token "
                "budget: the output used all max_new_tokens, i.e. it never ended on its own.",
                "Equations: the 'a op b = c' statements in the outputs; false: wrong under exact rational arithmetic "
                "(c rounded to its own decimals counts as right), as the diagnostics' arithmetic error rate. Every "
                "method is shown, zero-shot included, so a rate after fine-tuning can be read against the base model's.",
            ],
        )
    )
    scols, srows = strict_table(groups)
    qual.append(
        Table(
            scols,
            srows,
            title="Strict against flexible match",
            notes=[
                "Strict also requires the answer to be marked ('#### X', \\boxed{X}, 'The answer is X'); a large gap "
                "means the method finds the number but not the requested format."
            ],
        )
    )
    return Section("Qualitative", qual)


def _diagnostics_section(col: Collection) -> list[Section]:
    """The diagnostics table, when any cell has diagnostics."""
    diag = diagnostics_table(col)
    if diag is None:
        return []
    return [
        Section(
            "Diagnostics",
            [
                Table(
                    *diag,
                    notes=[
                        "The 'summary' of each cell's diagnostics.json (tiny-slm analyze); where seeds differ, each seed's "
                        "value in seed order, separated by '/'."
                    ],
                )
            ],
        )
    ]


def _failed_section(col: Collection) -> list[Section]:
    """Every cell that did not finish, with its reason."""
    failed = [c for c in col.cells if not c.finished]
    if not failed:
        return []
    return [
        Section(
            "Failed or unfinished cells",
            [
                Table(
                    ["Model", "Method", "Seed", "Status", "Directory"],
                    [
                        [
                            c.model,
                            c.method,
                            "" if c.seed is None else str(c.seed),
                            short_reason(c, 300),
                            str(c.dir),
                        ]
                        for c in failed
                    ],
                )
            ],
        )
    ]


def write_report(
    run_dirs: Sequence[str | Path],
    output: str | Path,
    *,
    price_per_gpu_hour: float = ReportSettings.price_per_gpu_hour,
    examples: int = ReportSettings.examples,
) -> Path:
    """Read ``run_dirs`` and write the report into ``output``; returns the path of report.html."""
    if not math.isfinite(price_per_gpu_hour) or price_per_gpu_hour < 0:
        raise ValueError(f"price_per_gpu_hour must be a finite number >= 0, got {price_per_gpu_hour}")
    col = collect(list(run_dirs))
    out = Path(output)
    sections, figures, (csv_cols, csv_rows) = build_sections(col, price_per_gpu_hour, examples)
    for f in figures:
        atomic_write_bytes(out / "figures" / f.name, f.png)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_cols)
    writer.writerows(csv_rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "report.md", to_markdown(TITLE, sections))
    atomic_write_text(out / "report.html", to_html(TITLE, sections))
    return out / "report.html"
