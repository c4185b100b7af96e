"""frame_batch's benchmark harness (issue 7). Run everything with one command::

    .venv/bin/python -m benchmarks            # full run, about 10 minutes on 2 cores
    .venv/bin/python -m benchmarks --quick    # smaller sizes, about 1-2 minutes
    .venv/bin/python -m benchmarks --only throughput --only memory

It prints tables and the issue's pass/fail targets, and writes ``benchmarks/results/latest.json``
(with machine facts: CPU model, cores, Python and package versions, the git commit).
Suites: ``overhead`` (client CPU per row by stage), ``throughput`` (efficiency over batch
size x concurrency, clean and with faults), ``memory`` (peak RSS vs frame size), ``resume``
(no-op resume of a finished run) and ``compare`` (frame_batch vs df.apply and the vendors'
SDKs). Every measurement runs in a fresh process against an emulator in another process,
over a real loopback socket; see each suite's module docstring for its method.
"""
