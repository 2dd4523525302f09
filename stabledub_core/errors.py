"""Errors raised for bad input anywhere in the core.

Every error a user can cause (a missing file, a file that is not a video, a checkpoint of the wrong preset, ...)
is a :class:`StableDubError`. The message is one line that says what is wrong and what to do; the CLI prints it
as is and exits with a non-zero status. Each class also derives from the matching built-in exception
(``ValueError`` or ``FileNotFoundError``) so that callers that do not know this module can still catch it.
"""

from __future__ import annotations


class StableDubError(Exception):
    """Base class of every user-facing error of StableDub."""


class InputFileNotFoundError(StableDubError, FileNotFoundError):
    """An input path does not exist or is not a file."""


class MediaError(StableDubError, ValueError):
    """A media file cannot be used (not decodable, wrong kind of streams, too short, ...)."""


class NotAMediaFileError(MediaError):
    """The file is not a container/codec that FFmpeg (PyAV) can read."""


class NoVideoStreamError(MediaError):
    """A video was expected but the file has no video stream (e.g. an audio-only file given as --video)."""


class NoAudioStreamError(MediaError):
    """Audio was expected but the file has no audio stream."""


class EmptyMediaError(MediaError):
    """The stream decodes to nothing (an empty WAV) or is too short to be dubbed (a single frame)."""


class NoFaceError(StableDubError, ValueError):
    """No face was found in the video."""


class CheckpointError(StableDubError, ValueError):
    """A checkpoint cannot be loaded (wrong preset, pickle, wrong names or shapes)."""


class OptionError(StableDubError, ValueError):
    """An option value is invalid (e.g. an unknown scheduler or length policy)."""


def require_file(path, what: str):
    """Return ``path`` as a :class:`pathlib.Path` if it is an existing file.

    Args:
        path: The path to check.
        what: What the file is for, used in the message (e.g. ``"video"``).

    Returns:
        The path as a ``Path``.

    Raises:
        InputFileNotFoundError: If ``path`` does not exist or is a directory.
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        reason = "is a directory" if p.is_dir() else "does not exist"
        raise InputFileNotFoundError(f"{what} file {str(p)!r} {reason}: check the path")
    return p
