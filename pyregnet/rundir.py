"""Run and sweep directories: one writer at a time, and nothing left behind that blocks a rerun.

A directory being written holds a lock file, ``.lock``, locked with flock(2): the kernel drops
the lock when the process ends, however it ends (SIGKILL included), so a stale lock cannot
outlive its writer. The file holds the writer's pid, for the message a second writer gets.
"""

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"
PART_GLOB = ".*.part"  # files.atomic_write's temporary files


class RunDirError(Exception):
    """A directory that cannot be used: one line for the user (exit code 2)."""


def check_writable_dir(path, flag):
    """Refuses, before any work starts, a `path` that is a file, lies below a file, or whose
    nearest existing folder cannot be written."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            raise RunDirError(f"{flag}: {probe} is a broken symbolic link; expected a directory: choose another {flag}")
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == path else f"is below {probe}, which is a file"
        raise RunDirError(f"{flag}: {path} {where}; expected a directory (or a path where one can be made): "
                          f"choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{flag}: {probe} is not writable by this user; expected a directory it can write "
                          f"in: choose another {flag} or change the permissions")


def _made_dirs(path):
    """The folders that mkdir(parents=True) would create, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _holder(path):
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text().split()[0])
    return None


def _acquire(lock_path, flag, directory):
    """An fd holding an exclusive flock on lock_path. A holder that removes the file while we
    wait for it leaves us a lock on a deleted inode: check that the path still names our
    file, and retry when it does not."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder(lock_path)
            who = f"another process (pid {pid})" if pid else "another process"
            other = f" or choose another {flag}" if flag.startswith("--") else ""
            raise RunDirError(f"{flag}: {directory} is being written by {who}; wait for it to finish{other}") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Locked:
    """An open, locked directory (see locked()). discard(names) removes those files of this
    writer's, and on release a folder that locked() created and that holds nothing else is
    removed too."""

    def __init__(self, path, fd, created):
        self.path, self._fd, self._created = path, fd, created
        self.writing = False  # set by the writer once the files there are its own

    def remove_stale_parts(self):
        """Temporary files of writers that were killed: no one else writes here."""
        for part in self.path.glob(PART_GLOB):
            with contextlib.suppress(OSError):
                part.unlink()

    def discard(self, names):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self.remove_stale_parts()

    def release(self):
        if self._fd is None:
            return
        lock_path = self.path / LOCK_NAME
        try:
            if self._created and {p.name for p in self.path.iterdir()} == {LOCK_NAME}:
                lock_path.unlink()  # while still locked: see _acquire
                for d in reversed(self._created):
                    with contextlib.suppress(OSError):
                        d.rmdir()
        finally:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked(path, flag, create=True):
    """Locks directory `path` for writing (creating it when `create`) for the duration of the
    block; RunDirError when it cannot be used or another process holds it. `flag` names the
    argument for messages (--out)."""
    path = Path(path)
    if create:
        check_writable_dir(path, flag)
    elif not path.is_dir():
        raise RunDirError(f"{path} is not a directory")
    created = _made_dirs(path.absolute())
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path / LOCK_NAME, flag, path)
    except OSError as e:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        fix = f"choose another {flag}" if flag.startswith("--") else "make it writable"
        raise RunDirError(f"{flag}: cannot write in {path} ({e.strerror or e}); {fix}") from None
    lock = Locked(path, fd, created)
    try:
        yield lock
    finally:
        lock.release()
