"""Jobs: the request model (spec.py), submission checks, the durable queue, the dispatcher, the
executors (inline, Ray model actors) and the pipeline one job runs."""
