"""The snapshot file's layout: a small header, an index, then a section per backend.

A client asks about one backend at a time, and a storm of reports changes the registry
hundreds of times a second: a single JSON document (0.22 MB with 3,000 held keys) made every
reader re-parse all of it after every change (2.4 ms). So the file is three parts:

    {"v": 3, "pid": …, "version": …, "expires": …, "urls": [offset, length]}\\n
    {"backend-a": [offset, length], "backend-b": [offset, length], …}\\n
    <each backend's section (a JSON object), then {"urls": …, "url_models": …}>

A reader parses the first line (constant size) and finds a backend's entry in the index
line by a byte search for `{"name":[` or `,"name":[` — exact, since JSON escapes every `"`
inside a string — then parses that one section, once per file. A change costs a reader
microseconds whatever the size of the fleet. Offsets count from the byte after the index's
newline. Nothing is trusted: an entry or section out of bounds, not JSON or not an object
is a ValueError (the client then asks the socket); a name the search does not find is
looked up in the whole index, parsed then, so a malformed index is never read as "not
there". Standard library only: the client imports it inside agents.
"""

from __future__ import annotations

import json
import math
from typing import Any

FORMAT = 3  # 2: one JSON document; 3: a header, an index and sections


def encode(header: dict[str, Any], backends: dict[str, Any], urls: dict[str, Any]) -> bytes:
    """The file: `header` (pid, version, expires), the index, then the sections."""
    return encode_sections(header, {n: section(e) for n, e in backends.items()}, section(urls))


def section(value: dict[str, Any]) -> bytes:
    """One section's bytes (a writer may keep them while the value does not change)."""
    return _dumps(value)


def encode_sections(header: dict[str, Any], backends: dict[str, bytes], urls: bytes) -> bytes:
    """The file from sections already encoded (`section`): the header, the index, them."""
    return b"".join(encode_parts(header, backends, urls))


def encode_parts(header: dict[str, Any], backends: dict[str, bytes], urls: bytes) -> list[bytes]:
    """`encode_sections` as the parts to write one after the other (nothing copied)."""
    index, at = {}, 0
    for name, blob in backends.items():
        index[name] = [at, len(blob)]
        at += len(blob)
    head = {**header, "v": FORMAT, "urls": [at, len(urls)]}
    return [_dumps(head), b"\n", _dumps(index), b"\n", *backends.values(), urls]


class SnapshotFile:
    """One snapshot file as read: its header, and each section parsed when first asked."""

    __slots__ = ("_raw", "_index_at", "_base", "_urls_at", "_parsed", "_urls", "_full_index")
    __slots__ += ("pid", "version", "expires")

    def __init__(self, raw: bytes) -> None:
        """Parse the header of `raw`; ValueError (or RecursionError) if it is not one."""
        head_end = raw.find(b"\n")
        index_end = raw.find(b"\n", head_end + 1) if head_end >= 0 else -1
        if index_end < 0:
            raise ValueError("no header and index")
        head = _loads(raw[:head_end])
        if not isinstance(head, dict) or head.get("v") != FORMAT:
            raise ValueError("not a snapshot of this format")
        expires, urls_at = head.get("expires"), head.get("urls")
        if not (isinstance(expires, float | int) and math.isfinite(expires)):
            raise ValueError("no expiry")
        if not _span(urls_at):
            raise ValueError("no URL section")
        self._raw, self._index_at, self._base = raw, (head_end + 1, index_end), index_end + 1
        self._urls_at = urls_at
        self._parsed: dict[str, dict[str, Any]] = {}
        self._urls: dict[str, Any] | None = None
        self._full_index: dict[str, Any] | None = None
        self.pid, self.version, self.expires = head.get("pid"), head.get("version", 0), expires

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._entry(name) is not None

    def names(self) -> list[str]:
        return list(self._index())

    def backend(self, name: str) -> dict[str, Any]:
        """The section of backend `name` (KeyError if it has none; ValueError if broken)."""
        if name not in self._parsed:
            span = self._entry(name)
            if span is None:
                raise KeyError(name)
            self._parsed[name] = self._section(span)
        return self._parsed[name]

    def urls(self) -> dict[str, Any]:
        """{"urls": normalised URL -> name, "url_models": URL -> {model -> name}}."""
        if self._urls is None:
            self._urls = self._section(self._urls_at)
        return self._urls

    def _entry(self, name: str) -> list[int] | None:
        """`name`'s [offset, length] from the index: by a byte search, else by parsing it."""
        raw, (start, end) = self._raw, self._index_at
        key = _dumps(name) + b":["
        pos = raw.find(key, start, end)
        while pos > start and raw[pos - 1] not in b"{,":
            pos = raw.find(key, pos + 1, end)
        if pos > start:
            close = raw.find(b"]", pos, end)
            numbers = raw[pos + len(key) : close].split(b",") if close > 0 else []
            if len(numbers) == 2 and all(n.isdigit() for n in numbers):
                return [int(numbers[0]), int(numbers[1])]
        span = self._index().get(name)  # not found so (or malformed): the whole index says
        if span is not None and not _span(span):
            raise ValueError(f"a broken index entry for {name!r}")
        return span

    def _index(self) -> dict[str, Any]:
        if self._full_index is None:
            start, end = self._index_at
            index = _loads(self._raw[start:end])
            if not isinstance(index, dict):
                raise ValueError("the index is not an object")
            self._full_index = index
        return self._full_index

    def _section(self, span: list[int]) -> dict[str, Any]:
        if not _span(span):
            raise ValueError("a broken section entry")
        start = self._base + span[0]
        if start + span[1] > len(self._raw):
            raise ValueError("a section past the end")
        value = _loads(self._raw[start : start + span[1]])
        if not isinstance(value, dict):
            raise ValueError("a section that is not an object")
        return value


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _loads(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_no_constants)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number hroute writes")


def _span(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
