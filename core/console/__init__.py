"""The SC's read-only web console: server-rendered pages over a JSON API (docs/console.md)."""
