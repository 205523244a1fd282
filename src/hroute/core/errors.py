"""The errors hroute raises; only the CLI turns them into exit codes."""

from __future__ import annotations

from hroute.core.sanitize import clean

PROBLEM_CHARS = 4000  # one problem of a configuration, as shown


class HrouteError(Exception):
    """Base of every error hroute raises on purpose."""


class ConfigError(HrouteError):
    """A configuration file that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        # Problems quote the file (a key with an ESC in it): escaped, as all shown text is.
        self.problems = [clean(p, PROBLEM_CHARS) for p in problems]
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: invalid configuration\n{lines}")


class SocketInUseError(HrouteError):
    """Another daemon is already answering on the socket path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"{path}: another hroute daemon is already serving this socket "
            "(stop it first, or set daemon.socket / HROUTE_SOCKET to another path)"
        )


class UnknownBackendError(HrouteError):
    """A request named a backend that the configuration does not have."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"unknown backend {name!r} (configured: {', '.join(sorted(known)) or 'none'})"
        )


class UnknownProfileError(HrouteError):
    """A request named a profile that the configuration does not have."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown profile {name!r} (configured: {', '.join(sorted(known)) or 'none'})"
        )


class NotSupervisedError(HrouteError):
    """A restart was asked for a backend that hroute does not supervise."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"backend {name!r} is not supervised by hroute (give it a supervise: block)"
        )
