"""What is shown beside a backend's health, from outside health itself. Pure.

Plain-words notes (its key is not set, ...) and the view its supervisor gives of the process
it runs. Neither decides anything: they are only shown (`/v1/backends`, `hroute status`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any


class Annotations:
    """Notes and process views, by backend name; one owner: the registry."""

    def __init__(self) -> None:
        self._notes: dict[str, str] = {}
        self._process_views: dict[str, Callable[[], dict[str, Any]]] = {}

    def set_note(self, name: str, note: str | None) -> None:
        """A plain-words remark shown with the backend (e.g. its key is not set)."""
        if note:
            self._notes[name] = note
        else:
            self._notes.pop(name, None)

    def note(self, name: str) -> str | None:
        return self._notes.get(name)

    def set_process_view(self, name: str, view: Callable[[], dict[str, Any]] | None) -> None:
        """Show `view()` as the backend's `process` (its supervisor's state); None removes it."""
        if view is None:
            self._process_views.pop(name, None)
        else:
            self._process_views[name] = view

    def process_view(self, name: str) -> dict[str, Any] | None:
        view = self._process_views.get(name)
        return None if view is None else view()

    def keep(self, names: Collection[str]) -> None:
        """Forget the notes of backends no longer configured."""
        self._notes = {n: v for n, v in self._notes.items() if n in names}
