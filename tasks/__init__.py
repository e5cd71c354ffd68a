"""Prefect tasks: thin adapters around ``seal_core`` (paths and configs in, paths out)."""
