"""``bench/guidance_sweep.py``'s own logic: the ``la:lh`` pairs it sweeps and its usage error."""

import importlib.util
import sys
from pathlib import Path

import pytest

from stabledub_core.pipeline.options import DubOptions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("bench_guidance_sweep", REPO / "bench" / "guidance_sweep.py")
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
        sys.path[:] = saved_path


def test_a_bare_audio_scale_keeps_the_default_habit_scale(sweep):
    default = DubOptions().sampling.habit_scale
    assert sweep.parse_pairs("1:0,2,1.5:2.5,") == [(1.0, 0.0), (2.0, default), (1.5, 2.5)]


def test_a_missing_corpus_is_a_usage_error_before_any_work(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["guidance_sweep.py", "--corpus", str(tmp_path / "nowhere"),
                                      "--work", str(tmp_path / "work")])
    with pytest.raises(SystemExit) as stop:
        sweep.main()
    assert stop.value.code == 2
    assert "--corpus" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
