"""``bench/guidance_sweep.py``'s own logic: the ``la:lh`` pairs it sweeps and its usage error."""

import sys

import pytest

from helpers.bench import bench_module

from stabledub_core.pipeline.options import DubOptions


@pytest.fixture(scope="module")
def sweep():
    yield from bench_module("guidance_sweep")


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
