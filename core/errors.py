"""The two exceptions every RS Lab job may raise.

`RSLabError` carries a message a person can act on ("the two layers do not
overlap", "band count 4 does not match the model's 3"). Adapters show it
as it is: Processing turns it into a QgsProcessingException, docks into a
message bar entry. `JobCancelled` is raised when the caller's `cancelled()`
returns True; the job has removed its partial outputs by then.
"""


CANCELLED_MESSAGE = "cancelled; no output was written"  # what a cancelled job's caller is told, everywhere


class RSLabError(Exception):
    """Bad input or a failed job, with a message meant for the user."""


class JobCancelled(Exception):
    """The user cancelled the job; no partial output is left behind."""

    def __init__(self, message: str = "cancelled by the user") -> None:
        super().__init__(message)
