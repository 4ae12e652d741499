"""Every file mygpt writes goes through here: atomic, durable, umask-respecting, one-line errors.

``atomic_write(path, writer)`` calls ``writer(f)`` with a binary file object on a temporary file
in ``path``'s directory, fsyncs it, and renames it over ``path``. So whatever goes wrong (a full
disk part-way, a read-only mount, Ctrl-C, SIGKILL) a reader sees either the previous file, bit for
bit, or the complete new one, never a mix; and no temporary file is left behind:

- On Linux the temporary file is an unnamed ``O_TMPFILE`` inode: a killed process leaves nothing
  (the kernel frees it); it gets a name only for the instant between ``linkat`` and ``rename``.
  Where the filesystem has no ``O_TMPFILE`` a named ``.NAME.PID.tmp`` is used, removed on every
  failure we see, and a stale one a killed process left is removed by the next write to ``path``.
- A new file gets ``0o666 & ~umask``, as ``open()`` and ``torch.save`` give; replacing an existing
  file keeps that file's mode, as writing into it would.
- Every ``OSError`` becomes a :class:`MygptError` naming the path, what is wrong and what to do.

``atomic_directory(path)`` does the same for a directory of files (``mygpt export``'s Hugging
Face directory): the old directory or the complete new one, swapped in as a whole.

Policy for output paths (every command that writes): a missing output *directory* is refused
before any work is done (``check_output_path``, ``check_output_dir``): it is usually a typo, and
creating it silently would hide that. A read-only file in the way is refused too, rather than silently replaced. Cache
directories (``~/.cache/mygpt``, ``--cache-dir``) are mygpt's own and are created.

All writes go through ``os.write`` and ``os.fsync`` looked up at call time, so tests can inject
faults (``tests/faults.py``) where they cannot make a real small filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mygpt.errors import MygptError

_TMP_SUFFIX = ".tmp"


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output whose directory is missing or read-only, that is a
    directory, or that is a read-only file. Returns the path."""
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise MygptError(
            f"the directory of {what} {path} does not exist — create it first "
            f"(mkdir -p {parent}) or pass another path"
        )
    if not parent.is_dir():
        raise MygptError(
            f"{parent} (the directory of {what} {path}) is not a directory — pass another path"
        )
    if path.is_dir():
        raise MygptError(f"{what} {path} is a directory — pass a file path")
    if path.exists() and not os.stat(path).st_mode & 0o222:
        # root may write anyway; a file someone marked read-only is kept, not silently replaced
        raise MygptError(
            f"{what} {path} is read-only — make it writable (chmod u+w {path}) or pass another path"
        )
    if not os.access(parent, os.W_OK):
        err = errno.EROFS if _read_only_fs(parent) else errno.EACCES
        raise write_error(OSError(err, os.strerror(err)), path, existed=path.exists())
    return path


def _read_only_fs(d: Path) -> bool:
    try:
        return bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_error(e: OSError, path: str | os.PathLike, *, existed: bool | None = None) -> MygptError:
    """A one-line ``what is wrong — what to do`` for an OSError met while writing ``path``."""
    path = Path(path)
    d = path.parent
    if existed is None:
        existed = path.exists()
    kept = f"the previous {path.name} is unchanged" if existed else f"{path.name} was not written"
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = "no space left" if code != errno.EDQUOT else "disk quota exceeded"
        if code == errno.EFBIG:
            what = "file too large for its filesystem"
        return MygptError(
            f"{what} writing {path} ({kept}) — free space on that disk or write to another one"
        )
    if code == errno.EROFS:
        return MygptError(
            f"{d} is on a read-only filesystem, can't write {path} ({kept}) — pass a path on a "
            "writable disk"
        )
    if code in (errno.EACCES, errno.EPERM):
        return MygptError(
            f"permission denied writing {path} ({kept}) — make {d} writable for you or pass "
            "another path"
        )
    if code == errno.ENOENT:
        return MygptError(
            f"the directory {d} does not exist, can't write {path} — create it (mkdir -p {d}) or "
            "pass another path"
        )
    if code == errno.ENOTDIR:
        return MygptError(f"a part of {d} is not a directory, can't write {path} — fix the path")
    if code == errno.EISDIR:
        return MygptError(f"{path} is a directory — pass a file path")
    return MygptError(
        f"could not write {path}: {e.strerror or e} ({kept}) — check the disk and the path"
    )


class _FdWriter(io.RawIOBase):
    """A raw binary file over ``fd`` whose writes go through ``os.write`` (looked up per call)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return os.write(self._fd, b)

    def fileno(self) -> int:
        return self._fd

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def close(self) -> None:  # the fd is closed by atomic_write, exactly once
        super().close()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")


def _sweep_stale(path: Path) -> None:
    """Remove ``.NAME.PID.tmp`` files that killed mygpt processes left beside ``path``."""
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
                continue
            pid = name[len(prefix) : -len(_TMP_SUFFIX)]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from an earlier failed write in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_temp(path: Path) -> tuple[int, Path | None]:
    """An fd for the new contents, and its temporary name (None while it is unnamed)."""
    fd = _open_unnamed(path.parent)
    if fd is not None:
        return fd, None
    tmp = _temp_name(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    return os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
    ), tmp


def _publish(fd: int, tmp: Path | None, path: Path) -> Path:
    """Give the finished temp file ``path``'s name atomically; returns the name it had."""
    if tmp is None:
        tmp = _temp_name(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:  # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names an O_TMPFILE inode
            os.link(f"/proc/self/fd/{fd}", tmp.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
    os.replace(tmp, path)
    return tmp


def _fsync_dir(d: Path) -> None:
    # the rename is durable only once the directory entry is on disk; some filesystems refuse
    with contextlib.suppress(OSError):
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(
    path: str | os.PathLike,
    writer: Callable[[BinaryIO], object],
    what: str = "output",
    *,
    before_publish: Callable[[], None] | None = None,
) -> Path:
    """Write ``path`` atomically with ``writer(f)`` (``f`` a binary file); see the module doc.

    ``before_publish`` runs once the new contents are complete and on disk, just before the
    rename: e.g. removing a sidecar that describes the old file, so that a failure earlier keeps
    the old pair intact.

    Any ``OSError`` (from the OS or from ``writer``) becomes a one-line :class:`MygptError`; any
    other exception propagates; in every case ``path`` keeps its previous contents and no
    temporary file remains.
    """
    path = check_output_path(path, what)
    existed = path.exists()
    _sweep_stale(path)
    tmp: Path | None = None
    fd = -1
    try:
        fd, tmp = _open_temp(path)
        if existed:
            os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
        with io.BufferedWriter(_FdWriter(fd), buffer_size=1 << 20) as f:
            writer(f)
            f.flush()
            os.fsync(fd)
            if before_publish is not None:
                before_publish()
            tmp = _publish(fd, tmp, path)
            tmp = None  # renamed: nothing left to clean up
    except OSError as e:
        raise write_error(e, path, existed=existed) from None
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "output") -> Path:
    return atomic_write(path, lambda f: f.write(data), what)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse, before any work, an output directory whose parent is missing or read-only, that is
    a file, or that someone marked read-only. Returns the path (a link to a directory resolved:
    the directory it names is what gets replaced, not the link)."""
    path = Path(path)
    if path.name in ("", ".."):  # "." or "..": the directory by its name in its parent
        path = Path(os.path.abspath(path))
    parent = path.parent
    if not parent.exists():
        raise MygptError(
            f"the directory of {what} {path} does not exist — create it first "
            f"(mkdir -p {parent}) or pass another path"
        )
    if not parent.is_dir():
        raise MygptError(
            f"{parent} (the directory of {what} {path}) is not a directory — pass another path"
        )
    if path.exists() and not path.is_dir():
        raise MygptError(f"{what} {path} is a file — pass a directory path")
    if path.is_dir() and not os.stat(path).st_mode & 0o222:
        raise MygptError(
            f"{what} {path} is read-only — make it writable (chmod u+w {path}) or pass another path"
        )
    if path.is_symlink():
        path = path.resolve()
        parent = path.parent
    if not os.access(parent, os.W_OK):
        err = errno.EROFS if _read_only_fs(parent) else errno.EACCES
        raise write_error(OSError(err, os.strerror(err)), path, existed=path.exists())
    return path


class NewDirectory:
    """The files of a directory being built by :func:`atomic_directory`.

    Each file is written to an unnamed ``O_TMPFILE`` inode in the target's parent directory (a
    named file in a temporary directory where there is none) and kept open; the directory gets
    its files' names only when it is complete, just before it is swapped in.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fds: dict[str, int] = {}
        self._named: Path | None = None  # the temporary directory, where O_TMPFILE is missing

    def write(self, name: str, writer: Callable[[BinaryIO], object]) -> None:
        """Write the file ``name`` (no directories) with ``writer(f)``, ``f`` a binary file."""
        if not name or "/" in name or name in (".", "..") or name in self._fds:
            raise ValueError(f"bad or repeated file name {name!r}")
        fd = _open_unnamed(self.path.parent) if self._named is None else None
        if fd is None:
            if self._named is None:
                self._named = _temp_name(self.path)
                shutil.rmtree(self._named, ignore_errors=True)
                os.mkdir(self._named)
            fd = os.open(self._named / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._fds[name] = fd
        with io.BufferedWriter(_FdWriter(fd), buffer_size=1 << 20) as f:
            writer(f)
            f.flush()
            os.fsync(fd)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write(name, lambda f: f.write(data))

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def _assemble(self, mode: int | None) -> Path:
        """Name every file in the temporary directory; returns that directory."""
        tmp = self._named
        if tmp is None:
            tmp = self._named = _temp_name(self.path)
            shutil.rmtree(tmp, ignore_errors=True)
            os.mkdir(tmp)
            dfd = os.open(tmp, os.O_RDONLY)
            try:  # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names an O_TMPFILE inode
                for name, fd in self._fds.items():
                    os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
        if mode is not None:
            os.chmod(tmp, mode)
        _fsync_dir(tmp)
        return tmp

    def _close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def _open_unnamed(d: Path) -> int | None:
    """An ``O_TMPFILE`` fd in directory ``d``, or None where the filesystem has none."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not Path("/proc/self/fd").is_dir():
        return None
    try:  # mode 0o666: the kernel applies the umask, as open() does
        return os.open(d, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            raise
        return None


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, what: str = "output directory"
) -> Iterator[NewDirectory]:
    """Build a directory with the yielded :class:`NewDirectory` (``d.write_text(name, ...)``);
    on success it replaces ``path`` as a whole: a reader sees the old directory or the complete
    new one, never a mix, and files of the old one that were not written again are gone with it.

    An existing ``path`` is swapped in one ``renameat2(RENAME_EXCHANGE)`` where the kernel and
    filesystem have it (else: moved aside, the new one renamed in, the old one removed); it keeps
    the old directory's mode. On any failure (a full disk, Ctrl-C, an exception in the body)
    nothing is left and ``path`` is untouched; a SIGKILL while files are being written leaves
    nothing either (they are unnamed until the end); one in the instant of the swap can leave a
    ``.NAME.PID.tmp`` directory, removed by the next write to ``path``. An ``OSError`` becomes a
    one-line :class:`MygptError` naming ``path``.
    """
    path = check_output_dir(path, what)
    parent = path.parent
    _sweep_stale_dirs(path)
    existed = path.exists()
    d = NewDirectory(path)
    leftover: Path | None = None
    try:
        yield d
        tmp = leftover = d._assemble(stat.S_IMODE(os.stat(path).st_mode) if existed else None)
        d._close()
        if not existed:
            os.rename(tmp, path)
            leftover = None
        elif not _exchange(tmp, path):
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.rename(path, old)
            os.rename(tmp, path)
            leftover = old
        _fsync_dir(parent)
    except OSError as e:
        raise write_error(e, path, existed=existed) from None
    finally:
        d._close()
        for p in (leftover, d._named):
            if p is not None and p != path:
                shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code))


def _sweep_stale_dirs(path: Path) -> None:
    """Remove temporary or set-aside directories that killed processes left beside ``path``."""
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            for suffix in (_TMP_SUFFIX, ".old"):
                if name.startswith(prefix) and name.endswith(suffix) and entry.is_dir():
                    pid = name[len(prefix) : -len(suffix)]
                    if pid.isdigit() and not _alive(int(pid)):
                        shutil.rmtree(entry.path, ignore_errors=True)
