"""Helpers for ``scripts/bench``: the bare baseline server, load generators, processes, reports."""
