"""A patient's ANC trend as a server-rendered SVG (docs/contracts.md §8): ANC per µL over time,
the pack's category bands for the patient's population (general, or BEN's) and its rationale
threshold as horizontal bands and a line, the draws as points, PSFs and dispense decisions as
marks on the same time axis. This module only computes the geometry; ``chart.svg`` draws it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from rems_core.model import AncResult, Designation
from rems_core.rulepack import RulePack

WIDTH, HEIGHT = 760, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 28, 56  # margins: axis labels, PSF marks, decision marks
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Band:
    category: str
    low: int
    y: float
    height: float
    label_y: float  # its label, in the middle of the band (clear of the threshold line)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    anc: int
    category: str
    usable: bool
    title: str


@dataclass(frozen=True)
class Mark:
    x: float
    kind: str  # the PSF's status, or the decision's outcome
    title: str


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    bands: list[Band]
    threshold: int
    threshold_y: float
    points: list[Point]
    trend: str  # the polyline through the usable points
    psfs: list[Mark]
    decisions: list[Mark]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    population: str


def anc_chart(
    pack: RulePack,
    designation: Designation,
    ancs: list[AncResult],
    psfs: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
    tz: tzinfo,
) -> Chart:
    population = "ben" if designation == Designation.BEN else "general"
    bands_of_pack = sorted(pack.anc_categories.value[designation.value], key=lambda b: -b.from_)
    counted = [a for a in ancs if a.anc is not None]
    highest = max([a.anc for a in counted if a.anc is not None], default=0)
    top_value = _nice_top(max(highest, bands_of_pack[0].from_ + 1000))
    times = [a.drawn for a in counted]
    times += [p["submitted_at"] for p in psfs] + [d["at"] for d in decisions]
    start, end = (min(times), max(times)) if times else (datetime.now(tz), datetime.now(tz))
    if end - start < DAY:
        start, end = start - DAY, end + DAY
    span = (end - start) * 1.04
    start = start - (span - (end - start)) / 2

    bottom_y, right_x = HEIGHT - BOTTOM, WIDTH - RIGHT

    def x_of(moment: datetime) -> float:
        return round(LEFT + (moment - start) / span * (right_x - LEFT), 1)

    def y_of(value: float) -> float:
        return round(bottom_y - min(value, top_value) / top_value * (bottom_y - TOP), 1)

    bands, upper = [], top_value
    for band in bands_of_pack:
        y_top, y_low = y_of(upper), y_of(band.from_)
        bands.append(
            Band(
                band.category.value,
                band.from_,
                y_top,
                round(y_low - y_top, 1),
                (y_top + y_low) / 2 + 4,
            )
        )
        upper = band.from_
    threshold = getattr(pack.rationale_below.value, designation.value)
    points = [
        Point(
            x_of(a.drawn),
            y_of(a.anc),
            a.anc,
            a.category.value if a.category else "unknown",
            a.usable,
            f"ANC {a.anc}/µL, drawn {_when(a.drawn, tz)}"
            + (f", {a.category.value}" if a.category else "")
            + ("" if a.usable else ", not usable"),
        )
        for a in counted
        if a.anc is not None
    ]
    step = _step(top_value)
    return Chart(
        WIDTH,
        HEIGHT,
        LEFT,
        right_x,
        TOP,
        bottom_y,
        bands,
        threshold,
        y_of(threshold),
        points,
        " ".join(f"{p.x},{p.y}" for p in points if p.usable),
        [
            Mark(
                x_of(p["submitted_at"]),
                p["status"],
                f"PSF ({p['type']}) {p['status']}, submitted {_when(p['submitted_at'], tz)}",
            )
            for p in psfs
        ],
        [
            Mark(x_of(d["at"]), d["outcome"], f"dispense {d['outcome']}, {_when(d['at'], tz)}")
            for d in decisions
        ],
        [Tick(y_of(v), f"{v:,}") for v in range(0, top_value + 1, step)],
        [Tick(x_of(t), _day(t, tz)) for t in _days(start, start + span, tz)],
        population,
    )


def _nice_top(value: int) -> int:
    return int(math.ceil(value / 500) * 500)


def _step(top: int) -> int:
    for step in (250, 500, 1000, 2000, 5000, 10000, 20000):
        if top / step <= 8:
            return step
    return 50000


def _days(start: datetime, end: datetime, tz: tzinfo, most: int = 7) -> list[datetime]:
    """Up to ``most`` midnights (site time) between start and end, evenly spread."""
    first = start.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0) + DAY
    days = max(1, (end - first).days + 1)
    every = max(1, math.ceil(days / most))
    return [first + i * DAY for i in range(0, days, every) if first + i * DAY <= end]


def _when(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _day(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d")
