"""What an operator sees of a running node: metrics over HTTP, health, structured logs (docs/metrics.md)."""
