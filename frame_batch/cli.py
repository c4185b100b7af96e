"""The ``frame-batch`` command line: ``run``, ``status``, ``cancel``, ``demo`` and ``emulate``.

Exit codes: 0 every row succeeded; 1 the run finished but some rows did not succeed (failed,
skipped, or left pending); 2 the run failed (an error was raised: bad input, bad key, the
vendor refused); 130 interrupted (Ctrl-C; the run is resumable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import _cli_run, errors
from ._cli_run import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED

if TYPE_CHECKING:
    from .testing import ParallelEmulator, RespellEmulator, VectorShiftEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frame-batch",
        description="Run AI-workflow bulk APIs over every row of a table.",
        epilog="Exit codes: 0 every row succeeded, 1 some rows failed (or were skipped or left "
        "pending), 2 the run failed, 130 interrupted (run the same command again to resume).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _cli_run.add_run_parser(sub)
    _cli_run.add_status_parser(sub)
    _cli_run.add_cancel_parser(sub)

    demo = sub.add_parser(
        "demo",
        help="run a bundled table through a vendor emulator (no key, no network)",
        description="Run ~300 sample sales leads through a Respell spell (or, with --provider "
        "parallel, Parallel structured outputs: typed integer, boolean and date columns plus "
        "citations) on the in-process emulator, then write the enriched table as .xlsx and "
        ".parquet. Run it twice: the second run is served from the cache with zero submissions.",
        epilog="examples: frame-batch demo --out ./frame-batch-demo   frame-batch demo --provider parallel",
    )
    demo.add_argument("--out", default="frame-batch-demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--provider", choices=["respell", "parallel"], default="respell", help="vendor (default: %(default)s)"
    )
    demo.add_argument(
        "--latency", type=float, default=1.0, help="simulated seconds per run (default: %(default)s)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")

    emulate = sub.add_parser(
        "emulate",
        help="serve a vendor emulator on a loopback port",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a stateful vendor emulator over HTTP on loopback, for offline tests.\n"
        "It can misbehave on purpose: slow or failed runs, out-of-order results, and random\n"
        "429s (with Retry-After), 5xx answers and dropped connections.",
        epilog="examples:\n"
        "  frame-batch emulate respell --port 8787\n"
        "      then: Respell(base_url='http://127.0.0.1:8787', api_key='any')\n"
        "  frame-batch emulate parallel --port 8788 --webhook-secret s3cret\n"
        "  frame-batch emulate respell --port 8787 --latency 0.2 --rate-429 0.05 --retry-after 0.5 \\\n"
        "      --rate-5xx 0.02 --faults-on all --seed 7\n"
        "      5% of requests get a 429 (Retry-After: 0.5), 2% a 500 or 503, creates included",
    )
    emulate.add_argument("vendor", choices=["respell", "parallel", "vectorshift"])
    emulate.add_argument("--host", default="127.0.0.1", help="loopback address (default: %(default)s)")
    emulate.add_argument(
        "--port", type=int, default=8787, help="port, 0 = any free port (default: %(default)s)"
    )
    emulate.add_argument(
        "--latency",
        type=_seconds,
        default=0.5,
        help="seconds each run takes: bulk runs stay running that long, a wait-mode single run "
        "answers after it (default: %(default)s)",
    )
    emulate.add_argument(
        "--jitter",
        type=_seconds,
        default=0.5,
        help="up to this many extra random seconds per run (default: %(default)s)",
    )
    emulate.add_argument(
        "--failure-rate",
        type=_probability,
        default=0.0,
        help="fraction of runs that fail (default: %(default)s)",
    )
    emulate.add_argument("--out-of-order", action="store_true", help="return runs' results shuffled")
    emulate.add_argument("--api-key", action="append", help="accept only this key (repeatable)")
    emulate.add_argument(
        "--webhook-secret", action="append", default=[], help="parallel: sign webhooks with it (repeatable)"
    )
    faults = emulate.add_argument_group(
        "faults",
        "Random faults, each a probability per request (together at most 1). A refused\n"
        "(429/5xx) request did nothing; a dropped create did its work and lost only the answer.",
    )
    faults.add_argument(
        "--rate-429",
        type=_probability,
        default=0.0,
        metavar="P",
        help="answer 429 Too Many Requests (default: 0)",
    )
    faults.add_argument(
        "--retry-after",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="the Retry-After of every 429 (default: %(default)s)",
    )
    faults.add_argument(
        "--rate-5xx", type=_probability, default=0.0, metavar="P", help="answer 500 or 503 (default: 0)"
    )
    faults.add_argument(
        "--rate-drop",
        type=_probability,
        default=0.0,
        metavar="P",
        help="close the connection unanswered (default: 0)",
    )
    faults.add_argument(
        "--faults-on",
        choices=["reads", "creates", "all"],
        default="reads",
        help="which requests faults hit: reads (polls), creates (requests that start paid work) "
        "or all (also cancels) (default: %(default)s)",
    )
    faults.add_argument(
        "--seed", type=int, default=0, help="seed of the faults, failures and jitter (default: %(default)s)"
    )
    return parser


def _probability(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, not {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import main as demo_main

            demo_main(args.out, provider=args.provider, latency=args.latency, progress=not args.no_progress)
            return EXIT_OK  # the demo's few failed rows are part of the show
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        return _emulate(args)
    except errors.FrameBatchError as exc:
        print(f"frame-batch: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        if args.command == "run":
            print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


COMMANDS = {
    "run": _cli_run.run_command,
    "status": _cli_run.status_command,
    "cancel": _cli_run.cancel_command,
}


def _emulate(args: argparse.Namespace) -> int:
    from .testing import serve_forever

    try:
        emulator = emulator_from_args(args)
    except ValueError as exc:  # a knob out of range: say which, like argparse would
        print(f"frame-batch emulate: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED

    def ready(handle: object) -> None:
        url = getattr(handle, "url", handle)
        print(f"{args.vendor} emulator listening on {url} (Ctrl-C to stop)", flush=True)

    try:
        serve_forever(emulator.handler, host=args.host, port=args.port, on_ready=ready)
    except (ValueError, OSError) as exc:  # not loopback, port taken
        print(f"frame-batch emulate: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


def emulator_from_args(args: argparse.Namespace) -> RespellEmulator | ParallelEmulator | VectorShiftEmulator:
    """The emulator ``frame-batch emulate`` serves, built from its parsed options."""
    from .testing import Faults, ParallelEmulator, RespellEmulator, VectorShiftEmulator

    faults = Faults(
        rate_429=args.rate_429,
        retry_after=args.retry_after,
        rate_5xx=args.rate_5xx,
        rate_drop=args.rate_drop,
        on=args.faults_on,
        seed=args.seed,
    )
    knobs: dict[str, Any] = {  # the knobs every emulator has
        "latency": args.latency,
        "jitter": args.jitter,
        "failure_rate": args.failure_rate,
        "out_of_order": args.out_of_order,
        "faults": faults,
        "api_keys": args.api_key,
        "seed": args.seed,
    }
    if args.vendor == "parallel":
        return ParallelEmulator(**knobs, webhook_secrets=args.webhook_secret)
    if args.vendor == "vectorshift":
        return VectorShiftEmulator(**knobs)  # base URL: <url>/v1
    return RespellEmulator(**knobs)


if __name__ == "__main__":
    sys.exit(main())
