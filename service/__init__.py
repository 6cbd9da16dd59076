"""The job service: HTTP API (api.py), durable queue, dispatcher, executors (inline or Ray model actors),
store (SQLite or PostgreSQL), checkpoint watches and the /ui pages; `circuitry serve`, `tokens`, `scan`."""
