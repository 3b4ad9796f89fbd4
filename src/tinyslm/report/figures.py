"""The report's figures, drawn with matplotlib's Agg backend (no display needed) and returned as PNG bytes.

Each method keeps one colour in every figure, so a reader can follow LoRA from the loss curves to the
accuracy-vs-size plot. Seeds of one method share its colour; only the first is labelled.
"""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass

from tinyslm.core.stats import mean
from tinyslm.report.collect import Cell, Collection, method_order
from tinyslm.report.tables import Group, fmt_count, fmt_setting

PALETTE = ["#4c4c4c", "#e69f00", "#56b4e9", "#009e73", "#d55e00", "#cc79a7", "#0072b2", "#f0e442"]
DPI = 110


@dataclass
class Figure:
    name: str  # file name under figures/
    caption: str
    png: bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colours(col: Collection) -> dict[str, str]:
    """Method -> colour, from every method in the collection, so a method looks the same in every figure
    (sweep trials are no method: they have their own colours in :func:`validation_curves`)."""
    methods = sorted({c.method for c in col.cells if not c.is_trial}, key=method_order)
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "x"


def training_curves(col: Collection) -> list[Figure]:
    """Per model: loss and gradient norm (log scale) against optimizer step, methods overlaid."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    colours = _colours(col)
    figs = []
    for model in col.models:
        cells = [c for c in col.cells if c.model == model and c.metrics and not c.is_trial]
        if not cells:
            continue
        fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(10, 3.6))
        labelled: set[str] = set()
        for c in sorted(cells, key=lambda c: (method_order(c.method), str(c.seed))):
            steps = [m["step"] for m in c.metrics if "step" in m]
            label = None if c.method in labelled else c.method
            labelled.add(c.method)
            style = dict(color=colours[c.method], lw=1.3, alpha=0.85, label=label)
            if not c.finished:
                style.update(ls="--")  # a diverged/failed run's curve up to where it stopped
            ax_loss.plot(steps, [m.get("loss") for m in c.metrics if "step" in m], **style)
            grads = [(m["step"], m.get("grad_norm")) for m in c.metrics if "step" in m]
            grads = [(s, g) for s, g in grads if isinstance(g, (int, float)) and g > 0]
            if grads:
                ax_grad.plot(*zip(*grads, strict=True), **style)
        ax_loss.set(
            title=f"{model}: training loss", xlabel="optimizer step", ylabel="loss (completion tokens)"
        )
        ax_grad.set(
            title=f"{model}: gradient norm (before clipping)", xlabel="optimizer step", ylabel="L2 norm"
        )
        ax_grad.set_yscale("log")
        ax_loss.ticklabel_format(axis="y", useOffset=False)
        for ax in (ax_loss, ax_grad):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        figs.append(
            Figure(
                f"training_{safe_name(model)}.png",
                f"{model}: loss and gradient norm per optimizer step, methods overlaid "
                "(seeds share a colour; dashed = run that did not finish).",
                _png(fig),
            )
        )
    return figs


def _series_label(c: Cell) -> str:
    """A validation curve's legend entry: the method, a trial's setting, the protocol point marked."""
    if c.is_trial:
        return f"{c.base_method} {fmt_setting(c.trial)}".strip()
    if c.sweep_point is not None and not c.is_tuned:
        return f"{c.method} (protocol)"
    return c.method


def validation_curves(col: Collection) -> list[Figure]:
    """Per model: training loss and validation loss (its 95% band) per optimizer step for every trained
    cell with validation lines (protocol cells, sweep trials, tuned cells), and validation exact match
    when it was measured. One colour per series; seeds of one method share it."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    figs = []
    for model in col.models:
        cells = sorted(
            (c for c in col.cells if c.model == model and c.val_metrics),
            key=lambda c: (method_order(c.method), str(c.seed)),
        )
        if not cells:
            continue
        labels = list(dict.fromkeys(_series_label(c) for c in cells))
        colours = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}
        has_em = any(isinstance(m.get("val_em"), (int, float)) for c in cells for m in c.val_metrics)
        fig, axes = plt.subplots(1, 3 if has_em else 2, figsize=(15 if has_em else 10, 3.8))
        ax_train, ax_val = axes[0], axes[1]
        labelled: set[str] = set()
        finished_y: dict[int, list[float]] = defaultdict(list)  # panel -> values of finished runs
        for c in cells:
            label = _series_label(c)
            style = dict(
                color=colours[label],
                lw=0.9 if c.is_trial else 1.5,
                alpha=0.85,
                label=None if label in labelled else label,
                ls="--" if not c.finished else ":" if c.is_trial else "-",
            )
            labelled.add(label)
            train = [(m["step"], m["loss"]) for m in c.metrics if "step" in m and _num(m.get("loss"))]
            if train:
                ax_train.plot(*zip(*train, strict=True), **style)
            val = [m for m in c.val_metrics if "step" in m and _num(m.get("val_loss"))]
            if c.finished:
                finished_y[0] += [y for _, y in train]
                finished_y[1] += [m["val_loss"] for m in val]
                finished_y[1] += [y for m in val if _pair(m.get("val_loss_ci95")) for y in m["val_loss_ci95"]]
            if val:
                ax_val.plot([m["step"] for m in val], [m["val_loss"] for m in val], marker="o", ms=3, **style)
                band = [m for m in val if _pair(m.get("val_loss_ci95"))]
                if band:
                    ax_val.fill_between(
                        [m["step"] for m in band],
                        [m["val_loss_ci95"][0] for m in band],
                        [m["val_loss_ci95"][1] for m in band],
                        color=colours[label],
                        alpha=0.12,
                        lw=0,
                    )
            if has_em:
                em = [
                    (m["step"], 100 * m["val_em"])
                    for m in c.val_metrics
                    if "step" in m and _num(m.get("val_em"))
                ]
                if em:
                    axes[2].plot(*zip(*em, strict=True), marker="o", ms=3, **style)
        ax_train.set(
            title=f"{model}: training loss", xlabel="optimizer step", ylabel="loss (completion tokens)"
        )
        ax_val.set(title=f"{model}: validation loss", xlabel="optimizer step", ylabel="loss (95% band)")
        if has_em:
            axes[2].set(
                title=f"{model}: validation exact match", xlabel="optimizer step", ylabel="exact match %"
            )
        for i, ax in enumerate(axes[:2]):
            # a diverged run's loss would flatten every other curve: the y range is the finished runs'
            ys = finished_y.get(i)
            if ys and ax.get_ylim()[1] > 1.5 * max(ys):
                pad = 0.1 * (max(ys) - min(ys)) or 0.1 * abs(max(ys)) or 1.0
                ax.set_ylim(min(ys) - pad, max(ys) + pad)
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.grid(alpha=0.3)
        # one legend, outside the last panel: a sweep has many series, which would cover the curves
        handles, names = ax_train.get_legend_handles_labels()
        if not handles:
            handles, names = ax_val.get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.tight_layout()
        figs.append(
            Figure(
                f"validation_{safe_name(model)}.png",
                f"{model}: training loss beside validation loss (shaded: 95% interval over the validation "
                "problems)"
                + (" and validation exact match" if has_em else "")
                + " per optimizer step, for every trained cell with a validation split (dotted = sweep trial, "
                "dashed = run that did not finish, its curve cut at the top of the finished runs' range; seeds "
                "share a colour).",
                _png(fig),
            )
        )
    return figs


def _num(x: object) -> bool:
    """A plottable number (a diverged run logs NaN or inf)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pair(x: object) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_num(v) for v in x)


def accuracy_vs_size(col: Collection, groups: dict[tuple[str, str, str], Group]) -> Figure | None:
    """Exact match against base parameter count (log x), one line per method, one panel per benchmark."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    benches = sorted({g.benchmark for g in groups.values() if g.runs})
    sizes = {m: col.model_parameters(m) for m in col.models}
    points = [g for g in groups.values() if g.runs and sizes.get(g.model)]
    if not points or not benches:
        return None
    colours = _colours(col)
    cols = min(3, len(benches))
    rows = (len(benches) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, bench in zip(axes.flat, benches, strict=False):
        by_method: dict[str, list[Group]] = defaultdict(list)
        for g in points:
            if g.benchmark == bench:
                by_method[g.method].append(g)
        methods = sorted(by_method, key=method_order)
        for j, method in enumerate(methods):
            gs = sorted(by_method[method], key=lambda g: sizes[g.model])
            dodge = 10 ** (0.012 * (j - (len(methods) - 1) / 2))  # side by side, so equal points stay visible
            x = [sizes[g.model] * dodge for g in gs]
            y = [100 * g.em for g in gs]
            err = [
                [max(0.0, 100 * (g.em - g.ci[0])) for g in gs],
                [max(0.0, 100 * (g.ci[1] - g.em)) for g in gs],
            ]
            ax.errorbar(
                x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1.3, color=colours[method], label=method
            )
        ax.set_xscale("log")
        ticks = sorted({sizes[g.model] for g in points if g.benchmark == bench})
        ax.set_xticks(ticks, [fmt_count(t) for t in ticks])  # the models' own sizes, not powers of ten
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(title=bench, xlabel="model parameters (log scale)", ylabel="exact match % (95% CI)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(benches) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return Figure(
        "accuracy_vs_parameters.png",
        "Exact match against model size per method (mean over seeds, Wilson 95% interval; methods drawn "
        "slightly apart at each size so that equal points stay visible): where a method starts to pay off "
        "as models grow.",
        _png(fig),
    )


def throughput(col: Collection) -> Figure | None:
    """Bars: training samples/s per model x trained method, and evaluation generated tokens/s per method."""
    plt = _plt()
    train: dict[tuple[str, str], list[float]] = defaultdict(list)
    gen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in col.cells:
        if not c.finished or c.is_trial:  # a sweep trial is no method of the study's tables
            continue
        if c.run and c.run.get("samples_per_s"):
            train[(c.model, c.method)].append(float(c.run["samples_per_s"]))
        for b in c.benchmarks.values():
            if b.results.get("generated_tokens_per_s"):
                gen[(c.model, c.method)].append(float(b.results["generated_tokens_per_s"]))
    panels = [
        (d, t, y)
        for d, t, y in (
            (train, "training throughput", "samples/s"),
            (gen, "evaluation throughput", "generated tokens/s"),
        )
        if d
    ]
    if not panels:
        return None
    colours = _colours(col)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (data, title, ylabel) in zip(axes.flat, panels, strict=True):
        models = [m for m in col.models if any(k[0] == m for k in data)]
        methods = sorted({k[1] for k in data}, key=method_order)
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            xs = [
                i + (j - (len(methods) - 1) / 2) * width for i, m in enumerate(models) if (m, method) in data
            ]
            ys = [mean(data[(m, method)]) for m in models if (m, method) in data]
            ax.bar(xs, ys, width=width, color=colours[method], label=method)
        ax.set_xticks(range(len(models)), models, rotation=15, ha="right", fontsize=8)
        ax.set(title=title, ylabel=ylabel + " (mean over seeds)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return Figure(
        "throughput.png",
        "Throughput per model and method: training samples/s (trained methods) and "
        "generated tokens/s during evaluation (mean over benchmarks and seeds). Bars compare only between "
        "runs on the same device: see the Device column of Table 3.",
        _png(fig),
    )


def all_figures(col: Collection, groups: dict[tuple[str, str, str], Group]) -> list[Figure]:
    figs = training_curves(col) + validation_curves(col)
    for f in (accuracy_vs_size(col, groups), throughput(col)):
        if f is not None:
            figs.append(f)
    return figs
