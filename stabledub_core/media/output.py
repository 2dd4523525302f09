"""Output files: checked before any work, written under a hidden temporary name and renamed into place.

* :func:`check_output_path` refuses, before anything is decoded or loaded, an output that is one of the inputs (the
  same resolved path or the same inode, also through symbolic and hard links), a missing folder, a folder that
  cannot be written (probed by creating a file there, which also sees read-only mounts and root-squashed shares),
  a name that is a folder, and, given an estimate, a disk without room for it.
* :func:`partial_path` names a writer's temporary file ``.<stem>.<pid>-<random>.partial<suffix>`` beside the target;
  :func:`clean_stale_partials` deletes those left by runs that are no longer alive (SIGKILL, power loss) and
  :func:`remove_own_partials` those of this process (the last resort after an interruption).
* :func:`atomic_write` writes small files (reports) the same way; :func:`write_error` turns an ``OSError`` met while
  writing (disk full, permission denied, read-only file system) into one :class:`~stabledub_core.errors.OutputWriteError`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from stabledub_core.errors import OutputPathError, OutputWriteError

PARTIAL = "partial"
_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large for this file system"}


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links: same device and inode
    except OSError:
        return False


def check_output_path(path, option: str = "--out", inputs: dict[str, object] | None = None,
                      extensions: tuple[str, ...] | None = None, estimate_bytes: int = 0) -> Path:
    """Refuse an output path that would destroy an input or that cannot be written, before any work.

    Args:
        path: The output file.
        option: How the user named it (``--out``, ``--report``), for the messages.
        inputs: ``{option: path}`` of the input files (None values are skipped).
        extensions: Allowed suffixes (lower case, with the dot), or None for any.
        estimate_bytes: A rough size of the output; a folder with less free space is refused.

    Returns:
        The path as a ``Path``.

    Raises:
        OutputPathError: With what is wrong and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {str(path)!r} is a folder: give a file name in it")
    if extensions is not None and path.suffix.lower() not in extensions:
        raise OutputPathError(f"{option} {str(path)!r}: unsupported extension {path.suffix.lower()!r}; use one of "
                              f"{', '.join(extensions)}")
    for name, source in (inputs or {}).items():
        if source is not None and _same_file(path, Path(source)):
            raise OutputPathError(f"{option} {str(path)!r} is the same file as {name} {str(source)!r}: writing it "
                                  "would destroy the input; give another output name")
    folder = path.parent
    if not folder.exists():
        raise OutputPathError(f"{option} {str(path)!r}: the folder {str(folder)!r} does not exist: create it first")
    if not folder.is_dir():
        raise OutputPathError(f"{option} {str(path)!r}: {str(folder)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{option} {str(path)!r}: cannot write in the folder {str(folder)!r} "
                              f"({_reason(exc)}): choose a folder you can write to") from None
    check_free_space(path, estimate_bytes, option)
    return path


def check_free_space(path, estimate_bytes: int, option: str = "--out") -> None:
    """Refuse an output whose folder's disk has less free space than a rough estimate of its size.

    Raises:
        OutputPathError: Saying the free space and the estimate.
    """
    if estimate_bytes <= 0:
        return
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if free < estimate_bytes:
        raise OutputPathError(f"{option} {str(path)!r}: the folder's disk has {_size(free)} free but the output "
                              f"needs about {_size(estimate_bytes)}: free some space or choose another folder")


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _reason(exc: OSError) -> str:
    return _REASONS.get(exc.errno, exc.strerror or type(exc).__name__)


def write_error(exc: OSError, path, option: str = "output") -> OutputWriteError:
    """The one-line error for an ``OSError`` met while writing ``path`` (nothing is left behind by the caller)."""
    return OutputWriteError(f"cannot write {option} {str(path)!r}: {_reason(exc)}; nothing was written: free some "
                            "space, or choose a folder you can write to")


def partial_path(path) -> Path:
    """The hidden temporary file a writer of ``path`` writes to: ``.<stem>.<pid>-<random>.partial<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{PARTIAL}{path.suffix}")


def _partial_pattern(path: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(path.stem)}\.(?:(\d+)-)?[0-9a-f]{{8}}\.{PARTIAL}{re.escape(path.suffix)}$")


def partials(path) -> list[tuple[Path, int | None]]:
    """Temporary files of writers of ``path`` in its folder, with the pid that made each (None: an older name)."""
    path = Path(path)
    pattern = _partial_pattern(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        match = pattern.match(name)
        if match:
            found.append((path.parent / name, int(match.group(1)) if match.group(1) else None))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(path) -> tuple[list[Path], list[Path]]:
    """Delete the temporary files of ``path`` whose writing process is gone (killed runs).

    Returns:
        ``(removed, left)``: files deleted, and stale files that could not be deleted or whose writer is unknown
        (names without a pid, from older versions): report those.
    """
    removed, left = [], []
    for file, pid in partials(path):
        if pid is not None and (pid == os.getpid() or _alive(pid)):
            continue  # a run in progress (or this one)
        if pid is None:
            left.append(file)
            continue
        try:
            file.unlink()
            removed.append(file)
        except OSError:
            left.append(file)
    return removed, left


def remove_own_partials(path) -> None:
    """Delete this process's temporary files of ``path`` (never raises: it runs while another error is reported)."""
    for file, pid in partials(path):
        if pid == os.getpid():
            try:
                file.unlink()
            except OSError:
                pass


def atomic_write(path, data: bytes | str, option: str = "output") -> Path:
    """Write a small file atomically: a temporary file beside it, then a rename; nothing is left on failure.

    Raises:
        OutputWriteError: The disk is full, the folder not writable, ...
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(exc, path, option) from None
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path
