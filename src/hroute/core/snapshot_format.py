"""The snapshot file's layout: one small header, then a section per backend. Stdlib only.

A client asks about one backend at a time, and a storm of reports changes the registry
hundreds of times a second: a single JSON document (0.22 MB with 3,000 held keys) made every
reader re-parse all of it after every change (2.4 ms). So the file is

    {"v": 3, "pid", "version", "expires", "index": {name: [offset, length]}, "urls": [o, l]}\\n
    <the sections: each backend's JSON, then {"urls", "url_models"}>

and a reader parses the header (an index: tens of bytes a backend) and then only the
section of the backend it is asked about, once per file. Offsets count from the byte after
the header's newline. The reader trusts nothing: a section out of bounds, not JSON or not an
object is a ValueError (the client then asks the socket).
"""

from __future__ import annotations

import json
import math
from typing import Any

FORMAT = 3  # 2: one JSON document; 3: a header and sections


def encode(header: dict[str, Any], backends: dict[str, Any], urls: dict[str, Any]) -> bytes:
    """The file: `header` (v, pid, version, expires) with the index, then the sections."""
    sections, index, at = [], {}, 0
    for name, entry in backends.items():
        blob = json.dumps(entry, separators=(",", ":")).encode()
        index[name] = [at, len(blob)]
        sections.append(blob)
        at += len(blob)
    blob = json.dumps(urls, separators=(",", ":")).encode()
    sections.append(blob)
    head = {**header, "v": FORMAT, "index": index, "urls": [at, len(blob)]}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + b"".join(sections)


class SnapshotFile:
    """One snapshot file as read: its header, and each section parsed when first asked."""

    __slots__ = ("_raw", "_base", "_index", "_urls_at", "_parsed", "pid", "version", "expires")

    def __init__(self, raw: bytes) -> None:
        """Parse the header of `raw`; ValueError (or RecursionError) if it is not one."""
        end = raw.find(b"\n")
        if end < 0:
            raise ValueError("no header")
        head = _loads(raw[:end])
        if not isinstance(head, dict) or head.get("v") != FORMAT:
            raise ValueError("not a snapshot of this format")
        expires, index, urls_at = head.get("expires"), head.get("index"), head.get("urls")
        if not (isinstance(expires, float | int) and math.isfinite(expires)):
            raise ValueError("no expiry")
        if not isinstance(index, dict) or not _span(urls_at):
            raise ValueError("no index")
        self._raw, self._base, self._index, self._urls_at = raw, end + 1, index, urls_at
        self._parsed: dict[str, Any] = {}
        self.pid, self.version, self.expires = head.get("pid"), head.get("version", 0), expires

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def names(self) -> list[str]:
        return list(self._index)

    def backend(self, name: str) -> dict[str, Any]:
        """The section of backend `name` (KeyError if it has none; ValueError if broken)."""
        return self._section(name, self._index[name])

    def urls(self) -> dict[str, Any]:
        """{"urls": normalised URL -> name, "url_models": URL -> {model -> name}}."""
        return self._section("\0urls", self._urls_at)

    def _section(self, key: str, span: Any) -> dict[str, Any]:
        value = self._parsed.get(key)
        if value is not None:
            return value
        if not _span(span):
            raise ValueError("a broken index entry")
        start = self._base + span[0]
        if start + span[1] > len(self._raw):
            raise ValueError("a section past the end")
        value = _loads(self._raw[start : start + span[1]])
        if not isinstance(value, dict):
            raise ValueError("a section that is not an object")
        self._parsed[key] = value
        return value


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
