"""Errors the CLI turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: unknown plugin, task or model, bad value, missing file."""
