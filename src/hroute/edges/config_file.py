"""The configuration file: read safely, then handed to `config.model.load_config`.

Reading is I/O and stays here, so `config/` is values and parsing only and imports nothing
above it.
"""

from __future__ import annotations

from pathlib import Path

from hroute.config.model import Config, load_config
from hroute.core.errors import ConfigError
from hroute.edges.files import UnreadableFileError, read_regular_file

MAX_CONFIG_BYTES = 16 << 20  # 10,000 backends take about 1 MB


def read_config(path: str | Path) -> Config:
    """Read and validate the configuration file at `path` (a symlink to it is followed).

    Only a regular file of at most MAX_CONFIG_BYTES is read, opened non-blocking: a FIFO
    put in its place once hung the daemon's loop on a reload.
    """
    path = Path(path)
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(str(path), ["file not found"]) from exc
    except UnreadableFileError as exc:
        raise ConfigError(
            str(path), [f"cannot read: {str(exc).removeprefix(f'{path}: ')}"]
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from exc
    return load_config(text, source=str(path))
