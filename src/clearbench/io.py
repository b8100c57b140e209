"""Atomic artifact writes: a temporary file in the same folder, renamed over the final path only
once it is complete, so a crash (even SIGKILL) never leaves a half-written file that looks
finished. A killed process may leave a hidden `.<name>.*.tmp<suffix>` file; nothing reads those.
"""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that infer the format from
    it still work); rename it onto `path` on success, remove it if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ArtifactError(ValueError):
    """A missing or unreadable artifact; the one-line message names the file."""


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def read_parquet(path: str | Path):
    """pandas.read_parquet, or ArtifactError naming the file (missing, truncated, not Parquet)."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid, ... for a corrupt file
        raise ArtifactError(f"cannot read {path}: {first_line(err)}") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj) -> None:
    """Indented JSON with a final newline; NaN is refused (it is not JSON)."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
