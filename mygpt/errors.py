"""User-facing errors.

Every problem a user can cause (bad flags, a missing or corrupt file, an empty corpus, ...) is raised
as a :class:`MygptError` whose message is one line of the form ``what is wrong — what to do``. The CLI
prints it as ``error: <message>`` and exits with ``exit_code``; no traceback reaches the user.
"""

from __future__ import annotations


class MygptError(Exception):
    """A failure the user can fix; the message says what is wrong and what to do."""

    exit_code = 1


class UsageError(MygptError):
    """Bad flags or arguments (exit code 2, like click's own usage errors)."""

    exit_code = 2
