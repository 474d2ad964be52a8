"""The errors a user can act on. The CLI prints their message, not a traceback.

Every actionable error derives from :class:`UserError`; each also keeps the built-in base
callers already catch (``ValueError``, ``FileNotFoundError``, ``KeyError``, ``ImportError``,
``RuntimeError``). Anything else is a bug, and the CLI shows its traceback.
"""


class UserError(Exception):
    """An error whose message names the file, field or setting and what was expected."""


class InvalidInputError(UserError, ValueError):
    """A value, option or file content that cannot be used as given."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder named by the user that does not exist."""


class ModelNotFoundError(InputNotFoundError):
    """A model path (checkpoint, graph, engine bundle) that does not exist."""


class UnknownNameError(UserError, KeyError):
    """A name (model preset, label) that is not known; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""
