"""Subcommand implementations of the `cream` CLI (imported lazily by cream_rt.cli)."""
