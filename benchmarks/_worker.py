"""Run one measurement in this (fresh) process: ``python -m benchmarks._worker module:function '{json}'``.

Prints the function's JSON answer as the last line of stdout. The harness starts one worker
per measurement, so peak RSS and CPU time are that measurement's own.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys


def main(argv: list[str]) -> int:
    target, params = argv[1], json.loads(argv[2])
    module_name, _, function_name = target.partition(":")
    if not module_name.startswith("benchmarks."):
        raise SystemExit(f"refusing to run {target!r}: only benchmarks.* functions are workers")
    logging.basicConfig(level=logging.ERROR)  # retries and resubmits are expected under faults
    function = getattr(importlib.import_module(module_name), function_name)
    answer = function(**params)
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
