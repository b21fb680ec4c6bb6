"""Errors a user can act on.

Every error the library raises for bad input, missing weights or a refused action is a
``VISTA3DError`` whose message names the problem and what to do. The command line and the
Slicer panel show that message alone; anything else is a bug and keeps its traceback.
"""


class VISTA3DError(Exception):
    """A problem the user can fix; ``str(error)`` says what it is and what to do."""


class Cancelled(VISTA3DError):
    """The user cancelled a running job."""

    def __init__(self, message: str = "Cancelled by the user.") -> None:
        super().__init__(message)
