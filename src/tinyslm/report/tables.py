"""From cells to the report's numbers: groups over seeds, paired tests, and the tables built from them.

The statistics, in one place so that the README can describe them exactly:

* accuracy of one run: exact match with its 95% Wilson interval (``stats.wilson_interval``);
* several seeds: mean +- sample sd of the per-seed exact match; the interval is the Wilson interval at
  the mean accuracy with the per-seed n, i.e. the uncertainty from sampling *problems* (seeds re-use the
  same problems, so pooling them as k x n independent trials would make it look k times more certain);
* a method against zero-shot: exact McNemar on the problems both answered (joined by id), once per seed
  of the method (zero-shot is deterministic and run once). The p-values of all these tests of one model
  (every method x benchmark x seed) form one family and are Holm-adjusted (``stats.holm_adjust``). A
  method is called significantly below (for a trained method: negative transfer) when its mean is below
  zero-shot and more than half of its seeds are individually below with Holm-adjusted p < 0.05 (above
  likewise); every seed's raw and adjusted p-value is printed;
* best method per model: pooled correct / n over the benchmarks every compared method has (seed means);
  its lead over each other method is tested with McNemar on the pooled problems, a problem counting as
  solved by a multi-seed method when more than half of its seeds solved it; these tests of one model are
  their own Holm family, and a method is "not significantly worse" unless its adjusted p < 0.05.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tinyslm.core.stats import holm_adjust, mcnemar_exact, mean, paired_counts, sample_sd, wilson_interval
from tinyslm.core.textstats import find_equations, has_repetition_loop
from tinyslm.report.collect import (
    ZERO_SHOT,
    BenchmarkRun,
    Cell,
    Collection,
    base_method,
    is_trained_method,
    is_tuned,
    method_order,
    natural_key,
)
from tinyslm.results.schema import Status

ALPHA = 0.05
SMALL_N = 200  # below this many problems a 95% interval at 50% accuracy is wider than +-7 pp


# ---------------------------------------------------------------------------------------------------
# Groups: one model x method x benchmark over its seeds.


@dataclass
class Group:
    model: str
    method: str
    benchmark: str
    runs: list[tuple[Cell, BenchmarkRun]] = field(default_factory=list)  # finished, by seed
    missing: list[Cell] = field(default_factory=list)  # cells of this group without a result

    @property
    def ems(self) -> list[float]:
        return [b.results["correct"] / b.results["n"] if b.results["n"] else 0.0 for _, b in self.runs]

    @property
    def em(self) -> float:
        return mean(self.ems)

    @property
    def em_sd(self) -> float | None:
        return sample_sd(self.ems)

    @property
    def ns(self) -> list[int]:
        return [int(b.results["n"]) for _, b in self.runs]

    @property
    def ci(self) -> tuple[float, float]:
        """One run: its Wilson interval. Several seeds: Wilson at the mean accuracy with the per-seed n."""
        n = round(mean([float(x) for x in self.ns]))
        return wilson_interval(min(n, max(0.0, self.em * n)), n) if n else (0.0, 0.0)

    @property
    def strict_em(self) -> float:
        return mean(
            [
                b.results.get("strict_correct", 0) / b.results["n"] if b.results["n"] else 0.0
                for _, b in self.runs
            ]
        )

    def verdicts(self) -> dict[str, bool]:
        """Per problem: solved by more than half of the seeds (the single run's verdict for one seed)."""
        votes: dict[str, list[bool]] = defaultdict(list)
        for _, b in self.runs:
            for k, v in b.verdicts.items():
                votes[k].append(v)
        k_runs = len(self.runs)
        return {k: sum(v) * 2 > k_runs for k, v in votes.items() if len(v) == k_runs}


def build_groups(col: Collection) -> dict[tuple[str, str, str], Group]:
    """Every model x method x benchmark that has a result or a cell that should have produced one."""
    groups: dict[tuple[str, str, str], Group] = {}
    model_benchmarks: dict[str, set[str]] = defaultdict(set)
    # Sweep trials have no test benchmarks by design: they are never a group (nor a "missing" result).
    cells = [c for c in col.cells if not c.is_trial]
    for c in cells:
        model_benchmarks[c.model] |= set(c.benchmarks)
    for c in cells:
        for name, b in c.benchmarks.items():
            g = groups.setdefault((c.model, c.method, name), Group(c.model, c.method, name))
            if c.finished:
                g.runs.append((c, b))
            else:
                g.missing.append(c)
        expected = set(c.declared_benchmarks) or model_benchmarks[c.model] or {""}
        for name in sorted(expected - set(c.benchmarks)):
            groups.setdefault((c.model, c.method, name), Group(c.model, c.method, name)).missing.append(c)
    for g in groups.values():
        g.runs.sort(key=lambda r: r[0].seed if isinstance(r[0].seed, int) else -1)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], method_order(kv[0][1]))))


# ---------------------------------------------------------------------------------------------------
# Paired comparisons.


@dataclass
class PairedTest:
    seed: int | None
    n: int  # problems both answered
    losses: int  # baseline right, this method wrong
    wins: int  # this method right, baseline wrong
    p: float
    p_adj: float | None = None  # Holm-adjusted within the model's family of tests (None: not adjusted yet)

    @property
    def p_used(self) -> float:
        """The p-value the verdicts use: the adjusted one once the family is known."""
        return self.p if self.p_adj is None else self.p_adj


@dataclass
class Comparison:
    delta_pp: float
    tests: list[PairedTest]
    verdict: str  # "significantly below", "significantly above", "n.s.", "no paired predictions"
    negative_transfer: bool


def _pick_baseline(baseline: Group, seed: int | None) -> BenchmarkRun:
    for c, b in baseline.runs:
        if c.seed == seed:
            return b
    return baseline.runs[0][1]


def paired_tests(group: Group, baseline: Group) -> list[PairedTest]:
    """One McNemar test per seed of ``group`` against ``baseline`` on the problems both answered (raw p)."""
    tests = []
    for c, b in group.runs:
        base = _pick_baseline(baseline, c.seed)
        n, losses, wins = paired_counts(base.verdicts, b.verdicts)
        if n:
            tests.append(PairedTest(c.seed, n, losses, wins, mcnemar_exact(losses, wins)))
    return tests


def adjust_family(tests: list[PairedTest]) -> None:
    """Holm-adjust a family of tests in place (``p_adj``)."""
    for t, adj in zip(tests, holm_adjust([t.p for t in tests]), strict=True):
        t.p_adj = adj


def compare(group: Group, baseline: Group, tests: list[PairedTest] | None = None) -> Comparison:
    """``group`` against ``baseline`` (zero-shot) on the same problems, one McNemar test per seed.

    ``tests`` already Holm-adjusted within a larger family (``comparisons``: all tests of the model) are
    judged by their adjusted p; without them this comparison's own seeds are the family.
    """
    delta = 100 * (group.em - baseline.em)
    if tests is None:
        tests = paired_tests(group, baseline)
        adjust_family(tests)
    if not tests:
        return Comparison(delta, [], "no paired predictions", False)
    half = len(tests) / 2
    below = sum(t.p_used < ALPHA and t.losses > t.wins for t in tests)
    above = sum(t.p_used < ALPHA and t.wins > t.losses for t in tests)
    if delta < 0 and below > half:
        verdict = "significantly below"
    elif delta > 0 and above > half:
        verdict = "significantly above"
    else:
        verdict = "n.s."
    return Comparison(delta, tests, verdict, verdict == "significantly below" and group.runs[0][0].trained)


def comparisons(groups: dict[tuple[str, str, str], Group]) -> dict[tuple[str, str, str], Comparison]:
    """Every group against its model's zero-shot; the tests of one model (all methods x benchmarks x seeds)
    are one Holm family, and the verdicts use the adjusted p-values."""
    pending: dict[tuple[str, str, str], tuple[Group, Group, list[PairedTest]]] = {}
    families: dict[str, list[PairedTest]] = defaultdict(list)
    for key, g in groups.items():
        base = groups.get((g.model, ZERO_SHOT, g.benchmark))
        if g.method != ZERO_SHOT and g.runs and base is not None and base.runs:
            tests = paired_tests(g, base)
            pending[key] = (g, base, tests)
            families[g.model] += tests
    for tests in families.values():
        adjust_family(tests)
    return {key: compare(g, base, tests) for key, (g, base, tests) in pending.items()}


# ---------------------------------------------------------------------------------------------------
# Formatting.


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}".replace("-", "\u2212")


def fmt_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def fmt_p_pair(t: PairedTest) -> str:
    """Raw and Holm-adjusted p side by side: 'p=0.031, Holm p=0.124'."""
    return fmt_p(t.p) + ("" if t.p_adj is None else f", Holm {fmt_p(t.p_adj)}")


def fmt_count(x: float | None) -> str:
    """135M, 1.54B, 3.2K: parameter counts as people say them."""
    if x is None:
        return "\u2014"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "\u2014"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def mean_sd_text(values: list[float], fmt: Any = lambda v: f"{v:.1f}") -> str:
    if not values:
        return "\u2014"
    sd = sample_sd(values)
    return fmt(mean(values)) + (f" \u00b1 {fmt(sd)}" if sd is not None else "")


def seeds_text(g: Group) -> str:
    failed = len({id(c) for c in g.missing})
    return f"{len(g.runs)}" + (f" (+{failed} not finished)" if failed else "")


def short_reason(c: Cell, width: int = 120) -> str:
    r = " ".join(str(c.reason or "").split())
    if len(r) > width:
        r = r[:width] + "\u2026"
    return c.status + (f": {r}" if r else "")


# ---------------------------------------------------------------------------------------------------
# Table builders: each returns (columns, rows) of display strings.


Rows = list[list[str]]


def results_csv_rows(col: Collection) -> tuple[list[str], Rows]:
    """One row per model x method x benchmark x seed, failed cells included (their numbers empty)."""
    cols = [
        "model",
        "method",
        "benchmark",
        "seed",
        "status",
        "n",
        "correct",
        "exact_match",
        "ci95_lo",
        "ci95_hi",
        "strict_correct",
        "strict_exact_match",
        "model_parameters",
        "shots",
        "device",
        "eval_wall_s",
        "reason",
        "dir",
    ]
    rows: Rows = []
    groups = build_groups(col)
    for g in groups.values():
        for c, b in g.runs:
            r = b.results
            n, k = int(r["n"]), int(r["correct"])
            lo, hi = wilson_interval(k, n)
            rows.append(
                [
                    g.model,
                    g.method,
                    g.benchmark,
                    _s(c.seed),
                    Status.FINISHED.value,
                    str(n),
                    str(k),
                    f"{k / n if n else 0.0:.6f}",
                    f"{lo:.6f}",
                    f"{hi:.6f}",
                    _s(r.get("strict_correct")),
                    _s(r.get("strict_exact_match")),
                    _s(r.get("model_parameters")),
                    _s(r.get("shots")),
                    _s(r.get("device")),
                    _s(r.get("wall_s")),
                    "",
                    str(c.dir),
                ]
            )
        for c in g.missing:
            b = c.benchmarks.get(g.benchmark)
            r = b.results if b else {}
            n, k = r.get("n"), r.get("correct")
            rows.append(
                [
                    g.model,
                    g.method,
                    g.benchmark,
                    _s(c.seed),
                    c.status if c.status != Status.FINISHED else "missing",
                    _s(n),
                    _s(k),
                    "",
                    "",
                    "",
                    "",
                    "",
                    _s(r.get("model_parameters")),
                    _s(r.get("shots")),
                    _s(r.get("device")),
                    "",
                    str(c.reason or ("no results.json" if not b else "")),
                    str(c.dir),
                ]
            )
    return cols, rows


def _s(x: Any) -> str:
    return "" if x is None else str(x)


def accuracy_table(groups: dict[tuple[str, str, str], Group], comps: dict) -> tuple[list[str], Rows]:
    """Table 2: exact match per model x method x benchmark, against the model's zero-shot."""
    cols = [
        "Model",
        "Method",
        "Benchmark",
        "Seeds",
        "n",
        "Exact match %",
        "95% CI",
        "\u0394 vs zero-shot (pp)",
        "McNemar vs zero-shot (lost/won, p, Holm-adjusted p)",
        "Verdict",
    ]
    rows: Rows = []
    for key, g in groups.items():
        if not g.runs:
            why = "; ".join(sorted({short_reason(c, 80) for c in g.missing}))
            rows.append(
                [
                    g.model,
                    g.method,
                    g.benchmark,
                    seeds_text(g),
                    "\u2014",
                    "\u2014",
                    "\u2014",
                    "\u2014",
                    "\u2014",
                    why or "no result",
                ]
            )
            continue
        lo, hi = g.ci
        ns = sorted(set(g.ns))
        em = mean_sd_text([100 * e for e in g.ems])
        comp = comps.get(key)
        if g.method == ZERO_SHOT:
            delta, test, verdict = "\u2014", "\u2014", "baseline"
        elif comp is None:
            delta, test, verdict = "\u2014", "\u2014", "no zero-shot to compare"
        else:
            delta = signed(comp.delta_pp)
            test = (
                "; ".join(
                    (f"s{t.seed}: " if len(comp.tests) > 1 else "") + f"{t.losses}/{t.wins}, {fmt_p_pair(t)}"
                    for t in comp.tests
                )
                or "\u2014"
            )
            verdict = "NEGATIVE TRANSFER" if comp.negative_transfer else comp.verdict
            if len(comp.tests) > 1 and comp.verdict != "no paired predictions":
                k = sum(t.p_used < ALPHA for t in comp.tests)
                verdict += f" ({k}/{len(comp.tests)} seeds Holm p<{ALPHA})"
        rows.append(
            [
                g.model,
                method_label(g),
                g.benchmark,
                seeds_text(g),
                str(ns[0]) if len(ns) == 1 else f"{ns[0]}\u2013{ns[-1]}",
                em,
                f"[{pct(lo)}, {pct(hi)}]",
                delta,
                test,
                verdict,
            ]
        )
    return cols, rows


def method_label(g: Group) -> str:
    """The method as Table 2 names it: a tuned method with the setting the sweep chose, e.g.
    'lora-tuned (lr=5e-4, lora_r=16)' (the setting of its cells; each seed's where they differ)."""
    if not is_tuned(g.method):
        return g.method
    settings = []
    for c, _ in g.runs:
        text = fmt_setting((c.chosen or {}).get("setting"))
        if text and text not in settings:
            settings.append(text)
    return g.method + (f" ({' / '.join(settings)})" if settings else "")


def fmt_setting_value(x: Any) -> str:
    """5e-4, 2e-5, 1.5e-4, 16, 0.1: a sweep value as people write it (small floats in short e-notation)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if x != 0 and abs(x) < 1e-2:
        mantissa, exp = f"{x:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exp)}"
    return f"{x:g}"


def fmt_setting(setting: Any) -> str:
    """{'lr': 0.0005, 'lora_r': 16} -> 'lr=5e-4, lora_r=16' (empty for no setting)."""
    if not isinstance(setting, dict):
        return ""
    return ", ".join(f"{k}={fmt_setting_value(v)}" for k, v in setting.items())


def _by_model_method(col: Collection) -> dict[tuple[str, str], list[Cell]]:
    """The cells of each model x method row (sweep trials are no method row: see :func:`sweep_tables`)."""
    out: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in col.cells:
        if not c.is_trial:
            out[(c.model, c.method)].append(c)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]))))


def _is_gpu(device: Any) -> bool:
    return str(device or "").startswith("cuda")


def _eval_wall(c: Cell) -> float:
    return sum(float(b.results.get("wall_s") or 0.0) for b in c.benchmarks.values())


def cost_table(col: Collection, price: float) -> tuple[list[str], Rows, list[str]]:
    """Table 3: what each method costs to train and to evaluate, per model x method (mean over seeds)."""
    cols = [
        "Model",
        "Method",
        "Seeds",
        "Device",
        "Train runtime",
        "Samples/s",
        "Tokens/s",
        "Speed vs full FT",
        "Peak memory (MiB)",
        "Trainable params",
        "Train cost",
        "Eval wall time",
        "Eval cost",
    ]
    rows: Rows = []
    any_resumed = False
    cells = _by_model_method(col)
    full_speed: dict[str, float] = {}
    for (model, method), cs in cells.items():
        speeds = [
            float(c.run["samples_per_s"]) for c in cs if c.finished and c.run and c.run.get("samples_per_s")
        ]
        if method == "full" and speeds:
            full_speed[model] = mean(speeds)
    for (model, method), cs in cells.items():
        done = [c for c in cs if c.finished]
        # a tuned cell that evaluated the chosen trial's model costs that trial's training
        runs = [r for r in (col.training_run(c) for c in done) if r]
        if runs:
            train = _train_columns(runs, full_speed.get(model), price)
        else:
            train = ["\u2014 (no training)" if not any(c.trained for c in cs) else "\u2014"] + ["\u2014"] * 6
        evals, resumed = _eval_columns(done, price)
        any_resumed = any_resumed or resumed
        failed = len(cs) - len(done)
        seeds = f"{len(done)}" + (f" (+{failed} not finished)" if failed else "")
        rows.append([model, method, seeds, _devices(runs, done) or "\u2014", *train, *evals])
    return cols, rows, _cost_notes(col, price, any_resumed)


def _devices(runs: list[dict], done: list[Cell]) -> str:
    """Where a method ran: the evaluation's devices, or training's and evaluation's when they differ."""
    train_dev = sorted({str(r.get("device")) for r in runs if r.get("device")})
    eval_dev = sorted(
        {str(b.results["device"]) for c in done for b in c.benchmarks.values() if b.results.get("device")}
    )
    if not train_dev or train_dev == eval_dev:
        return ", ".join(eval_dev)
    return f"train {', '.join(train_dev)}; eval {', '.join(eval_dev) or '?'}"


def _train_columns(runs: list[dict], full_speed: float | None, price: float) -> list[str]:
    """Table 3's training columns from the run.json records of one model x method (one per seed)."""
    runtime = [float(r.get("runtime_s") or 0) for r in runs]
    sps = [float(r["samples_per_s"]) for r in runs if r.get("samples_per_s")]
    tps = [float(r["tokens_per_s"]) for r in runs if r.get("tokens_per_s")]
    mem = [float(r["peak_mem_mib"]) for r in runs if r.get("peak_mem_mib")]
    kinds = sorted({str(r.get("peak_mem_kind")) for r in runs if r.get("peak_mem_kind")})
    params = runs[0].get("parameters") or {}
    trainable = params.get("trainable")
    frac = params.get("trainable_fraction")
    rel = f"\u00d7{mean(sps) / full_speed:.2f}" if sps and full_speed else "\u2014"
    if all(_is_gpu(r.get("device")) for r in runs):
        hours = [
            float(r.get("runtime_s") or 0) / 3600 * int((r.get("schedule") or {}).get("num_processes") or 1)
            for r in runs
        ]
        train_cost = f"${mean(hours) * price:.2f}"
    else:
        train_cost = "CPU run"
    return [
        mean_sd_text(runtime, fmt_duration),
        mean_sd_text(sps),
        mean_sd_text(tps, lambda v: f"{v:.0f}"),
        rel,
        (mean_sd_text(mem, lambda v: f"{v:.0f}") + (f" ({', '.join(kinds)})" if kinds else ""))
        if mem
        else "\u2014",
        f"{fmt_count(trainable)}" + (f" ({100 * frac:.2f}%)" if isinstance(frac, (int, float)) else ""),
        train_cost,
    ]


def _eval_columns(done: list[Cell], price: float) -> tuple[list[str], bool]:
    """Table 3's evaluation columns (wall time, cost) of one model x method, and whether any of its
    evaluations resumed (then the time is a lower bound)."""
    evals = [_eval_wall(c) for c in done if c.benchmarks]
    resumed = any(
        (b.results.get("resumed_predictions") or 0) > 0 for c in done for b in c.benchmarks.values()
    )
    eval_gpu = all(_is_gpu(b.results.get("device")) for c in done for b in c.benchmarks.values())
    eval_cost = "\u2014" if not evals else f"${mean(evals) / 3600 * price:.2f}" if eval_gpu else "CPU run"
    wall = (
        (mean_sd_text(evals, fmt_duration) + (" (\u2265, resumed)" if resumed else "")) if evals else "\u2014"
    )
    return [wall, eval_cost], resumed


def _cost_notes(col: Collection, price: float, any_resumed: bool) -> list[str]:
    """The notes under Table 3: how costs are counted, resumed evaluations, and the sweep's price."""
    notes = [
        f"Train cost = runtime hours \u00d7 processes \u00d7 ${price:.2f} per GPU-hour (--price-per-gpu-hour); "
        "eval cost = eval wall hours \u00d7 the same price (one process). A run on CPU has no GPU cost and is "
        "marked 'CPU run' instead of a made-up price.",
        "Train runtime is the whole run's wall time (run.json runtime_s, resumed sessions included); samples/s "
        "and tokens/s are training throughput (non-pad tokens); speed vs full FT is samples/s relative to full "
        "fine-tuning of the same model. Eval wall time is the summed results.json wall_s over the benchmarks of "
        "one seed (generation and scoring, model loading excluded): for zero-/few-shot it is the whole cost.",
    ]
    if any_resumed:
        notes.append(
            "'\u2265, resumed': an evaluation that resumed from predictions already on disk (its process was "
            "stopped and rerun); results.json times only the run that finished it, so the time shown is a lower "
            "bound (resumed_predictions in results.json says how many came from before)."
        )
    sweep_cost = _sweep_cost(col)
    if sweep_cost:
        notes.append(
            "The learning-rate sweep's trials are not rows of this table (they have no test evaluation); their "
            "training, the price of tuning: "
            + "; ".join(sweep_cost)
            + ". A '-tuned' row counts the training of the chosen setting only (for the first seed, the "
            "chosen trial's own run)."
        )
    return notes


def _sweep_cost(col: Collection) -> list[str]:
    """Per model x method: the number of sweep trials that ran (finished, diverged or failed: each cost its
    training) and their summed training runtime; trials not run to an end yet are counted apart, so a
    sweep still running does not read as a free one."""
    per: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for c in col.cells:
        if c.is_trial:
            per[(c.model, c.base_method)].append(c)
    out = []
    for (model, method), cs in sorted(per.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]))):
        ran = [c for c in cs if c.run and c.status not in (Status.RUNNING, Status.INTERRUPTED)]
        runtime = sum(float(c.run.get("runtime_s") or 0) for c in ran)
        text = f"{model} {method} {len(ran)} trial(s), {fmt_duration(runtime)} of training" if ran else ""
        if len(ran) < len(cs):
            pending = f"{len(cs) - len(ran)} not run to an end yet"
            text = f"{text} (+{pending})" if ran else f"{model} {method} no trial yet ({pending})"
        out.append(text)
    return out


def edge_table(col: Collection) -> tuple[list[str], Rows, list[str]] | None:
    """Table 4: each exported GGUF scored by llama.cpp beside its float model, per benchmark: file size,
    memory, speed, exact match, and the paired test of what quantisation cost (None: nothing exported)."""
    cols = [
        "Model", "Method", "File", "Size (MiB)", "Memory (MiB)", "tok/s @1", "tok/s @batch", "Benchmark",
        "Float EM % [95% CI]", "File EM % [95% CI]", "Δ (pp)", "Same output %", "Lost / gained", "McNemar p",
    ]  # fmt: skip
    rows: Rows = []
    for c in col.cells:
        if not c.finished:
            continue
        for quant, runs in sorted(c.edge.items(), key=lambda kv: -_gguf_bytes(kv[1])):
            for name, run in sorted(runs.items()):
                res, base = run.results, c.benchmarks.get(name)
                mem = _minus(res.get("peak_rss_mib"), res.get("rss_before_load_mib"))
                row = [
                    c.model, c.method, str(res.get("dtype") or quant), _mib(res.get("gguf_bytes")),
                    fmt_num(round(mem)) if mem is not None else "-", _rate(res.get("tokens_per_s_batch1")),
                    _rate(res.get("generated_tokens_per_s")), name,
                ]  # fmt: skip
                file_em = f"{pct(res['correct'] / res['n'])}{_interval(res.get('exact_match_ci95'), pct)}"
                if base is None:
                    rows.append(row + ["-", file_em, "-", "-", "-", "-"])
                    continue
                fv, qv = base.verdicts, run.verdicts
                ids = sorted(set(fv) & set(qv))
                lost = sum(fv[i] and not qv[i] for i in ids)
                gained = sum(qv[i] and not fv[i] for i in ids)
                same = sum(base.predictions[i].get("output") == run.predictions[i].get("output") for i in ids)
                fres = base.results
                rows.append(
                    row
                    + [
                        f"{pct(fres['correct'] / fres['n'])}{_interval(fres.get('exact_match_ci95'), pct)}",
                        file_em,
                        signed(100 * (gained - lost) / len(ids)) if ids else "-",
                        pct(same / len(ids)) if ids else "-",
                        f"{lost} / {gained}",
                        fmt_p(mcnemar_exact(lost, gained)) if ids else "-",
                    ]
                )
    if not rows:
        return None
    notes = [
        "Each file was written by `tiny-slm export` (adapter merged, llama.cpp's own quantiser) and scored by "
        "`--backend llama-cpp` with the float model's prompts, stop rule, scorer and problems.",
        "Memory: peak resident memory of the scoring process while it generated, minus its resident memory "
        "once Python and the tokenizer had loaded: the weights, KV cache and compute buffers.",
        "tok/s @1: generated tokens per second decoding the first 4 prompts one at a time (64 new tokens at "
        "most); tok/s @batch: the whole benchmark with continuous batching at the run's batch size.",
        "Δ, same output, lost / gained (problems only the float model / only the file solves) and the exact "
        "McNemar p pair the file with its float model on the same problems: a check of what quantisation "
        "cost, one test per file and benchmark, not adjusted for multiplicity.",
    ]
    return cols, rows, notes


def _gguf_bytes(runs: dict[str, BenchmarkRun]) -> int:
    return max((int(r.results.get("gguf_bytes") or 0) for r in runs.values()), default=0)


def _minus(a: Any, b: Any) -> float | None:
    return float(a) - float(b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _rate(x: Any) -> str:
    return f"{x:.0f}" if isinstance(x, (int, float)) else "-"


def _mib(n: Any) -> str:
    return f"{n / 2**20:.1f}" if isinstance(n, (int, float)) and n > 0 else "-"


def strict_table(groups: dict[tuple[str, str, str], Group]) -> tuple[list[str], Rows]:
    """Flexible (any final number) against strict (marked answer) exact match: the formatting effect."""
    cols = ["Model", "Method", "Benchmark", "Flexible %", "Strict %", "Gap (pp)"]
    rows = [
        [g.model, g.method, g.benchmark, pct(g.em), pct(g.strict_em), signed(100 * (g.em - g.strict_em))]
        for g in groups.values()
        if g.runs
    ]
    return cols, rows


def repetition_table(col: Collection) -> tuple[list[str], Rows]:
    """Per model x method, zero-shot included (a symptom of fine-tuning needs the base model's rate beside
    it): outputs stuck in a repetition loop, outputs that hit the token budget, and false arithmetic."""
    cols = [
        "Model", "Method", "Outputs", "Repetition loops", "Loop rate %", "Hit token budget %",
        "Equations", "False equations %",
    ]  # fmt: skip
    rows: Rows = []
    for (model, method), cs in _by_model_method(col).items():
        total = loops = budget = equations = false = 0
        for c in cs:
            if not c.finished:
                continue
            for b in c.benchmarks.values():
                cap = b.results.get("max_new_tokens")
                for p in b.predictions.values():
                    text = str(p.get("output") or "")
                    total += 1
                    loops += has_repetition_loop(text)
                    budget += bool(cap) and int(p.get("n_tokens") or 0) >= int(cap)
                    eqs = find_equations(text)
                    equations += len(eqs)
                    false += sum(e.is_error for e in eqs)
        if total:
            rows.append(
                [
                    model,
                    method,
                    str(total),
                    str(loops),
                    pct(loops / total),
                    pct(budget / total),
                    str(equations),
                    pct(false / equations) if equations else "-",
                ]  # fmt: skip
            )
    return cols, rows


def _clip(text: str, head: int = 90, tail: int = 110) -> str:
    """Beginning and end of an output (the end is where the answer is), on one line."""
    t = " ".join(str(text).split())
    return t if len(t) <= head + tail + 3 else f"{t[:head]} \u2026 {t[-tail:]}"


def qualitative_examples(
    groups: dict[tuple[str, str, str], Group], k: int = 3
) -> list[tuple[str, list[str], Rows]]:
    """Per model x benchmark: the first ``k`` problem ids that every method answered, each method's answer
    side by side (its lowest seed). Returns (title, columns, rows) per model x benchmark."""
    by_mb: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups.values():
        if g.runs and g.runs[0][1].predictions:
            by_mb[(g.model, g.benchmark)].append(g)
    out = []
    for (model, bench), gs in sorted(by_mb.items()):
        common = set.intersection(*(set(g.runs[0][1].predictions) for g in gs))
        ids = sorted(common, key=natural_key)[:k]
        if not ids:
            continue
        cols = ["Problem", "Gold", "Method", "Extracted", "OK", "Output (start \u2026 end)"]
        rows: Rows = []
        for pid in ids:
            for i, g in enumerate(gs):
                c, b = g.runs[0]
                p = b.predictions[pid]
                label = g.method + (f" (seed {c.seed})" if len(g.runs) > 1 else "")
                rows.append(
                    [
                        pid if i == 0 else "",
                        str(p.get("reference", "")) if i == 0 else "",
                        label,
                        str(p.get("extracted") if p.get("extracted") is not None else "\u2014"),
                        "\u2713" if p.get("correct") else "\u2717",
                        _clip(p.get("output") or ""),
                    ]
                )
        out.append((f"{model} \u2014 {bench}", cols, rows))
    return out


def diagnostics_table(col: Collection) -> tuple[list[str], Rows] | None:
    """diagnostics.json summaries per model x method (each seed's value where they differ), when any exist."""
    per: dict[tuple[str, str], list[dict]] = defaultdict(list)
    keys: list[str] = []
    for c in col.cells:
        if c.diagnostics:
            per[(c.model, c.method)].append(c.diagnostics)
            keys += [k for k in c.diagnostics if k not in keys]
    if not per:
        return None
    rows: Rows = []
    for (model, method), sums in sorted(per.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]))):
        row = [model, method, str(len(sums))]
        for k in keys:
            vals = [fmt_num(s[k]) for s in sums if s.get(k) is not None]
            # one value when the seeds agree, else each seed's (a mean of p-values or counts would mislead)
            row.append("\u2014" if not vals else vals[0] if len(set(vals)) == 1 else " / ".join(vals))
        rows.append(row)
    return ["Model", "Method", "Runs", *keys], rows


# ---------------------------------------------------------------------------------------------------
# The learning-rate sweep (issue 15).

SELECT_BY_TEXT = {
    "val_loss": "the lowest validation loss",
    "val_em": "the highest validation exact match",
}


@dataclass
class SweepTable:
    model: str
    columns: list[str]
    rows: Rows
    notes: list[str]


def validation_summary(c: Cell) -> dict[str, Any]:
    """A trial's final validation numbers: run.json's ``validation`` section, else its last validation line
    in metrics.jsonl (a run that stopped before writing the section). Keys: loss, loss_ci95, correct, n, em,
    em_ci95 (absent when unknown)."""
    v = c.run.get("validation") if c.run is not None else None
    if isinstance(v, dict):
        out = {k: v.get(k) for k in ("loss", "loss_ci95", "correct", "em", "em_ci95")}
        out["n"] = v.get("n_generate")
    elif c.val_metrics:
        last = c.val_metrics[-1]
        out = {
            "loss": last.get("val_loss"),
            "loss_ci95": last.get("val_loss_ci95"),
            "correct": last.get("val_correct"),
            "n": last.get("val_n"),
            "em": last.get("val_em"),
            "em_ci95": None,
        }
    else:
        return {}
    if out["em"] is None and isinstance(out["correct"], int) and isinstance(out["n"], int) and out["n"] > 0:
        out["em"] = out["correct"] / out["n"]
    if (
        out["em_ci95"] is None
        and isinstance(out["correct"], int)
        and isinstance(out["n"], int)
        and out["n"] > 0
    ):
        out["em_ci95"] = list(wilson_interval(out["correct"], out["n"]))
    return {k: v for k, v in out.items() if v is not None}


def _interval(ci: Any, fmt: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return ""


def _fmt_val_loss(v: dict[str, Any]) -> str:
    loss = v.get("loss")
    if not isinstance(loss, (int, float)):
        return "\u2014"
    return f"{loss:.4f}" + _interval(v.get("loss_ci95"), lambda x: f"{x:.4f}")


def _fmt_val_em(v: dict[str, Any]) -> str:
    em = v.get("em")
    if not isinstance(em, (int, float)) or not v.get("n"):
        return "\u2014"
    counts = f" ({v['correct']}/{v['n']})" if isinstance(v.get("correct"), int) else ""
    return pct(em) + counts + _interval(v.get("em_ci95"), pct)


def _setting_key(setting: dict[str, Any]) -> tuple:
    """Rows in grid order: by the first key's value (numbers numerically), then the next key's, ..."""
    return tuple(
        (k, 0, float(v), "") if isinstance(v, (int, float)) else (k, 1, 0.0, str(v))
        for k, v in setting.items()
    )


def _sweep_choices(col: Collection) -> tuple[dict[str, dict[str, Any]], str | None, Any]:
    """study.json's choices merged over the studies ("<model>/<method>" -> {chosen, trials}), select_by, val_size."""
    choices: dict[str, dict[str, Any]] = {}
    select_by, val_size = None, None
    for sw in col.sweeps:
        select_by = select_by or sw.get("select_by")
        val_size = val_size if val_size is not None else sw.get("val_size")
        for key, entry in (sw.get("choices") or {}).items():
            if isinstance(entry, dict):
                choices[str(key)] = entry
    if select_by is None:
        select_by = next((c.chosen.get("select_by") for c in col.cells if c.chosen), None)
    return choices, select_by, val_size


def _sweep_cells(col: Collection, choices: dict[str, dict[str, Any]]) -> dict[tuple[str, str], list[Cell]]:
    """Per model x method: every trial of the sweep, the protocol point included. The trials are the trial
    cells, those study.json lists, and the protocol cell of the first seed that records its sweep point."""
    per: dict[tuple[str, str], list[Cell]] = defaultdict(list)

    def add(key: tuple[str, str], c: Cell) -> None:
        if all(c is not x for x in per[key]):
            per[key].append(c)

    for key, entry in choices.items():
        model, _, method = key.rpartition("/")
        for cid in entry.get("trials") or []:
            c = col.cell_by_id(str(cid))
            if c is not None:
                add((model, method), c)
    for c in col.cells:
        if c.is_trial:
            add((c.model, c.base_method), c)
    for (model, method), cs in list(per.items()):
        if any(not c.is_trial for c in cs):
            continue  # study.json named the protocol point
        protocol = [
            c
            for c in col.cells
            if c.model == model and c.method == method and c.sweep_point is not None and not c.is_tuned
        ]
        if protocol:
            add((model, method), min(protocol, key=lambda c: c.seed if isinstance(c.seed, int) else 1 << 62))
    return per


def sweep_tables(col: Collection) -> list[SweepTable]:
    """One table per model: every trial of each model x method (setting, validation metric with its
    interval, train time, status, chosen mark), the paper-protocol point marked. Empty without a sweep."""
    if not col.has_sweep:
        return []
    choices, select_by, val_size = _sweep_choices(col)
    per = _sweep_cells(col, choices)
    if not per:
        return []
    chosen_ids: dict[tuple[str, str], str | None] = {}
    for key, entry in choices.items():
        model, _, method = key.rpartition("/")
        chosen_ids[(model, method)] = entry.get("chosen")
    for c in col.cells:
        if c.is_tuned and c.chosen and (c.model, c.base_method) not in chosen_ids:
            chosen_ids[(c.model, c.base_method)] = c.chosen.get("cell")
    show_em = select_by == "val_em" or any(validation_summary(c).get("n") for cs in per.values() for c in cs)
    loss_col = "Val loss [95% CI]" + (" (selects)" if select_by != "val_em" else "")
    em_col = "Val exact match % (correct/n) [95% CI]" + (" (selects)" if select_by == "val_em" else "")
    cols = (
        ["Method", "Setting", "Status", loss_col] + ([em_col] if show_em else []) + ["Train time", "Chosen"]
    )
    rule = (
        "Selection rule: per model \u00d7 method, among the finished trials (the paper-protocol point included) "
        f"the one with {SELECT_BY_TEXT.get(str(select_by), f'the best {select_by}')} on the "
        + (f"{val_size} " if val_size else "")
        + "held-out training problems of the validation split; ties go to the cheaper trial (fewer trainable "
        "parameters, then shorter train time); diverged or failed trials are never chosen. The test benchmarks "
        "play no part in the choice: the chosen setting is evaluated on them afterwards, as the '-tuned' rows of "
        "Table 2."
    )
    out = []
    for model in col.models:
        keys = sorted((k for k in per if k[0] == model), key=lambda k: method_order(k[1]))
        if not keys:
            continue
        rows: Rows = []
        notes: list[str] = []
        for key in keys:
            chosen_id = chosen_ids.get(key)
            trials = sorted(per[key], key=lambda c: _setting_key(c.trial or c.sweep_point or {}))
            for c in trials:
                protocol = not c.is_trial
                setting = fmt_setting(c.trial if c.is_trial else c.sweep_point) or "\u2014"
                v = validation_summary(c)
                run = c.run or {}
                runtime = run.get("runtime_s") if isinstance(run.get("runtime_s"), (int, float)) else c.wall_s
                is_chosen = chosen_id is not None and c.id == chosen_id
                if is_chosen and not c.finished:
                    notes.append(
                        f"Warning: the study names {c.id} as chosen although it is {c.status}; it is not "
                        "marked chosen here."
                    )
                rows.append(
                    [
                        key[1],
                        setting + (" (paper protocol)" if protocol else ""),
                        "finished" if c.finished else short_reason(c, 100),
                        _fmt_val_loss(v),
                        *([_fmt_val_em(v)] if show_em else []),
                        fmt_duration(float(runtime)) if isinstance(runtime, (int, float)) else "\u2014",
                        "\u2713 chosen" if is_chosen and c.finished else "",
                    ]
                )
            if key in chosen_ids and chosen_ids[key] is None:
                notes.append(f"{model} {key[1]}: no trial finished, so no setting was chosen.")
        out.append(SweepTable(model, cols, rows, [rule, *notes]))
    return out


# ---------------------------------------------------------------------------------------------------
# Recommendations.


@dataclass
class Recommendation:
    model: str
    text: list[str]


def _train_runtime(col: Collection, model: str, method: str) -> float | None:
    runs = [
        r
        for c in col.cells
        if c.model == model and c.method == method and c.finished
        for r in [col.training_run(c)]
        if r
    ]
    vals = [float(r.get("runtime_s") or 0) for r in runs]
    return mean(vals) if vals else None


def _obtain_runtime(col: Collection, model: str, method: str) -> float | None:
    """Training time to obtain ``method``'s model once. For a '-tuned' method that is the search that chose
    it: every trial that ran and the paper-protocol point (a candidate too, and one of them is the chosen
    model itself), not only the chosen run, which would make tuning look free."""
    own = _train_runtime(col, model, method)
    if not is_tuned(method):
        return own
    base = base_method(method)
    trials = [
        float(c.run.get("runtime_s") or 0)
        for c in col.cells
        if c.model == model
        and c.is_trial
        and c.base_method == base
        and c.run
        and c.status not in (Status.RUNNING, Status.INTERRUPTED)
    ]
    protocol = _train_runtime(col, model, base)
    if not trials and protocol is None:
        return own
    return sum(trials) + (protocol or 0.0)


def recommendations(
    col: Collection, groups: dict[tuple[str, str, str], Group], comps: dict | None = None
) -> list[Recommendation]:
    """Per model: the best method by pooled exact match, and whether the data can tell it from the rest;
    with a sweep, also whether tuning changed the ranking of the trained methods and the negative-transfer
    verdict (``comps``: :func:`comparisons` of ``groups``, computed when not given)."""
    if comps is None:
        comps = comparisons(groups)
    out = []
    for model in col.models:
        mg: dict[str, dict[str, Group]] = defaultdict(dict)
        for g in groups.values():
            if g.model == model and g.runs:
                mg[g.method][g.benchmark] = g
        out.append(_recommend(col, model, mg, comps))
    return out


def _recommend(col: Collection, model: str, mg: dict[str, dict[str, Group]], comps: dict) -> Recommendation:
    """One model's recommendation from its finished groups ``mg`` (method -> benchmark -> group)."""
    if not mg:
        return Recommendation(model, ["No finished evaluation for this model: nothing to recommend."])
    methods = sorted(mg, key=method_order)
    benches = sorted(set.intersection(*(set(b) for b in mg.values())))
    if not benches:
        return Recommendation(
            model,
            [
                "The methods of this model share no benchmark, so they cannot be compared: "
                + "; ".join(f"{m}: {', '.join(sorted(mg[m]))}" for m in methods)
            ],
        )
    pooled = _pooled(mg, methods, benches)
    acc = {m: k / n if n else 0.0 for m, (k, n) in pooled.items()}
    ranked = sorted(methods, key=lambda m: (-acc[m], method_order(m)))
    best = ranked[0]
    n_total = round(pooled[best][1])
    tied = [m for m in ranked[1:] if acc[m] == acc[best]]
    lines = [
        f"Best pooled exact match: {best} {pct(acc[best])}% over {', '.join(benches)} "
        f"({n_total} problems; correct/n summed over these benchmarks, seeds averaged)"
        + (f", tied with {', '.join(tied)}." if tied else ".")
    ]
    thin = (
        [
            f"Evidence is thin: {n_total} problems in all, so 95% intervals are about "
            f"\u00b1{100 * half_width(n_total):.0f} pp wide; treat the ranking as provisional."
        ]
        if n_total < SMALL_N
        else []
    )
    if len(ranked) == 1:
        lines.append("Only one method was evaluated: there is nothing to compare it with.")
        return Recommendation(model, lines + thin)
    lines += _against_best(col, model, mg, benches, ranked, acc)
    lines += tuning_lines(model, mg, comps)
    return Recommendation(model, lines + thin)


def _against_best(
    col: Collection,
    model: str,
    mg: dict[str, dict[str, Group]],
    benches: list[str],
    ranked: list[str],
    acc: dict[str, float],
) -> list[str]:
    """The best method (``ranked[0]``) tested against every other on the shared problems, one Holm family
    per model: the runner-up's test, the methods it cannot be told from (and the cheapest of them), and
    those with no shared problems to test on."""
    best = ranked[0]
    lines: list[str] = []
    best_votes = _pooled_votes(mg[best], benches)
    tied_with_best, untested = [], []
    # best against each other method: one Holm family per model (the methods without shared problems
    # have no test and are not counted in it)
    pairs = {m: paired_counts(best_votes, _pooled_votes(mg[m], benches)) for m in ranked[1:]}
    tested = [m for m in ranked[1:] if pairs[m][0]]
    raw = {m: mcnemar_exact(pairs[m][1], pairs[m][2]) for m in tested}
    adj = dict(zip(tested, holm_adjust([raw[m] for m in tested]), strict=True))
    for m in ranked[1:]:
        n, b_, c_ = pairs[m]  # b_: best right only, c_: m right only
        p = adj.get(m, float("nan"))
        if m == ranked[1]:
            gap = 100 * (acc[best] - acc[m])
            if not n:
                lines.append(
                    f"Runner-up {m} ({pct(acc[m])}%, {gap:.1f} pp behind) has no predictions on the same "
                    "problems, so the lead cannot be tested."
                )
            else:
                sig = p < ALPHA and b_ > c_
                family = (
                    f", Holm-adjusted over the {len(tested)} comparisons with {best}: {fmt_p(p)}"
                    if len(tested) > 1
                    else ""
                )
                lines.append(
                    f"Runner-up: {m} {pct(acc[m])}%, {gap:.1f} pp behind; McNemar on {n} shared problems "
                    f"(best alone right {b_}, runner-up alone right {c_}): {fmt_p(raw[m])}{family}, "
                    + (
                        "the lead is significant at 5%."
                        if sig
                        else "the lead is NOT significant at 5%: the data cannot separate these two."
                    )
                )
        if not n:
            untested.append(m)
        elif not (p < ALPHA and b_ > c_):
            tied_with_best.append(m)
    if tied_with_best:
        options = [best, *tied_with_best]
        costs = {m: (0.0 if not is_trained_method(m) else _obtain_runtime(col, model, m)) for m in options}
        known = {m: v for m, v in costs.items() if v is not None}
        if known:
            cheapest = min(known, key=lambda m: (known[m], method_order(m)))
            searched = " for the whole sweep that chose it" if is_tuned(cheapest) else ""
            lines.append(
                f"Not significantly worse than {best} (Holm-adjusted p \u2265 {ALPHA}): {', '.join(tied_with_best)}. "
                "Cheapest of these to obtain: "
                f"{cheapest} ("
                + (
                    "no training"
                    if known[cheapest] == 0
                    else f"training {fmt_duration(known[cheapest])}{searched}"
                )
                + ")."
            )
    elif not untested:
        lines.append(
            f"Every other method is significantly worse than {best} on the shared problems "
            f"(Holm-adjusted p < {ALPHA})."
        )
    if untested:
        lines.append(
            f"Not tested against {best} (no predictions on the same problems): {', '.join(untested)}."
        )
    return lines


def _pooled(
    mg: dict[str, dict[str, Group]], methods: list[str], benches: list[str]
) -> dict[str, tuple[float, float]]:
    """Per method: (correct, n) summed over ``benches``, seeds averaged."""
    return {
        m: (
            sum(mg[m][b].em * mean([float(x) for x in mg[m][b].ns]) for b in benches),
            sum(mean([float(x) for x in mg[m][b].ns]) for b in benches),
        )
        for m in methods
    }


def _ranking(acc: dict[str, float]) -> str:
    """'full > lora = dora': best first, equal accuracies joined by '=' (ties in table order)."""
    order = sorted(acc, key=lambda m: (-acc[m], method_order(m)))
    text = order[0]
    for prev, m in zip(order, order[1:], strict=False):
        text += (" = " if acc[m] == acc[prev] else " > ") + m
    return text


def tuned_pairs(methods: list[str] | set[str]) -> list[tuple[str, str]]:
    """(method, method-tuned) for every tuned method whose paper-protocol method is there too."""
    return sorted(
        ((base_method(m), m) for m in methods if is_tuned(m) and base_method(m) in methods),
        key=lambda p: method_order(p[0]),
    )


def negative_transfer_lines(groups: dict[tuple[str, str, str], Group], comps: dict, model: str) -> list[str]:
    """Per trained method with a tuned counterpart: the negative-transfer verdict under each protocol."""
    methods = {g.method for g in groups.values() if g.model == model and g.runs}
    out = []
    for base, tuned in tuned_pairs(methods):

        def flagged(method: str) -> list[str]:
            return sorted(
                b
                for (m_, meth, b), comp in comps.items()
                if m_ == model and meth == method and comp.negative_transfer
            )

        proto, tun = flagged(base), flagged(tuned)
        out.append(
            f"Negative transfer of {base}: under the paper protocol "
            + (f"on {', '.join(proto)}" if proto else "none")
            + ", tuned ("
            + tuned
            + ") "
            + (f"on {', '.join(tun)}" if tun else "none")
            + (": tuning changed the verdict." if proto != tun else ": the same verdict.")
        )
    return out


def tuning_lines(model: str, mg: dict[str, dict[str, Group]], comps: dict) -> list[str]:
    """With tuned methods: each method's pooled exact match under both protocols, whether the ranking of
    the trained methods changed (paper protocol against tuned settings), and the negative-transfer verdicts."""
    pairs = tuned_pairs(set(mg))
    if not pairs:
        return []
    compared = [m for p in pairs for m in p]
    benches = sorted(set.intersection(*(set(mg[m]) for m in compared)))
    if not benches:
        return ["The paper-protocol and tuned methods share no benchmark: tuning cannot be compared."]
    pooled = _pooled(mg, compared, benches)
    acc = {m: k / n if n else 0.0 for m, (k, n) in pooled.items()}
    lines = [
        "Tuning (pooled exact match over "
        + ", ".join(benches)
        + ", paper protocol \u2192 tuned): "
        + "; ".join(
            f"{base} {pct(acc[base])}% \u2192 {pct(acc[tuned])}% ({signed(100 * (acc[tuned] - acc[base]))} pp)"
            for base, tuned in pairs
        )
        + "."
    ]
    if len(pairs) > 1:
        proto = _ranking({base: acc[base] for base, _ in pairs})
        tuned = _ranking({base: acc[t] for base, t in pairs})
        lines.append(
            (
                f"Tuning changed the ranking of the trained methods: under the paper protocol {proto}, "
                f"tuned {tuned}"
                if proto != tuned
                else f"Tuning did not change the ranking of the trained methods: {proto} under both protocols"
            )
            + " (point estimates; Table 2 has the intervals)."
        )
    groups = {(model, m, b): g for m, by in mg.items() for b, g in by.items()}
    lines += negative_transfer_lines(groups, comps, model)
    return lines


def _pooled_votes(by_bench: dict[str, Group], benches: list[str]) -> dict[str, bool]:
    """Per-problem verdicts over several benchmarks, keyed "benchmark/id" so that ids cannot collide."""
    return {f"{b}/{k}": v for b in benches for k, v in by_bench[b].verdicts().items()}


def half_width(n: int) -> float:
    lo, hi = wilson_interval(n / 2, n) if n else (0.0, 1.0)
    return (hi - lo) / 2
