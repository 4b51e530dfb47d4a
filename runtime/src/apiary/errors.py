"""Errors meant for the person at the command line (the CLI prints them without a traceback)."""


class UserError(Exception):
    """Bad input or a missing prerequisite, said in words that name the object and field."""
