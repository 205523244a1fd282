"""Structured log entries for systemd's journal, over journald's native protocol.

Under systemd, stderr is already a journal stream, but a stream carries only text: to let
`journalctl -u hroute HROUTE_EVENT=backend_down` find an event by its fields, each entry goes
as a datagram of `NAME=value` fields to journald's socket instead. Why hroute speaks the
protocol itself rather than through `systemd-python`: see docs/design.md ("Journald").
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
from collections.abc import Mapping
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "hroute"

# One stable id per event type, so `journalctl -x` finds its entry in hroute.catalog and
# `journalctl MESSAGE_ID=...` finds every such event whatever its wording.
# Never change one: packaging/catalog/hroute.catalog and users' saved queries refer to them.
MESSAGE_IDS = {
    "backend_down": "9bcaafcc23144853837641e342857a2d",
    "backend_up": "fe79519ed5924a7881bda781d49fa21a",
    "starting": "f8efaf81f1284dee9b6ed6d6f1e79cb2",
    "cooldown": "9fbbaf17416741a8adaf314fc227d7cd",
    "cooldown_end": "e50bb29d785d4c02863ed89fd2a6d845",
    "cooldown_cleared": "78aadf39776c4537bb19efbde6380ee6",
    "auth_blocked": "80839fa033ce4938b168a74b2062b65b",
    "fallback": "baa690e285984ed0a610ad8b0cacf545",
    "restart": "32cc2d912cc3474ea5bfacb0ed6c42b2",
    "fatal": "c30ac2b53b3945de93056d4884f1862b",
    "config_reloaded": "461ee5aa45d84258a0a86a4401a126dc",
    "config_rejected": "86dfb72e7d484329b1478e7ad630ee0c",
    "escalation": "2f94d7c0ef9646b8b04f19d2ec51cc13",
    "task_failure": "809f0e92a4734baa8bfe8ccaf669ba52",
    "cluster_connected": "b0d89bfabf5d48809a90c7c358ffca57",
    "cluster_disconnected": "9e468c8f81db471f884219b4d99f88b9",
}

# Event keys → journal fields (HROUTE_EVENT, MESSAGE_ID and the message come separately).
_EVENT_FIELDS = {
    "backend": "HROUTE_BACKEND",
    "reason": "HROUTE_REASON",
    "cooldown_s": "HROUTE_COOLDOWN_S",
    "profile": "HROUTE_PROFILE",
    "old": "HROUTE_FROM",
    "new": "HROUTE_TO",
    "detail": "HROUTE_DETAIL",
    "credential": "HROUTE_CREDENTIAL",
    "task": "HROUTE_TASK",
    "scope": "HROUTE_SCOPE",
    "model": "HROUTE_MODEL",
    "held": "HROUTE_HELD",
    "incident": "HROUTE_INCIDENT",
    "id": "HROUTE_EVENT_ID",
    "seen_by": "HROUTE_SEEN_BY",
}

_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")


def syslog_priority(levelno: int) -> int:
    """A logging level as a syslog priority (journal PRIORITY=)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def event_fields(event: Mapping[str, Any]) -> dict[str, str]:
    """The journal fields of a registry event: HROUTE_EVENT, MESSAGE_ID, HROUTE_BACKEND …"""
    kind = str(event["event"])
    fields = {"HROUTE_EVENT": kind}
    if kind in MESSAGE_IDS:
        fields["MESSAGE_ID"] = MESSAGE_IDS[kind]
    for key, name in _EVENT_FIELDS.items():
        value = event.get(key)
        if value is not None and value != "":
            if isinstance(value, list):
                value = ",".join(map(str, value))  # the backends a change holds
            fields[name] = f"{value:g}" if isinstance(value, float) else str(value)
    return fields


def encode_entry(fields: Mapping[str, object]) -> bytes:
    """One journal entry in the native protocol: `NAME=value\\n` per field, or, for a value
    holding a newline, `NAME\\n` + its length as 64-bit little-endian + the value + `\\n`.

    Names are upper case, digits and `_`, not starting with `_` (journald keeps those for
    fields it sets itself); None values are left out.
    """
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid journal field name {name!r}")
        data = value if isinstance(value, bytes) else str(value).encode()
        key = name.encode()
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when `fd` is the stream systemd connected to journald (JOURNAL_STREAM=dev:ino):
    not when stderr was redirected, or the variable was inherited by a child."""
    env = os.environ if env is None else env
    try:
        dev, ino = (int(part) for part in env.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalSender:
    """Sends encoded entries to journald's socket without ever blocking the event loop."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A full journald queue must not stall probes and answers: the caller falls back.
        self._sock.setblocking(False)

    def send(self, data: bytes) -> None:
        """Send one entry; raise OSError when journald cannot take it now."""
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_large(data)

    def _send_large(self, data: bytes) -> None:
        # Past the datagram size limit journald takes the entry in a sealed memfd.
        fd = os.memfd_create("hroute-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = array.array("i", [fd])
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class JournalHandler(logging.Handler):
    """A logging handler writing structured journal entries; a record carrying a registry
    event (`extra={"hroute_event": event}`) gets its HROUTE_* fields and MESSAGE_ID. When
    journald cannot take an entry the plain line goes to `fallback` instead of being lost."""

    def __init__(self, fallback: logging.Handler, sender: JournalSender | None = None) -> None:
        super().__init__()
        self.fallback = fallback
        self.sender = sender or JournalSender()

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields: dict[str, object] = {
            "MESSAGE": self.format(record),
            "PRIORITY": syslog_priority(record.levelno),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "HROUTE_LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
        }
        event = getattr(record, "hroute_event", None)
        if event is not None:
            fields.update(event_fields(event))
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sender.send(encode_entry(self.fields(record)))
        except OSError:
            self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sender.close()
        super().close()
