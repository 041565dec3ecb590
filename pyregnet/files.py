"""Writing files so that a failure or an interrupt never leaves a half-written one behind."""

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(dest, write):
    """Call write(fileobj) on a temporary file next to dest (binary mode), then rename it to dest.
    On any failure (KeyboardInterrupt included) the temporary file is removed and dest is
    untouched. Creates dest's folder."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
