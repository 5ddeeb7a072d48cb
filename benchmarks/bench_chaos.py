"""Run the chaos experiments several times on the local cluster and print median figures.

    .venv/bin/python benchmarks/bench_chaos.py       # every default scenario, 3 rounds
    .venv/bin/python benchmarks/bench_chaos.py --rounds 5 pod-delete pod-crash

Brings a local cluster up (state under a temporary directory, so it does not touch a cluster
`harness up` made, but it does need the NodePort 31859 free), runs each scenario --rounds
times under the same load as the chaos suite, prints the median and the range of each figure,
and writes every report under --out. The pod-freeze scenario reports the error of the outage
measurement (measured - injected).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cluster import ClusterHandle  # noqa: E402
from harness.experiments import EXPERIMENTS, run_experiment  # noqa: E402
from harness.providers.local import LocalCluster  # noqa: E402
from harness.tables import render_table  # noqa: E402

FIGURES = ("requests", "failures", "inflight_at_fault", "outage_s", "error_rate_during",
           "rescheduling_s", "readiness_s", "replacement_ready_s", "total_s")  # fmt: skip
DEFAULT_SCENARIOS = ("pod-delete", "pod-crash", "pod-delete-all", "chroma-kill", "scale-zero",
                     "rolling-restart", "pod-freeze")  # fmt: skip


def _median(values: list[Any]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    mid = statistics.median(known)
    return f"{mid:.3g} [{low:.3g}..{high:.3g}]" if low != high else f"{mid:.3g}"


def replace_restarted_pods(provider: LocalCluster) -> None:
    """Delete pods whose container already restarted, so each crash round starts from fresh
    pods: a second crash of the same container would time the restart back-off instead."""
    restarted = [p.name for p in provider.list_pods("rag-api") if p.restarts and not p.deleting]
    for name in restarted:
        provider.delete_pod(name)
    if restarted:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pods = [p for p in provider.list_pods("rag-api")]
            if len(pods) == 2 and all(p.ready and not p.restarts for p in pods):
                return
            time.sleep(0.2)
        raise TimeoutError(f"restarted pods {restarted} not replaced: {provider.diagnostics()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=list(DEFAULT_SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=24.0)
    parser.add_argument("--freeze", type=float, default=2.0, help="pod-freeze: seconds frozen")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench-chaos")
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in EXPERIMENTS]
    if unknown or args.rounds < 1:
        parser.error(f"unknown scenarios {unknown}" if unknown else "--rounds must be >= 1")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as state:
        provider = LocalCluster(state_dir=Path(state) / "local")
        started = time.monotonic()
        info = provider.up(replicas=2)
        print(f"local cluster up in {time.monotonic() - started:.1f}s at {info.url}", flush=True)
        handle = ClusterHandle("local", provider, "benchmark", Path(state), info=info)
        results: dict[str, list[dict[str, Any]]] = {}
        try:
            for name in args.scenarios:
                for round_number in range(args.rounds):
                    if name in ("pod-crash", "oom-kill"):
                        replace_restarted_pods(provider)
                    result = run_experiment(
                        handle,
                        name,
                        users=args.users,
                        rate_per_s=args.rate,
                        duration_s=args.duration,
                        out_dir=out,
                        progress=lambda line: print(f"  {line}", flush=True),
                        label=f"{name}-{round_number + 1}",
                        freeze_s=args.freeze,
                    )
                    results.setdefault(name, []).append(result.report)
        finally:
            provider.down()
    rows = []
    for name, reports in results.items():
        row = [name, sum(r["slo"]["passed"] for r in reports)]
        row += [_median([r[key] for r in reports]) for key in FIGURES]
        rows.append(row)
    print()
    print(f"medians [min..max] of {args.rounds} rounds, {args.users} users at ~{args.rate:g}/s")
    print(render_table(("scenario", "slo passed", *FIGURES), rows))
    if "pod-freeze" in results:
        errors = [
            None if r["outage_s"] is None else r["outage_s"] - r["extra"]["injected_outage_s"]
            for r in results["pod-freeze"]
        ]
        print(f"\noutage measurement error (measured - injected): {_median(errors)} s")
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nreports: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
