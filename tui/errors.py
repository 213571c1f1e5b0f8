"""The CLI's one user-facing error, in a module of its own so every subcommand module can raise it."""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
