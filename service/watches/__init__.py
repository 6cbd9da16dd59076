"""Checkpoint watches: sources (toy, directory, hub), the scan scheduler, the watch store and
`circuitry scan`."""
