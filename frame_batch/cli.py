"""The ``frame-batch`` command line: ``run``, ``status``, ``cancel``, ``demo`` and ``emulate``.

Exit codes: 0 every row succeeded; 1 the run finished but some rows did not succeed (failed,
skipped, or left pending); 2 the run failed (an error was raised: bad input, bad key, the
vendor refused); 130 interrupted (Ctrl-C; the run is resumable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _cli_run, errors
from ._cli_run import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED


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
        description="Serve a stateful vendor emulator over HTTP on loopback, for offline tests.",
        epilog="examples: frame-batch emulate respell --port 8787   "
        "(then: Respell(base_url='http://127.0.0.1:8787', api_key='any'));   "
        "frame-batch emulate parallel --port 8788 --webhook-secret s3cret",
    )
    emulate.add_argument("vendor", choices=["respell", "parallel", "vectorshift"])
    emulate.add_argument("--host", default="127.0.0.1", help="loopback address (default: %(default)s)")
    emulate.add_argument(
        "--port", type=int, default=8787, help="port, 0 = any free port (default: %(default)s)"
    )
    emulate.add_argument("--latency", type=float, default=0.5, help="seconds until a run finishes")
    emulate.add_argument("--jitter", type=float, default=0.5, help="extra random seconds per run")
    emulate.add_argument("--failure-rate", type=float, default=0.0, help="fraction of runs that fail")
    emulate.add_argument("--api-key", action="append", help="accept only this key (repeatable)")
    emulate.add_argument(
        "--webhook-secret", action="append", default=[], help="parallel: sign webhooks with it (repeatable)"
    )
    return parser


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
    from .testing import ParallelEmulator, RespellEmulator, VectorShiftEmulator, serve_forever

    knobs = {"latency": args.latency, "jitter": args.jitter, "failure_rate": args.failure_rate}
    emulator: RespellEmulator | ParallelEmulator | VectorShiftEmulator
    if args.vendor == "parallel":
        emulator = ParallelEmulator(**knobs, api_keys=args.api_key, webhook_secrets=args.webhook_secret)
    elif args.vendor == "vectorshift":
        emulator = VectorShiftEmulator(**knobs, api_keys=args.api_key)  # base URL: <url>/v1
    else:
        emulator = RespellEmulator(**knobs, api_keys=args.api_key)

    def ready(handle: object) -> None:
        url = getattr(handle, "url", handle)
        print(f"{args.vendor} emulator listening on {url} (Ctrl-C to stop)", flush=True)

    serve_forever(emulator.handler, host=args.host, port=args.port, on_ready=ready)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
