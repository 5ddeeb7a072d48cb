"""The ``harness`` command line: up, status, kill, experiment, down, run.

Every command prints a readable table, or JSON with ``--json``. Exit codes: 0 fine,
1 an SLO or check failed, 2 bad usage, 3 the cluster could not be reached or made.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.providers.base import ClusterError, ClusterUnavailable
from harness.settings import CLUSTER_CHOICES, RUNTIME_CHOICES, get_settings
from harness.tables import render_pairs, render_table

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CLUSTER = 0, 1, 2, 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected more than 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Deploy the RAG API, check its answers, kill its pods under load, "
        "measure recovery.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def cluster_choice(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cluster",
            default=settings.cluster,
            help=f"one of {', '.join(CLUSTER_CHOICES)} (default {settings.cluster}; "
            "env HARNESS_CLUSTER)",
        )
        p.add_argument("--context", default=settings.context, help="kubeconfig context")
        p.add_argument(
            "--replicas",
            type=_positive_int,
            default=settings.replicas,
            help=f"rag-api replicas (default {settings.replicas})",
        )
        p.add_argument(
            "--runtime",
            choices=RUNTIME_CHOICES,
            default=settings.runtime,
            help=f"local cluster: pods as processes or Docker containers (default "
            f"{settings.runtime}; env HARNESS_RUNTIME; auto = docker when an engine answers)",
        )

    up = sub.add_parser("up", help="bring a cluster up and deploy the RAG API")
    cluster_choice(up)
    common(up)

    status = sub.add_parser("status", help="pods, endpoints and the Service URL")
    common(status)

    kill = sub.add_parser("kill", help="kill rag-api pods (or --target) and time the recovery")
    kill.add_argument("--mode", choices=("delete", "crash"), default="delete")
    kill.add_argument("--count", type=_positive_int, default=1)
    kill.add_argument("--target", default="", help="a pod name, or an app label (chroma)")
    kill.add_argument("--no-wait", action="store_true", help="do not wait for recovery")
    common(kill)

    down = sub.add_parser("down", help="tear down what `up` made")
    down.add_argument("--keep", action="store_true", help="keep state and pod logs")
    common(down)

    experiment = sub.add_parser("experiment", help="one chaos experiment under Locust load")
    experiment.add_argument("name", help="experiment name; `harness experiment list` lists")
    experiment.add_argument("--users", type=_positive_int, default=settings.load_users)
    experiment.add_argument(
        "--duration", type=_positive_float, default=settings.experiment_duration_s
    )
    experiment.add_argument("--out", type=Path, default=settings.reports_dir)
    experiment.add_argument(
        "--workers",
        type=int,
        choices=range(0, 17),
        default=0,
        metavar="N",
        help="run Locust distributed: one master and N local worker processes (0-16; "
        "default 0, one process)",
    )
    common(experiment)

    run = sub.add_parser("run", help="the main job: up, deploy, e2e, chaos, report, down")
    cluster_choice(run)
    run.add_argument("--out", type=Path, default=settings.reports_dir)
    run.add_argument("--keep-cluster", action="store_true")
    run.add_argument(
        "--experiments",
        default="default",
        help="comma-separated experiment names, `default`, `all` or `none`",
    )
    run.add_argument(
        "--no-tutorial",
        action="store_true",
        help="skip the pod-delete comparison with the tutorial's configuration (local only)",
    )
    run.add_argument("--users", type=_positive_int, default=settings.load_users)
    run.add_argument("--duration", type=_positive_float, default=settings.experiment_duration_s)
    common(run)
    return parser


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from harness import cluster as clusters

    handle = clusters.open_cluster(
        args.cluster, context=args.context, progress=_progress, runtime=args.runtime
    )
    _progress(f"cluster: {handle.name} ({handle.reason})")
    ok, how_to = clusters.preflight(handle)
    if not ok:
        raise ClusterUnavailable(f"{handle.name} cannot be reached: {how_to}")
    started = time.monotonic()
    info = handle.provider.up(replicas=args.replicas)
    handle.info = info
    clusters.save_current(handle)
    elapsed = time.monotonic() - started
    pods = [pod.to_dict() for pod in handle.provider.list_pods("rag-api")]
    data = {**info.to_dict(), "up_s": round(elapsed, 2), "pods": pods}
    text = render_pairs(
        [
            ("cluster", f"{info.provider} ({handle.reason})"),
            ("url", info.url),
            ("api key", info.api_key),
            ("namespace", info.namespace),
            ("replicas", info.replicas),
            *([("runtime", info.extra["runtime"])] if "runtime" in info.extra else []),
            ("ready in", f"{elapsed:.1f}s"),
        ]
    )
    _emit(args, data, text)
    return EXIT_OK


def _pod_rows(pods: Sequence[Any]) -> list[list[Any]]:
    now = time.time()
    return [
        [
            pod.name,
            pod.app,
            pod.phase,
            pod.ready,
            pod.restarts,
            f"{now - pod.created:.0f}s",
            pod.ip,
            pod.uid[:8],
        ]
        for pod in pods
    ]


POD_HEADERS = ("name", "app", "phase", "ready", "restarts", "age", "ip", "uid")


def cmd_status(args: argparse.Namespace) -> int:
    from harness import cluster as clusters

    handle = clusters.load_current()
    provider = handle.provider
    pods = provider.list_pods("rag-api") + provider.list_pods("chroma")
    endpoints = provider.endpoints("rag-api")
    data = {
        "cluster": handle.name,
        "url": provider.service_url("rag-api"),
        "desired_replicas": provider.desired_replicas("rag-api"),
        "endpoints": endpoints,
        "pods": [pod.to_dict() for pod in pods],
    }
    text = (
        render_pairs(
            [
                ("cluster", handle.name),
                ("url", data["url"]),
                ("replicas", data["desired_replicas"]),
                ("endpoints", ", ".join(endpoints) or "(none ready)"),
            ]
        )
        + "\n\n"
        + render_table(POD_HEADERS, _pod_rows(pods))
    )
    _emit(args, data, text)
    return EXIT_OK


def cmd_kill(args: argparse.Namespace) -> int:
    from harness import cluster as clusters
    from harness.faults import kill_pods

    handle = clusters.load_current()
    outcome = kill_pods(
        handle.provider,
        mode=args.mode,
        count=args.count,
        target=args.target,
        wait=not args.no_wait,
        progress=_progress,
    )
    rows = [[k, v] for k, v in outcome.items() if not isinstance(v, list | dict)]
    text = render_table(("measure", "value"), rows)
    _emit(args, outcome, text)
    return EXIT_OK if outcome.get("recovered", True) else EXIT_FAILED


def cmd_down(args: argparse.Namespace) -> int:
    from harness import cluster as clusters

    handle = clusters.load_current()
    handle.provider.down(keep=args.keep)
    clusters.forget_current(keep=args.keep)
    data = {"cluster": handle.name, "down": True, "kept": args.keep}
    _emit(args, data, f"{handle.name}: down" + (" (state kept)" if args.keep else ""))
    return EXIT_OK


def cmd_experiment(args: argparse.Namespace) -> int:
    from harness import cluster as clusters
    from harness.experiments import EXPERIMENTS, run_experiment, summary_text

    if args.name == "list":
        rows = [[name, spec.description] for name, spec in EXPERIMENTS.items()]
        _emit(args, {"experiments": list(EXPERIMENTS)}, render_table(("name", "what"), rows))
        return EXIT_OK
    if args.name not in EXPERIMENTS:
        raise SystemExit(
            f"harness: unknown experiment {args.name!r}; choose one of {', '.join(EXPERIMENTS)}"
        )
    handle = clusters.load_current()
    result = run_experiment(
        handle,
        args.name,
        users=args.users,
        duration_s=args.duration,
        out_dir=args.out,
        progress=_progress,
        workers=args.workers,
    )
    _emit(args, result.report, summary_text([result.report]))
    return EXIT_OK if result.report["slo"]["passed"] else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from harness.main_job import run_main_job

    outcome = run_main_job(
        cluster=args.cluster,
        context=args.context,
        replicas=args.replicas,
        out_dir=args.out,
        keep_cluster=args.keep_cluster,
        experiments=args.experiments,
        users=args.users,
        duration_s=args.duration,
        progress=_progress,
        compare_tutorial=not args.no_tutorial,
        runtime=args.runtime,
    )
    _emit(args, outcome.data, outcome.text)
    return EXIT_OK if outcome.passed else EXIT_FAILED


COMMANDS = {
    "up": cmd_up,
    "status": cmd_status,
    "kill": cmd_kill,
    "down": cmd_down,
    "experiment": cmd_experiment,
    "run": cmd_run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "cluster", "auto") not in CLUSTER_CHOICES:
        parser.error(
            f"unknown --cluster {args.cluster!r}; choose one of {', '.join(CLUSTER_CHOICES)}"
        )
    try:
        return COMMANDS[args.command](args)
    except ClusterUnavailable as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_CLUSTER
    except ClusterError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
