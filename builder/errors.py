"""The one error type users see: it carries a message that says what to do, and exit code 2."""


class UserError(Exception):
    """Bad input or an environment the builder cannot use; shown without a traceback."""

    exit_code = 2


class BuildFailed(Exception):
    """The build itself failed (a failing step, tags that disagree with the manifest)."""

    exit_code = 1
