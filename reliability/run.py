"""The long form of the reliability suite: ``python -m reliability.run [--ci] [--out DIR]``.

Starts its own stack (reliability/bench.py), injects every fault of reliability/faults.py
(the RTSP camera killed and frozen ten times each, and so on: ``Sizes``), runs the 1000-cycle
churn, then the delivery section (reliability/delivery.py: callbacks through receiver outages,
broker restarts and a core kill; ``DeliverySizes``), and writes
``<out>/<YYYY-MM-DD>T<HHMMSS>.json`` plus ``latest.json`` with the figures. A line of figures
per fault and section is printed as it finishes. ``--ci`` runs the sizes of
tests/test_reliability.py instead.

Exit status 1 when any guarantee broke (the JSON lists each violation) or the suite could not
run; the figures are written either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from lva_testkit.paths import REPO
from reliability import delivery
from reliability.bench import start_bench
from reliability.churn import churn
from reliability.faults import FAULTS, Sizes, brief, run_fault

RESULTS = REPO / "reliability" / "results"
LOGS = REPO / "reliability" / ".cache" / "logs"


async def run(sizes: Sizes, delivery_sizes: delivery.DeliverySizes, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"faults": [], "errors": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        bench = await start_bench(log_dir, http)
        try:
            for name in FAULTS:
                started = time.monotonic()
                try:
                    result = await run_fault(bench, name, sizes)
                except Exception as exc:
                    results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    continue
                result["seconds"] = round(time.monotonic() - started, 1)
                results["faults"].append(result)
                print(brief(result), flush=True)
                for violation in result["violations"]:
                    print(f"  VIOLATION {violation}", flush=True)
            await bench.stop_witnesses()
            try:
                results["churn"] = await churn(bench, sizes.churn_cycles, sizes.churn_lanes)
                c = results["churn"]
                print(
                    f"churn: {c['cycles']} cycles in {c['seconds']} s; census delta {c['census_delta']}; "
                    f"RSS growth {json.dumps(c['rss_growth'])}",
                    flush=True,
                )
                for violation in c["violations"]:
                    print(f"  VIOLATION {violation}", flush=True)
            except Exception as exc:
                results["errors"].append(f"churn: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            # Last: it kills the core.
            try:
                results["delivery"] = await delivery.run_delivery(bench, delivery_sizes)
                print(delivery.brief(results["delivery"]), flush=True)
                for violation in results["delivery"]["violations"]:
                    print(f"  VIOLATION {violation}", flush=True)
            except Exception as exc:
                results["errors"].append(f"delivery: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        finally:
            await bench.stop()
    return results


def totals(results: dict[str, Any]) -> dict[str, Any]:
    faults = results["faults"]
    lanes = results.get("delivery", {}).get("callbacks", [])
    return {
        "faults_injected": sum(f["injected"] for f in faults),
        "streams_recovered": sum(f["recovered"] for f in faults),
        "failed_cleanly": sum(f.get("failed_cleanly", 0) for f in faults),
        "witness_events_lost": sum(f["witness_events_lost"] for f in faults),
        "witness_events_missing": sum(f["witness_events_missing"] for f in faults),
        "events_produced": results.get("delivery", {}).get("produced", 0),
        "events_missing": sum(c["missing"] for c in lanes),
        "events_lost_at_kill": sum(c["lost_at_kill"] for c in lanes),
        "violations": sum(len(f["violations"]) for f in faults)
        + len(results.get("churn", {}).get("violations", []))
        + len(results.get("delivery", {}).get("violations", [])),
        "errors": len(results["errors"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="the bounded sizes of the CI tests")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = Sizes.ci() if args.ci else Sizes()
    delivery_sizes = delivery.DeliverySizes.ci() if args.ci else delivery.DeliverySizes()
    stamp = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    started = time.monotonic()
    results = asyncio.run(run(sizes, delivery_sizes, LOGS / stamp))
    document = {
        "date": stamp,
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
        "sizes": {**asdict(sizes), "delivery": asdict(delivery_sizes)},
        "seconds": round(time.monotonic() - started, 1),
        "totals": totals(results),
        **results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1)
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print(f"totals: {json.dumps(document['totals'])}")
    print(f"figures: {args.out / (stamp + '.json')}")
    return 1 if document["totals"]["violations"] or document["totals"]["errors"] else 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
