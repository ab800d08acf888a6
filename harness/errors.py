"""The exception tree of the harness.

Every error the harness raises on purpose derives from HarnessError and carries a
message written for the user: what went wrong, naming the field or resource, and
the fix. The CLI prints ``str(exc)`` as one line; nothing else prints tracebacks.

    HarnessError
     +-- ConfigError          bad spec file or option (names the field)
     +-- ImageError           an image cannot be built or found
     +-- EnvironmentProblem   the host lacks a tool, module or permission
     +-- NetError             namespace/bridge/tap/qdisc setup failed
     +-- GuestError           a guest misbehaved
     |    +-- BootTimeout     no readiness signal in time
     |    +-- KernelPanic     the guest kernel panicked
     |    +-- QemuExited      the QEMU process ended unexpectedly
     |    +-- FeatureMissing  a requested CPU feature is absent in the guest
     +-- QMPError             a QMP command failed or timed out
     +-- SSHError             SSH connection or transfer failed
     |    +-- CommandFailed   a command exited non-zero with check=True
     +-- StateError           the state directory is inconsistent or busy
"""

from __future__ import annotations


class HarnessError(Exception):
    """Root of all deliberate harness errors.

    ``evidence`` names a folder where the logs of the failed run were kept (set by
    the testbed's teardown; empty when there were none).
    """

    evidence: str = ""

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (logs kept in {self.evidence})" if self.evidence else text


class ConfigError(HarnessError):
    """The spec file or a command-line option is invalid."""


class ImageError(HarnessError):
    """A guest image cannot be built or is missing."""


class EnvironmentProblem(HarnessError):
    """The host lacks something the harness needs (tool, module, privilege)."""


class NetError(HarnessError):
    """Creating or removing a network resource failed."""


class GuestError(HarnessError):
    """A guest did not behave as expected.

    ``console_log`` names the guest's console log; when a failed testbed is torn
    down its logs are copied first and this is pointed at the copy, so the message
    always names a file that still exists.
    """

    def __init__(self, message: str, *, guest: str = "", console_log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.guest = guest
        self.console_log = console_log

    def __str__(self) -> str:
        if self.console_log:
            return f"{self.message} (console log: {self.console_log})"
        return self.message


class BootTimeout(GuestError):
    """The guest did not signal readiness in time."""


class KernelPanic(GuestError):
    """The guest kernel panicked."""


class QemuExited(GuestError):
    """The QEMU process ended while the harness still needed it."""


class FeatureMissing(GuestError):
    """A CPU feature requested in the spec is not usable inside the guest."""


class QMPError(HarnessError):
    """A QMP command failed, or the monitor did not answer."""


class SSHError(HarnessError):
    """An SSH connection, command or transfer failed."""


class CommandFailed(SSHError):
    """A command run with check=True exited non-zero."""

    def __init__(self, command: str, exit_code: int, stdout: str, stderr: str, host: str) -> None:
        tail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [""]
        super().__init__(f"{host}: '{command}' exited {exit_code}: {tail[0][:200]}")
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.host = host


class StateError(HarnessError):
    """The state directory cannot be used."""
