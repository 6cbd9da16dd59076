"""The job service. Packages, each depending only on those before it:
config.py, problems.py, background.py (shared) -> store/ -> jobs/ -> watches/ -> api/ (and ui.py) ->
server.py, cli.py (`circuitry serve`, `tokens`; `scan` is watches/cli.py).
tests/test_layering.py checks the order and that there are no import cycles."""
