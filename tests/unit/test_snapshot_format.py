"""The snapshot's layout (core/snapshot_format.py): what is written is what a reader finds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hroute.core.snapshot_format import SnapshotFile, encode

URLS = {"urls": {"https://x": "a"}, "url_models": {}}


def written(backends: dict) -> SnapshotFile:
    return SnapshotFile(encode({"pid": 7, "version": 3, "expires": 1e12}, backends, URLS))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.dictionaries(st.text(max_size=5), st.integers() | st.none(), max_size=3),
        max_size=8,
    )
)
def test_every_backend_reads_back_as_written(backends: dict) -> None:
    snap = written(backends)
    for name, entry in backends.items():
        assert name in snap and snap.backend(name) == entry
    assert sorted(snap.names()) == sorted(backends)
    assert snap.urls() == URLS and (snap.pid, snap.version) == (7, 3)


@pytest.mark.parametrize(
    "names",
    [["a", "ba", "xa"], ['a","b', "b"], ["a,", ",a"], ["ü", "u"], ['"', "\\"], ["a:[", "a"]],
)
def test_a_name_inside_another_is_not_mistaken_for_it(names: list[str]) -> None:
    backends = {n: {"i": i} for i, n in enumerate(names)}
    snap = written(backends)
    assert [snap.backend(n)["i"] for n in names] == list(range(len(names)))
    assert "missing" not in snap


def test_an_unknown_name_is_not_there() -> None:
    snap = written({"a": {}})
    assert "b" not in snap
    with pytest.raises(KeyError):
        snap.backend("b")


@pytest.mark.parametrize(
    "index",
    ['{"a":"x"}', '{"a":[-1,2]}', '{"a":[1]}', "[1]", '{"a":[0,2', '{"a":[0,99999]}'],
)
def test_a_broken_index_is_an_error_not_an_absence(index: str) -> None:
    head = b'{"v":3,"pid":1,"version":0,"expires":1e12,"urls":[2,2]}'
    snap = SnapshotFile(head + b"\n" + index.encode() + b"\n{}{}")
    with pytest.raises(ValueError):
        snap.backend("a")


@pytest.mark.parametrize(
    "raw",
    [b"", b"{}", b'{"v":3}\n{}', b'{"v":2,"expires":1,"urls":[0,2]}\n{}\n{}',
     b'{"v":3,"expires":NaN,"urls":[0,2]}\n{}\n{}', b'{"v":3,"expires":1,"urls":[0]}\n{}\n'],
)  # fmt: skip
def test_a_file_that_is_not_a_snapshot_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        SnapshotFile(raw)
