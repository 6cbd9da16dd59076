"""The `circuitry` command line (console script `discovery.cli:main`; also `python -m discovery.cli`).
The parser and the discovery subcommands are in commands.py."""

from .commands import EXIT_USER_ERROR, build_parser, discovery_options, flag, main

__all__ = ["EXIT_USER_ERROR", "build_parser", "discovery_options", "flag", "main"]
