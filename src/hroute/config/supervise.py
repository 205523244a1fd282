"""The `supervise:` block of a backend: how hroute runs, restarts and stops its server.

Validated at load like the rest of the configuration (`config.py` embeds `SuperviseSettings`
in `BackendConfig`). Checking that the executable exists reads the filesystem, nothing more:
nothing here starts a process.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

PositiveS = Annotated[float, Field(gt=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class RestartSettings(_Frozen):
    """Delay before an automatic restart: initial x multiplier^n, capped; reset by a healthy run."""

    backoff_initial_s: PositiveS = 1.0
    backoff_max_s: PositiveS = 60.0
    multiplier: float = Field(2.0, ge=1.0)
    reset_after_s: PositiveS = Field(
        120.0, description="healthy this long, and the next restart is immediate again"
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> RestartSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )
        return self


class StartLimitSettings(_Frozen):
    """More than `burst` starts within `interval_s` make the process fatal (systemd's StartLimit*)."""

    burst: int = Field(5, ge=1)
    interval_s: PositiveS = 300.0


class SuperviseSettings(_Frozen):
    """A local inference server that hroute starts, watches and restarts (or a systemd unit)."""

    mode: Literal["child", "systemd"] = "child"
    unit: str | None = Field(None, pattern=r"^[A-Za-z0-9@._:\\-]+$")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    # After env and cwd: the executable is looked up with them.
    command: list[str] | None = Field(None, min_length=1)
    startup_timeout_s: PositiveS = 600.0
    stop_timeout_s: PositiveS = 20.0
    restart: RestartSettings = RestartSettings()
    start_limit: StartLimitSettings = StartLimitSettings()
    hang_restart_after: int = Field(3, ge=1)

    @field_validator("cwd")
    @classmethod
    def _cwd_is_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"directory {str(value)!r} does not exist")
        return value

    @field_validator("command")
    @classmethod
    def _executable(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        env = info.data.get("env") or {}
        problem = executable_problem(
            value[0], info.data.get("cwd"), env.get("PATH", os.environ.get("PATH", ""))
        )
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> SuperviseSettings:
        if self.mode == "child" and self.command is None:
            raise ValueError("command is required with mode child (an argv list)")
        if self.mode == "systemd" and self.unit is None:
            raise ValueError("unit is required with mode systemd (e.g. llama-server.service)")
        return self


def executable_problem(program: str, cwd: Path | None, search_path: str) -> str | None:
    """Why `program` cannot be executed, in plain words; None when it can."""
    if not program:
        return "the executable (command.0) is empty"
    if "/" not in program:
        if shutil.which(program, path=search_path) is None:
            return f"executable {program!r} not found on PATH (give its absolute path)"
        return None
    path = Path(program)
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"executable {program!r} does not exist"
    except OSError as exc:
        return f"executable {program!r} cannot be read: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return f"executable {program!r} is a directory"
    if not os.access(path, os.X_OK):
        return f"{program!r} is not executable (mode {stat.filemode(mode)})"
    return None
