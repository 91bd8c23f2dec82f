"""The one exception type robench raises for problems a user can fix.

The CLI turns it into a one-line message and a non-zero exit; library callers can catch it.
"""


class RobenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""
