"""Writing a file so that a crash, a kill or a full disk never leaves half of it: a hidden temporary
file in the destination folder, renamed over the destination (``os.replace`` is atomic on one
file system). An existing file is replaced only when asked to.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from .errors import VISTA3DError

def write_atomically(path: Path, extension: str, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name keeps ``extension`` because the writers pick the format from it; it is
    created by the writer itself so that the file gets the usual permissions (umask).
    """
    if path.is_dir():
        raise VISTA3DError(
            f"Cannot write {path}: it is a folder. Give a file name, e.g. {path / ('labels' + extension)}."
        )
    if path.exists() and not overwrite:
        raise VISTA3DError(
            f"{path} already exists. Pass --overwrite (overwrite=True) to replace it, or choose another name."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VISTA3DError(
            f"Cannot create the folder {path.parent}: {error.strerror}. Choose a writable location."
        ) from None
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{extension}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):  # a full disk, a lost network drive, ITK failing
            raise VISTA3DError(
                f"Could not write {path}: {error}. Check the folder is writable and has free space."
            ) from error
        raise
    return path
