"""Output paths: refused before any work when they would destroy an input or cannot be written; temporary files of
killed runs; atomic small writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stabledub_core.errors import OutputPathError, OutputWriteError
from stabledub_core.media.output import (
    atomic_write,
    check_output_path,
    clean_stale_partials,
    partial_path,
    partials,
    remove_own_partials,
)


def test_an_output_that_is_an_input_is_refused_through_links(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video")
    os.symlink(video, tmp_path / "soft.mp4")
    os.link(video, tmp_path / "hard.mp4")
    for out in (video, tmp_path / "soft.mp4", tmp_path / "hard.mp4", tmp_path / "." / "v.mp4"):
        with pytest.raises(OutputPathError, match="same file as --video"):
            check_output_path(out, "--out", {"--video": video, "--audio": None})
    assert video.read_bytes() == b"video"
    other = tmp_path / "other.mp4"
    assert check_output_path(other, "--out", {"--video": video}) == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.mp4", "soft.mp4", "v.mp4"]  # the probe is gone


def test_folders_extensions_and_free_space(tmp_path):
    with pytest.raises(OutputPathError, match="does not exist: create it first"):
        check_output_path(tmp_path / "no" / "o.mp4")
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_path(tmp_path, "--out", extensions=(".mp4",))
    with pytest.raises(OutputPathError, match="unsupported extension '.avi'"):
        check_output_path(tmp_path / "o.avi", "--out", extensions=(".mp4",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is not a folder"):
        check_output_path(tmp_path / "file" / "o.mp4")
    with pytest.raises(OutputPathError, match="free but the output needs about"):
        check_output_path(tmp_path / "o.mp4", estimate_bytes=1 << 62)


def test_partials_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "my.clip.mp4"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f".my.clip.{dead}-0123abcd.partial.mp4"
    alive = tmp_path / f".my.clip.{os.getppid()}-0123abcd.partial.mp4"
    own = partial_path(out)
    unknown = tmp_path / ".my.clip.89abcdef.partial.mp4"
    unrelated = tmp_path / ".other.1-0123abcd.partial.mp4"
    for path in (stale, alive, own, unknown, unrelated):
        path.write_bytes(b"x")
    assert {p.name for p, _ in partials(out)} == {stale.name, alive.name, own.name, unknown.name}
    removed, left = clean_stale_partials(out)
    assert removed == [stale] and left == [unknown]
    remove_own_partials(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, unknown.name, unrelated.name])


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    target = tmp_path / "r.json"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(OutputWriteError, match="cannot write --report"):
        atomic_write(tmp_path / "missing" / "r.json", "x", "--report")


def test_estimated_frames_of_a_container_without_a_count(tmp_path):
    from helpers.media_factory import write_video
    from stabledub_core.media.video import VideoReader

    for name in ("v.mp4", "v.mkv"):
        with VideoReader(write_video(tmp_path / name, 25, size=(64, 96))) as reader:
            assert abs(reader.estimated_frames() - 25) <= 1, name  # MKV stores no count: from the duration
            assert reader.count_packets(2) == 2
