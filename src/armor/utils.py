"""Small shared helpers: atomic writes (nothing is ever half-written), JSON and TOML output."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, Path]
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def dump_toml(config: Any) -> str:
    """The configuration as TOML (``None`` values are left out: absent means default)."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    lines = ["# armor train configuration (resolved); rerun with: armor train --config config.toml"]
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"config {key} = {value} cannot be written to TOML")
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a JSON string is a valid TOML basic string
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _json_default(o: Any) -> Any:
    try:
        import torch

        if torch.is_tensor(o):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
