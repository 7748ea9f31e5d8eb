"""One PNG of a results file, read at a glance: twelve panels, one question each.

Each panel draws from its own section of the results and says "not measured" when that section
is missing or failed, so a partial run still gives a picture of what it did measure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: CI and headless machines

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

GOOD, BAD, NEUTRAL, LIGHT = "#2a9d8f", "#e76f51", "#264653", "#8ab17d"
CPU_MARK = "#e9c46a"
Panel = Callable[[Axes, dict[str, Any]], None]


def _bar_labels(ax: Axes, bars: Any, fmt: str = "{:.2f}", texts: Sequence[str] | None = None) -> None:
    """Each bar's value (or the given text) above it; NaN bars get none."""
    for index, bar in enumerate(bars):
        height = bar.get_height()
        if height == height:  # not NaN
            ax.annotate(
                texts[index] if texts is not None else fmt.format(height),
                (bar.get_x() + bar.get_width() / 2, height),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def efficiency(ax: Axes, results: dict[str, Any]) -> None:
    section = results["pipeline_efficiency"]
    runs = section["runs"]
    xs = range(len(runs))
    core = ax.bar(
        [x - 0.2 for x in xs], [_num(r["efficiency"]) for r in runs], 0.4, color=NEUTRAL, label="core"
    )
    ws = ax.bar(
        [x + 0.2 for x in xs],
        [_num(r["efficiency_with_delivery"]) for r in runs],
        0.4,
        color=LIGHT,
        label="+ WebSocket delivery",
    )
    _bar_labels(ax, core)
    _bar_labels(ax, ws)
    ceilings = [_num(r.get("efficiency_ceiling_model_only")) for r in runs]
    if any(c == c for c in ceilings):
        # Where the model alone would cap the pipeline: bars near their mark are model-bound.
        ax.scatter(list(xs), ceilings, marker="_", s=900, color="black", zorder=3, label="model-only ceiling")
    cpu_ceilings = [_num(r.get("efficiency_ceiling_cpu")) for r in runs]
    if any(c == c for c in cpu_ceilings):
        # Where the machine's cores would cap it at the stack's CPU per frame: CPU-bound near it.
        ax.scatter(list(xs), cpu_ceilings, marker="_", s=900, color=CPU_MARK, zorder=3, label="CPU ceiling")
    ax.axhline(section["target"], color=BAD, linestyle="--", linewidth=1, label=f"target {section['target']}")
    ax.set_xticks(list(xs), [f"{r['streams']} stream{'s' if r['streams'] > 1 else ''}" for r in runs])
    ax.set_ylabel("core fps / bare decode fps")
    tops = [
        _num(v) * 1.15
        for r in runs
        for v in (r["efficiency"], r.get("efficiency_ceiling_model_only"), r.get("efficiency_ceiling_cpu"))
        if v
    ]
    ax.set_ylim(0, max(1.1, *tops))
    ax.set_title("Pipeline efficiency (720p, frame_stats model)")
    ax.legend(fontsize=7, loc="upper right")


def batching(ax: Axes, results: dict[str, Any]) -> None:
    runs = results["pipeline_efficiency"]["runs"]
    xs = list(range(len(runs)))
    values = [_num(r["batching"]["efficiency"]) for r in runs]
    bars = ax.bar(xs, values, 0.6, color=NEUTRAL)
    _bar_labels(
        ax,
        bars,
        texts=[f"{_num(r['batching']['mean_batch']):.1f} of {r['batching']['max_batch']}" for r in runs],
    )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(xs, [f"{r['streams']} stream{'s' if r['streams'] > 1 else ''}" for r in runs])
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("mean batch / min(streams, max batch)")
    ax.set_title("Batching efficiency (Triton statistics)")


def latency(ax: Axes, results: dict[str, Any]) -> None:
    labels, p50, p99 = [], [], []
    for run in results["latency_live"]["runs"]:
        labels.append(f"live x{run['streams']}")
        p50.append(_num(run["added_p50"]))
        p99.append(_num(run["added_p99"]))
    for run in results["pipeline_efficiency"]["runs"]:
        section = run["latency_saturated_ms"]
        labels.append(f"file x{run['streams']}\n(saturated)")
        p50.append(_num(section["added_p50"]))
        p99.append(_num(section["added_p99"]))
    xs = range(len(labels))
    for offset, values, color, name in ((-0.2, p50, NEUTRAL, "p50"), (0.2, p99, BAD, "p99")):
        # Drawn at least 1 ms high (the axis' floor) so that a bar of "nothing added" is seen.
        bars = ax.bar([x + offset for x in xs], [max(v, 1.0) for v in values], 0.4, color=color, label=name)
        _bar_labels(ax, bars, texts=["<1" if v < 1 else f"{v:.0f}" for v in values])
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_yscale("log")
    # Below a millisecond is "nothing added" (the mean compute subtracted from a percentile can
    # leave a few microseconds, or less than nothing): the axis starts at 1 ms.
    ax.set_ylim(bottom=1)
    ax.set_ylabel("ms, decode -> WebSocket, minus model compute")
    computes = [_num(r["model_compute_ms"]) for r in results["latency_live"]["runs"]]
    note = ", ".join(f"{c:.0f}" for c in computes)
    ax.set_title(f"Added latency (model compute {note} ms, apart)", fontsize=9)
    ax.legend(fontsize=7)


def first_event(ax: Axes, results: dict[str, Any]) -> None:
    section = results["time_to_first_event"]
    labels, values, lows, highs = [], [], [], []
    for source in ("file", "rtsp"):
        if source not in section:
            continue
        for variant, name in (("after_create_s", "after create"), ("after_resume_s", "after resume")):
            stats = section[source][variant]
            labels.append(f"{source}\n{name}")
            values.append(_num(stats["p50"]))
            lows.append(_num(stats["p50"]) - _num(stats["min"]))
            highs.append(_num(stats["max"]) - _num(stats["p50"]))
    xs = list(range(len(labels)))
    bars = ax.bar(xs, values, 0.6, color=[NEUTRAL, LIGHT] * 2, yerr=[lows, highs], capsize=3)
    _bar_labels(ax, bars, "{:.2f}")
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title("Time to first event")


def capacity(ax: Axes, results: dict[str, Any]) -> None:
    section = results["capacity"]
    steps = section["steps"]
    xs = [s["streams"] for s in steps]
    ys = [_num(s["frame_age_s"]["p99"]) for s in steps]
    ax.plot(xs, ys, color="grey", linewidth=0.8, zorder=1)
    ax.scatter(xs, ys, c=[GOOD if s["pass"] else BAD for s in steps], s=40, zorder=2)
    ax.axhline(section["age_limit_s"], color=BAD, linestyle="--", linewidth=1, label="p99 limit")
    ax.set_xlabel("720p25 cameras, people_counter at 5 fps")
    ax.set_ylabel("frame age p99 (s)")
    bound = "≥ " if section["lower_bound_only"] else ""
    ax.set_title(f"Capacity: {bound}{section['capacity']} streams (green: real time)")
    ax.legend(fontsize=7)


def _rss(ax: Axes, series: list[dict[str, Any]], axis: str, scale: float, xlabel: str) -> None:
    # Two y axes: the core's hundreds of MiB would flatten the facade's tens into a line, and a
    # leak is a trend of either one.
    xs = [p[axis] * scale for p in series]
    ax.plot(xs, [p["core"] / 1024 for p in series], marker=".", color=NEUTRAL, label="core")
    ax.set_ylabel("core RSS (MiB)", color=NEUTRAL)
    right = ax.twinx()
    right.plot(xs, [p["facade"] / 1024 for p in series], marker=".", color=LIGHT, label="facade")
    right.set_ylabel("facade RSS (MiB)", color=LIGHT)
    for axes in (ax, right):
        low, high = axes.get_ylim()
        if high - low < 4:  # a flat line should look flat, not like noise magnified
            middle = (low + high) / 2
            axes.set_ylim(middle - 2, middle + 2)
    ax.set_xlabel(xlabel)
    ax.legend(handles=[*ax.get_lines(), *right.get_lines()], fontsize=7, loc="lower right")


def _slopes(growth: dict[str, Any], key: str, unit: str) -> str:
    return ", ".join(f"{name} {_num(growth[name][key]):+.1f}" for name in ("core", "facade")) + f" MiB/{unit}"


def rss_cycles(ax: Axes, results: dict[str, Any]) -> None:
    section = results["leaks"]["cycles"]
    _rss(ax, section["series_kib"], "cycle", 1.0, "create/delete cycles")
    ax.set_title(f"RSS over cycles ({_slopes(section['growth'], 'slope_mib_per_1000', '1000')})", fontsize=9)


def rss_soak(ax: Axes, results: dict[str, Any]) -> None:
    section = results["leaks"]["soak"]
    _rss(ax, section["series_kib"], "seconds", 1 / 60, "minutes")
    ax.set_title(
        f"RSS, {section['seconds'] / 60:g} min x {section['streams']} cameras "
        f"({_slopes(section['growth'], 'slope_mib_per_60', 'min')})",
        fontsize=9,
    )


def cost(ax: Axes, results: dict[str, Any]) -> None:
    runs = results["pipeline_efficiency"]["runs"]
    xs = range(len(runs))
    series = (("bare_decode", "bare decode", LIGHT), ("core", "core", NEUTRAL), ("triton", "Triton", BAD))
    width = 0.8 / len(series)
    for i, (key, label, color) in enumerate(series):
        values = [_num(r["cpu_ms_per_frame"][key]) for r in runs]
        bars = ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], values, width, color=color, label=label)
        _bar_labels(ax, bars, "{:.1f}")
    ax.set_xticks(list(xs), [f"{r['streams']} stream{'s' if r['streams'] > 1 else ''}" for r in runs])
    ax.set_ylabel("CPU ms per frame")
    best: dict[str, float] = {}
    for run in results.get("model_only", {}).get("runs", []):
        best[run["model"]] = max(best.get(run["model"], 0.0), _num(run["items_per_s"]))
    note = ", ".join(f"{model} {value:.0f}" for model, value in best.items())
    ax.set_title("CPU per frame, by process (pipeline runs)", fontsize=9)
    if note:
        ax.set_xlabel(f"model alone, best items/s: {note}", fontsize=8)
    ax.legend(fontsize=7)


def fleet_failover(ax: Axes, results: dict[str, Any]) -> None:
    section = results["fleet"]["failover"]
    kinds = [("sigkill", "SIGKILL (crash)"), ("sigterm", "SIGTERM (drain)")]
    xs = list(range(len(kinds)))
    for offset, quantile, color in ((-0.25, "p50", NEUTRAL), (0.0, "p99", BAD), (0.25, "max", LIGHT)):
        values = [_num(section[kind]["running_s"][quantile]) for kind, _ in kinds]
        bars = ax.bar([x + offset for x in xs], values, 0.25, color=color, label=quantile)
        _bar_labels(ax, bars, "{:.2f}")
    targets = [_num(section[kind]["target"]["p99_at_most_s"]) for kind, _ in kinds]
    ax.scatter(xs, targets, marker="_", s=1500, color="black", zorder=3, label="target (p99)")
    ax.set_ylim(0, max([*targets, *(_num(section[k]["running_s"]["max"]) for k, _ in kinds)]) * 1.2)
    ax.set_xticks(xs, [f"{name}\n{section[kind]['streams_moved']} streams moved" for kind, name in kinds])
    ax.set_ylabel("s, signal -> in progress on another agent")
    ax.set_title(
        f"Fleet failover: double reads {section['double_reads']}, lost streams {section['lost_streams']}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right", ncols=2)


def fleet_scaling(ax: Axes, results: dict[str, Any]) -> None:
    fleet = results["fleet"]
    section = fleet["throughput"]
    values = [_num(section["agents_1_fps"]), _num(section["agents_2_fps"])]
    bars = ax.bar([0, 1], values, 0.6, color=[NEUTRAL, LIGHT])
    _bar_labels(ax, bars, "{:.0f}")
    ax.set_xticks([0, 1], ["1 agent", "2 agents"])
    ax.set_ylabel(f"frames/s, {section['streams']} file streams")
    ax.set_title(
        f"Fleet: 2 agents / 1 = {_num(section['ratio']):.2f} on {section['cpus_usable']} CPUs", fontsize=9
    )
    load = fleet.get("postgres_load") or {}
    parts = [
        f"{_num(load[name]['statements_per_s_per_agent']):.1f}/s (renew {load[name]['timing']['renew']:g} s)"
        for name in ("failover", "default")
        if isinstance(load.get(name), dict)
    ]
    if parts:
        ax.set_xlabel("PostgreSQL statements per agent: " + ", ".join(parts), fontsize=7)


def efficiency_real(ax: Axes, results: dict[str, Any]) -> None:
    section = results["efficiency_real"]
    runs = section["runs"]
    xs = range(len(runs))
    parts = (
        (
            -0.2,
            (
                ("decode_ms_per_frame", "bare decode", LIGHT),
                ("model_ms_per_frame", "detector alone", CPU_MARK),
            ),
        ),
        (0.2, (("core_ms_per_frame", "core", NEUTRAL), ("triton_ms_per_frame", "Triton", BAD))),
    )
    for offset, stack in parts:
        bottoms = [0.0] * len(runs)
        for key, label, color in stack:
            values = [_num(r[key]) for r in runs]
            ax.bar([x + offset for x in xs], values, 0.4, bottom=bottoms, color=color, label=label)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        if offset > 0:
            for x, run, top in zip(xs, runs, bottoms, strict=True):
                ax.annotate(
                    f"{_num(run['efficiency']):.2f}\n{_num(run['agent_overhead_ms']):+.1f} ms",
                    (x + offset, top),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(list(xs), [f"{r['streams']} stream{'s' if r['streams'] > 1 else ''}" for r in runs])
    ax.set_ylabel("CPU ms per frame (left: unavoidable, right: stack)")
    tops = [_num(r["stack_ms_per_frame"]) for r in runs] + [
        _num(r["decode_ms_per_frame"]) + _num(r["model_ms_per_frame"]) for r in runs
    ]
    ax.set_ylim(0, max([t for t in tops if t == t], default=1.0) * 1.4)  # room for the legend
    clip = section["clip"]
    ax.set_title(
        f"Realistic clip ({_num(clip['video_kbps']) / 1000:.1f} Mb/s, person detector): "
        f"efficiency, overhead (target {section['target']})",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", ncols=2)


def capacity_compare(ax: Axes, results: dict[str, Any]) -> None:
    limit_section, plain = results["capacity_vs_limit"], results["vs_plain_loop"]
    bars = [
        ("physical limit", _num(limit_section["limit_cameras"]), "", CPU_MARK),
        (
            "product",
            _num(limit_section["capacity"]),
            "≥ " if limit_section["lower_bound_only"] else "",
            NEUTRAL,
        ),
        (
            "plain loop",
            _num(plain["plain_loop"]["capacity"]),
            "≥ " if plain["plain_loop"]["lower_bound_only"] else "",
            LIGHT,
        ),
    ]
    xs = list(range(len(bars)))
    drawn = ax.bar(xs, [b[1] for b in bars], 0.6, color=[b[3] for b in bars])
    _bar_labels(ax, drawn, texts=[f"{prefix}{value:.3g}" for _, value, prefix, _ in bars])
    ax.set_xticks(xs, [b[0] for b in bars])
    ax.set_ylabel("720p25 cameras at 5 fps, frame age p99 < 1 s")
    ax.margins(y=0.15)
    cpu = plain.get("cpu_ms_per_analysed_frame") or {}
    if cpu.get("cameras") is not None:
        ax.set_xlabel(
            f"CPU per analysed frame at {cpu['cameras']} cameras: product {_num(cpu['product']):.0f} ms, "
            f"plain loop {_num(cpu['plain_loop']):.0f} ms",
            fontsize=8,
        )
    ratio = _num(plain["ratio"])
    ax.set_title(
        f"Capacity / limit {_num(limit_section['ratio']):.2f} (target {limit_section['target']}), "
        f"product / plain loop {'n/a' if ratio != ratio else f'{ratio:.2f}'}",
        fontsize=9,
    )


PANELS: list[Panel] = [
    efficiency,
    batching,
    latency,
    first_event,
    capacity,
    rss_cycles,
    rss_soak,
    cost,
    fleet_failover,
    fleet_scaling,
    efficiency_real,
    capacity_compare,
]


def plot(results: dict[str, Any], path: Path) -> Path:
    figure, axes = plt.subplots(2, 6, figsize=(32, 9.5))
    for ax, panel in zip(axes.flat, PANELS, strict=True):
        try:
            panel(ax, results)
        except Exception as exc:  # a missing or failed section must not cost the other panels
            ax.clear()
            ax.set_axis_off()
            ax.text(
                0.5,
                0.5,
                f"{panel.__name__}: not measured\n({type(exc).__name__}: {exc})"[:200],
                ha="center",
                va="center",
                fontsize=8,
                wrap=True,
            )
        ax.grid(axis="y", alpha=0.3)
    machine = results.get("machine", {})
    figure.suptitle(
        f"Luna Video Agent benchmarks ({results.get('mode')}) - {results.get('started_at', '')[:19]} - "
        f"commit {str(machine.get('git_commit', ''))[:10]} - {machine.get('cpu_count')} CPUs, "
        f"load {machine.get('load_average_start')}",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


if __name__ == "__main__":  # re-plot a results file: python -m benchmarks.plot RESULTS.json OUT.png
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
