"""Kolk side by side with NATS JetStream and Redis Streams (issue 9): ``make bench-peers``.

``servers`` starts and stops each system on loopback, ``workloads`` drives it from Python,
``tail`` is the latency consumer that runs in its own process, ``report`` turns the results
into the table written to ``docs/benchmarks.md``.
"""
