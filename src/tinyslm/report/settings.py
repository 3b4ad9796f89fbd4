"""The report's settings, once: ``tiny-slm-report``'s flags, :func:`tinyslm.report.write_report`'s defaults
and the study's ``report:`` section are generated from :class:`ReportSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from tinyslm.config.settings import setting


@dataclass
class ReportSettings:
    """Every setting of ``tiny-slm-report`` but its inputs and ``--output``."""

    price_per_gpu_hour: float = setting(
        4.00,
        ge=0,
        help="USD per GPU-hour for the cost column (default %(default).2f); "
        "cost = runtime hours x processes x price; CPU runs get no price",
    )
    examples: int = setting(
        3, ge=0, help="problems shown side by side per model and benchmark (default %(default)s)"
    )
