"""The one exception type the scripts turn into a one-line message."""


class ToolkitError(Exception):
    """A user-facing problem: the message names the file or option and, where known, the fix."""
