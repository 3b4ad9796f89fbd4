"""The one exception type that means "the user gave us bad input".

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback. Raise it wherever the message alone tells the user what to fix.
"""


class UserError(Exception):
    """Bad input (unknown model, missing file, malformed record, ...): message is shown as-is."""
