"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""


class QuambaError(Exception):
    """Bad input (path, config, checkpoint, flag combination, data): the message says what and what to do."""
