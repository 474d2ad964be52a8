"""The base of every error a user can act on: the CLI prints its message, not a traceback."""


class UserError(Exception):
    """An error whose message names the file, field or setting and what was expected."""
