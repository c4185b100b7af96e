"""A run in a child process, for the crash and interrupt tests: ``python run_child.py URL CACHE N``.

Runs ``frame_batch.run`` over ``N`` topic rows (plus a bytes and a dict column with
``"with_files": true``) against the emulator at URL and writes the
result frame to ``CACHE/../out.parquet``. Extra options come as JSON in argv[4].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

import frame_batch
from frame_batch import RetryPolicy


def main() -> None:
    url, cache, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    df = pd.DataFrame({"topic": [f"topic {i}" for i in range(n)], "n": list(range(n))})
    if options.pop("with_files", False):  # a bytes column (files) and a dict column (maps)
        df["doc"] = [f"document {i}".encode() for i in range(n)]
        df["meta"] = [{"city": f"City {i}"} for i in range(n)]
    result = frame_batch.run(
        df,
        options.pop("workflow", "clxdq2y1w008g2l7by88758uh"),
        provider=options.pop("provider", "respell"),
        api_key="child-key",
        base_url=url,
        cache=cache,
        progress=False,
        retry=RetryPolicy.testing(),
        **options,
    )
    result.frame.to_parquet(cache.parent / "out.parquet")
    print(json.dumps({"possibly_duplicated": [int(i) for i in result.possibly_duplicated]}), flush=True)


if __name__ == "__main__":
    main()
