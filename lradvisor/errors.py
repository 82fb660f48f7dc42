"""Every error lradvisor raises on purpose: one base, a few kinds, each knowing its exit code and its one line.

Anything else that escapes is a bug, and the CLI lets its traceback through (the run is already marked FAILED); an
OSError (a full disk, a file that cannot be written) is the machine's, and gets one line.
"""


class LradvisorError(Exception):
    """An error the user can act on; the message says what was wrong and how to fix it."""

    code = 1

    def line(self, command):
        return f"lradvisor {command}: error: {self}"


class UsageError(LradvisorError):
    """A parameter is invalid (before any run exists); the message names the valid values."""

    code = 2

    def line(self, command):
        return f"lradvisor {command or ''}: error: {self}".replace("  ", " ")


class DataError(UsageError):
    """The data set is missing or unreadable; the message says how to fix it."""


class RunFailed(LradvisorError):
    """A run started and cannot go on; it was ended FAILED."""

    def line(self, command):
        return f"lradvisor {command}: error: {self} (the run was ended FAILED)"


class TrainingError(RunFailed):
    """Training cannot go on (the loss diverged: a PBT member records that and goes on); the message says why."""


class AdvisorError(RunFailed):
    """An exchange failed and on_advisor_error=fail asked for the run to stop."""


class SearchError(RunFailed):
    """The search cannot give a winner (e.g. no trial finished); the message says why."""


class ServerLost(LradvisorError):
    """The tracking server stopped answering mid-run; the message says where the unsent records are. Its own exit
    code (EX_TEMPFAIL) tells a sweep that its child lost the server, not that it failed: the sweep waits for the
    server and trains that child again."""

    code = 75
