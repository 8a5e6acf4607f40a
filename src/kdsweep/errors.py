"""The one exception a user can cause: the command line prints its message and exits non-zero."""


class KdsweepError(Exception):
    """A problem with the user's input (config, data, files), told in one sentence that names the fix."""
