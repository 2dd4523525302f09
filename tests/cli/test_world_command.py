"""``python -m stabledub_core world``: synthetic clips with their metadata, one line per error."""

from __future__ import annotations

import json
import shutil

from stabledub_core.cli.main import main


def test_the_world_command_writes_clips_with_metadata(media_dir, tmp_path, capfd):
    speech = tmp_path / "speech"
    speech.mkdir()
    shutil.copy(media_dir / "speech_es.wav", speech / "es.wav")
    out = tmp_path / "world"
    assert main(["world", str(out), "--clips", "2", "--speech", str(speech), "--max-seconds", "1",
                 "--occluder-share", "0.5", "--size", "128"]) == 0
    assert "wrote 2 clips" in capfd.readouterr().out
    metadata = [json.loads((out / f"clip_0000{i}.json").read_text()) for i in range(2)]
    assert all((out / f"clip_0000{i}.mp4").stat().st_size > 0 for i in range(2))
    assert sum(m["occluder"] is not None for m in metadata) == 1
    assert main(["world", str(tmp_path / "w2"), "--clips", "1", "--speech", str(tmp_path / "none")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
