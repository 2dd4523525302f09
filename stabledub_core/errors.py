"""The error hierarchy: every error a user can cause is a :class:`StableDubError`.

A user error is a missing file, a file that is not a video, a checkpoint of the wrong preset, an option out of range,
or an array/tensor of the wrong shape handed to a stage (e.g. a MASK of another size wired into a node). The message
is one line that says what is wrong and what to do; the CLI prints it as is and exits with status 2. Anything else
(a ``ValueError`` or ``RuntimeError`` that is not a :class:`StableDubError`) is a bug and keeps its traceback.

Where the classes live: ALL user-facing error classes are defined here, in this one module, one class per meaning;
the modules that raise them import them from here (and so also re-export them, e.g.
``stabledub_core.masks.exposure.ExposureError`` is this module's class). ``tests/test_errors.py`` checks that every
exception class defined anywhere in ``stabledub_core`` is a :class:`StableDubError` but for a short allow-list of
internal ones (``runtime.Interrupted``, which is a stop request and not an error; ``KernelBuildError`` in
``ops/selective_scan_cpu.py``, a failed build of the compiled CPU kernel that is logged and falls back to the
PyTorch scan, so no user ever sees it).

Each class also derives from the matching built-in exception (``ValueError`` or ``FileNotFoundError``) so that
callers that do not know this module can still catch it. The tree::

    StableDubError
    +-- InputFileNotFoundError (FileNotFoundError)   a path does not exist
    |   +-- FaceModelNotFoundError                   the MediaPipe face_landmarker.task (missing or not a bundle)
    |   +-- HabitFileNotFoundError                   a saved habit vector
    |   +-- WeightsNotFoundError                     SD 1.5 / VAE / wav2vec2 / weight files and folders
    |   +-- DatasetNotFoundError                     a training video folder (missing, or no video in it)
    +-- MediaError (ValueError)                      a media file cannot be used
    |   +-- NotAMediaFileError, NoVideoStreamError, NoAudioStreamError, EmptyMediaError
    |   +-- NonFiniteSamplesError                    speech samples that are NaN or infinite
    +-- NoFaceError (ValueError)                     no (usable) face in the frames that need one
    |   +-- MissingLandmarksError                    frames without landmarks where landmarks are needed
    |   +-- NoReferenceFrameError                    no frame qualifies as the appearance reference
    +-- CheckpointError (ValueError)                 a checkpoint or weight file cannot be loaded
    |   +-- PickleRefusedError                       a pickle file where safetensors are required
    |   +-- VAEWeightsError                          VAE weights that do not fit the configured VAE
    |   +-- NonFiniteWeightsError                    a weight tensor holding NaN or infinite values
    +-- OutputError (ValueError)                     an output file cannot be written
    |   +-- OutputPathError                          refused before any work: the input itself, no folder, ...
    |   +-- OutputWriteError                         writing failed: disk full, permission denied, read-only
    +-- NumericalError (ValueError)                  latents or decoded frames became NaN or infinite
    +-- InvalidInputError (ValueError)               a value handed to a function or stage is invalid
        +-- OptionError                              an option/setting (a name or a number) is out of range
        |   +-- ModelConfigError                     a model configuration is inconsistent
        +-- FrameFormatError                         frames are not (H, W, 3) uint8 RGB of one size
        +-- TrackError                               landmarks, statuses and frame times that do not fit together
        +-- LandmarkShapeError                       landmarks are not (..., 478, 2)
        +-- CropBoxError                             a crop box that is empty
        +-- CropSpanError                            crop spans that cannot be planned (masks)
        +-- ExposureError                            exposed patches, occluder masks, exposure schedules
        +-- SelectiveScanInputError, CausalConvInputError            tensors given to an op (ops)
        +-- MambaInputError, UNetInputError, HabitInputError, VAEInputError,
        |   AudioEncoderError, AudioContextError                     tensors given to a model (models)
        +-- GuidanceError, ConditionError, SamplerError, SamplerWindowError,
        |   CompositeError                                           inputs of a pipeline stage (pipeline)
        +-- ManifestError                            a preprocessing folder made with other settings (train)
"""

from __future__ import annotations

from pathlib import Path


class StableDubError(Exception):
    """Base class of every user-facing error of StableDub."""


# --- files that are missing ---------------------------------------------------------------------------------------

class InputFileNotFoundError(StableDubError, FileNotFoundError):
    """An input path does not exist or is not a file."""


class FaceModelNotFoundError(InputFileNotFoundError):
    """The MediaPipe face landmarker model file is missing (or is not a face landmarker bundle)."""


class HabitFileNotFoundError(InputFileNotFoundError):
    """A saved habit vector is missing."""


class WeightsNotFoundError(InputFileNotFoundError):
    """A weight file or model folder (SD 1.5, its VAE, wav2vec2, a safetensors file) is missing."""


class DatasetNotFoundError(InputFileNotFoundError):
    """A training video folder is missing or holds no video file (train preprocess)."""


# --- media files --------------------------------------------------------------------------------------------------

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


class NonFiniteSamplesError(MediaError):
    """An audio track holds NaN or infinite samples (a broken float WAV)."""


# --- faces --------------------------------------------------------------------------------------------------------

class NoFaceError(StableDubError, ValueError):
    """No face was found in the video."""


class MissingLandmarksError(NoFaceError):
    """Frames that need landmarks (e.g. the lip-habit segment) have none (the face is MISSING there)."""


class NoReferenceFrameError(NoFaceError):
    """No frame qualifies as the appearance reference (all frames MISSING or excluded)."""


# --- checkpoints and weights --------------------------------------------------------------------------------------

class CheckpointError(StableDubError, ValueError):
    """A checkpoint or weight file cannot be used (wrong preset, not safetensors, wrong names or shapes)."""


class PickleRefusedError(CheckpointError):
    """A pickle-based file was given where a safetensors file is required."""


class VAEWeightsError(CheckpointError):
    """VAE weights do not fit the configured VAE."""


class NonFiniteWeightsError(CheckpointError):
    """A weight tensor holds NaN or infinite values (a corrupt file or a diverged training run)."""


# --- outputs ------------------------------------------------------------------------------------------------------

class OutputError(StableDubError, ValueError):
    """An output file (video, report, habit, preview) cannot be written."""


class OutputPathError(OutputError):
    """An output path refused before any work: it is an input file, its folder is missing or not writable, its
    extension is not a known container."""


class OutputWriteError(OutputError):
    """Writing an output failed (disk full, permission denied, read-only file system); nothing was left behind."""


# --- numbers ------------------------------------------------------------------------------------------------------

class NumericalError(StableDubError, ValueError):
    """Latents or decoded frames became NaN or infinite during a dub: the output would be garbage."""


# --- invalid values handed to a function or stage -----------------------------------------------------------------

class InvalidInputError(StableDubError, ValueError):
    """A value handed to a function or stage is invalid: an option out of range, an array of the wrong shape."""


class OptionError(InvalidInputError):
    """An option value is invalid (e.g. an unknown scheduler or length policy, a negative count)."""


class ModelConfigError(OptionError):
    """A model configuration is inconsistent (e.g. a width that the number of heads does not divide)."""


class FrameFormatError(InvalidInputError):
    """A frame is not an (H, W, 3) uint8 RGB array, or the frames of one stream change size."""


class TrackError(InvalidInputError):
    """Landmarks, statuses and frame times of a face track do not fit together (counts, order, chunks)."""


class LandmarkShapeError(InvalidInputError):
    """Landmarks do not have the (..., 478, 2) layout of the MediaPipe Face Landmarker."""


class CropBoxError(InvalidInputError):
    """A crop box is empty (x1 <= x0)."""


class CropSpanError(InvalidInputError):
    """Crop-span parameters or tracks that cannot be planned (masks.crop_spans)."""


class ExposureError(InvalidInputError):
    """Invalid exposed-patch lists, grids, occluder masks or exposure-schedule settings."""


class SelectiveScanInputError(InvalidInputError):
    """The tensors given to the selective scan have inconsistent shapes or unsupported dtypes."""


class CausalConvInputError(InvalidInputError):
    """The tensors given to the causal conv1d have inconsistent shapes."""


class MambaInputError(InvalidInputError):
    """The input of a Mamba mixer has the wrong shape."""


class UNetInputError(InvalidInputError):
    """A U-Net input has the wrong shape."""


class HabitInputError(InvalidInputError):
    """Tensors given to the lip-habit modulation have the wrong shape."""


class VAEInputError(InvalidInputError):
    """Frames or latents given to the VAE have the wrong shape."""


class AudioEncoderError(InvalidInputError):
    """Bad audio encoder input (waveform shape, dtype, length) or configuration."""


class AudioContextError(InvalidInputError):
    """Invalid arguments to the per-frame audio context (models.audio_context.frame_audio_context)."""


class GuidanceError(InvalidInputError):
    """Invalid guidance scales or branch predictions."""


class ConditionError(InvalidInputError):
    """Invalid condition inputs (reference frame, lip crops, habit vector, audio context)."""


class SamplerError(InvalidInputError):
    """Inconsistent sampler inputs."""


class SamplerWindowError(InvalidInputError):
    """Invalid sampler window or chunk parameters (pipeline.windows)."""


class CompositeError(InvalidInputError):
    """Frames, crops, boxes or masks whose shapes do not fit together when compositing."""


class ManifestError(InvalidInputError):
    """A preprocessing output folder whose manifest is unreadable or was made with other settings (train)."""


def require_file(path, what: str) -> Path:
    """Return ``path`` as a :class:`pathlib.Path` if it is an existing file.

    Args:
        path: The path to check.
        what: What the file is for, used in the message (e.g. ``"video"``).

    Returns:
        The path as a ``Path``.

    Raises:
        InputFileNotFoundError: If ``path`` does not exist or is a directory.
    """
    p = Path(path)
    if not p.is_file():
        reason = "is a directory" if p.is_dir() else "does not exist"
        raise InputFileNotFoundError(f"{what} file {str(p)!r} {reason}: check the path")
    return p
