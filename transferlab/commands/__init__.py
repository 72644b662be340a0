"""Subcommands of the `transferlab` CLI, one module each (see transferlab.cli)."""
