"""The native journal protocol's encoding, event fields, and the journald handler's fallback."""

from __future__ import annotations

import logging
import os
import socket
import struct

import pytest

from hroute.systemd.journal import (
    MESSAGE_IDS,
    JournalHandler,
    JournalSender,
    encode_entry,
    event_fields,
    stderr_is_journal,
    syslog_priority,
)


def test_single_line_values_are_name_equals_value():
    data = encode_entry({"MESSAGE": "llama-local: healthy -> unhealthy", "PRIORITY": 4})
    assert data == b"MESSAGE=llama-local: healthy -> unhealthy\nPRIORITY=4\n"


def test_multi_line_value_uses_the_binary_length_format():
    value = "Traceback:\n  line 1\nboom"
    data = encode_entry({"MESSAGE": value, "PRIORITY": 3})
    encoded = value.encode()
    assert data == (
        b"MESSAGE\n" + struct.pack("<Q", len(encoded)) + encoded + b"\n" + b"PRIORITY=3\n"
    )


def test_length_counts_bytes_not_characters():
    value = "café\nbar"
    data = encode_entry({"MESSAGE": value})
    (length,) = struct.unpack("<Q", data[len(b"MESSAGE\n") : len(b"MESSAGE\n") + 8])
    assert length == len(value.encode()) == len(value) + 1


def test_equals_sign_in_value_needs_no_escaping():
    assert encode_entry({"HROUTE_REASON": "a=b"}) == b"HROUTE_REASON=a=b\n"


def test_none_values_are_left_out():
    assert encode_entry({"MESSAGE": "x", "HROUTE_BACKEND": None}) == b"MESSAGE=x\n"


@pytest.mark.parametrize("name", ["_PID", "message", "HROUTE-EVENT", "", "A" * 65])
def test_invalid_field_names_are_refused(name):
    with pytest.raises(ValueError):
        encode_entry({name: "x"})


def test_event_fields_carry_event_backend_reason_cooldown_and_message_id():
    event = {
        "id": 7,
        "ts": 1.0,
        "event": "cooldown",
        "backend": "openrouter",
        "old": "healthy",
        "new": "healthy",
        "reason": "rate_limit",
        "cooldown_s": 30.0,
    }
    fields = event_fields(event)
    assert fields == {
        "HROUTE_EVENT": "cooldown",
        "MESSAGE_ID": MESSAGE_IDS["cooldown"],
        "HROUTE_BACKEND": "openrouter",
        "HROUTE_REASON": "rate_limit",
        "HROUTE_COOLDOWN_S": "30",
        "HROUTE_FROM": "healthy",
        "HROUTE_TO": "healthy",
        "HROUTE_EVENT_ID": "7",
    }


def test_unknown_event_types_get_no_message_id():
    assert "MESSAGE_ID" not in event_fields({"event": "something_new", "backend": "b"})


def test_message_ids_are_distinct_128_bit_hex():
    ids = list(MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    for kind in ("backend_down", "backend_up", "cooldown", "fallback", "restart", "fatal"):
        assert kind in MESSAGE_IDS
    assert {"config_reloaded", "config_rejected"} <= MESSAGE_IDS.keys()


def test_catalog_explains_every_message_id():
    from pathlib import Path

    catalog = (Path(__file__).parents[2] / "packaging/catalog/hroute.catalog").read_text()
    for kind, mid in MESSAGE_IDS.items():
        assert f"\n-- {mid}\n" in catalog, kind


def test_syslog_priorities():
    assert [syslog_priority(x) for x in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_stderr_is_journal_only_when_device_and_inode_match(tmp_path):
    path = tmp_path / "stream"
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fd)
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd)
        assert not stderr_is_journal({}, fd)
    finally:
        os.close(fd)


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _record(msg: str, event: dict | None = None) -> logging.LogRecord:
    record = logging.LogRecord("hroute", logging.WARNING, __file__, 1, msg, None, None)
    if event is not None:
        record.hroute_event = event
    return record


def _parse(data: bytes) -> dict[str, str]:
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = nl + 1
        else:
            name = line
            (length,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + length]
            i = nl + 9 + length + 1
        fields[name.decode()] = value.decode()
    return fields


def test_handler_sends_a_datagram_with_the_event_fields(tmp_path):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    fallback = _Recorder()
    handler = JournalHandler(fallback, JournalSender(path))
    try:
        event = {"id": 1, "event": "backend_down", "backend": "b", "reason": "connection"}
        handler.handle(_record("b: healthy -> unhealthy (connection)", event))
        fields = _parse(server.recv(65536))
    finally:
        handler.close()
        server.close()
    assert fields["MESSAGE"] == "b: healthy -> unhealthy (connection)"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "hroute"
    assert fields["HROUTE_EVENT"] == "backend_down"
    assert fields["HROUTE_BACKEND"] == "b"
    assert fields["HROUTE_REASON"] == "connection"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["backend_down"]
    assert not fallback.records


def test_handler_falls_back_to_the_plain_line_when_journald_is_gone(tmp_path):
    fallback = _Recorder()
    handler = JournalHandler(fallback, JournalSender(str(tmp_path / "absent.sock")))
    try:
        handler.handle(_record("still said"))
    finally:
        handler.close()
    assert [r.getMessage() for r in fallback.records] == ["still said"]


def test_entries_larger_than_a_datagram_go_in_a_sealed_memfd(tmp_path):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    sender = JournalSender(path)
    big = encode_entry({"MESSAGE": "x" * (4 << 20)})
    try:
        sender.send(big)
        msg, ancdata, _flags, _addr = server.recvmsg(16, socket.CMSG_SPACE(4))
        assert msg == b""
        [(level, kind, raw)] = ancdata
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fd = int.from_bytes(raw[:4], "little")
        try:
            assert os.pread(fd, len(big) + 1, 0) == big
        finally:
            os.close(fd)
    finally:
        sender.close()
        server.close()
