"""A kernel that submits a background job, then dies: ``python job_child.py URL CACHE N READY``.

Submits ``N`` topic rows against the Respell emulator at URL in the background, waits until
at least ``READY`` rows are done, prints ``ready`` and sleeps until the test kills it.
"""

from __future__ import annotations

import sys
import time

import pandas as pd

import frame_batch  # noqa: F401 - registers df.bulk


def main() -> None:
    url, cache, n, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    df = pd.DataFrame({"topic": [f"topic {i}" for i in range(n)], "n": list(range(n))})
    job = df.bulk.submit(
        "clxdq2y1w008g2l7by88758uh",
        provider="respell",
        api_key="child-key",
        base_url=url,
        cache=cache,
        batch_size=5,
        max_in_flight=1,
        poll_interval=0.02,
        progress=False,
    )
    for _ in range(3000):  # bounded: 60 s
        if job.status().done >= ready:
            break
        time.sleep(0.02)
    print("ready", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main()
