"""``bench/quality.py``'s own logic: which rows a headline compares, its figures, the targets, bad folders."""

import json
import math

import pytest

from helpers.bench import bench_module


@pytest.fixture(scope="module")
def quality():
    yield from bench_module("quality")


def _row(**mean):
    base = {"sync_correlation": 0.5, "opening_error": 0.1, "habit_error": 0.4, "flicker": 10.0,
            "outside_mask_identical": True, "psnr": 18.0, "ssim": 0.6, "occluder_psnr": 28.0}
    return {"mean": {**base, **mean}, "clips": []}


def test_a_headline_compares_the_shipped_recipes_ablation_with_the_shipped_model(quality):
    rows = {"ours": _row(), "ours, occluder not exposed": _row(occluder_psnr=12.5),
            "w/o mask exposure": _row(occluder_psnr=13.0),
            "w/o habit modulation": _row(habit_error=0.5),
            "w/o temporal Mamba": _row(flicker=15.0),
            quality.FULL_EPSILON: _row(habit_error=0.9, flicker=1.0, occluder_psnr=1.0),
            "w/o habit modulation, epsilon recipe": _row(habit_error=0.1),
            "w/o temporal Mamba, epsilon recipe": _row(flicker=100.0),
            "w/o mask exposure, occluder exposed, epsilon recipe": _row(occluder_psnr=0.5),
            quality.CEILING: _row(sync_correlation=0.46, habit_error=0.45), quality.TRUTH: _row(habit_error=0.1),
            quality.BLIND_TRUTH: _row(habit_error=0.4), quality.BLIND_CEILING: _row(habit_error=0.5)}
    values = quality.headline(rows, {"mean": {"transfer_gain": 0.01}},
                              {"mean": {"reference_transfer_gain": -0.05, "reference_and_habit_transfer_gain": 0.02}})
    assert values["headline_rows"]["habit"] == ["w/o habit modulation", "ours"]
    assert values["habit_error_reduction"] == pytest.approx(1 - 0.4 / 0.5)
    assert values["occluder_psnr_gain_db"] == pytest.approx(28.0 - 13.0)
    assert values["flicker_ratio_without_temporal"] == pytest.approx(15.0 / 10.0)
    # with no shipped-recipe row the epsilon family's is used, against the epsilon family's full model
    assert values["headline_rows"]["exposure_training"] == ["w/o mask exposure, occluder exposed, epsilon recipe",
                                                            quality.FULL_EPSILON]
    assert values["occluder_psnr_gain_from_training_db"] == pytest.approx(1.0 - 0.5)
    assert values["sync_correlation_truth_through_vae"] == 0.46 and values["habit_transfer_gain"] == 0.01
    assert values["occluder_psnr_not_exposed_db"] == 12.5
    # what knowing the habit is worth at best: the truth against the habit-blind truth, straight and through the VAE
    assert values["habit_error_reduction_ideal"] == pytest.approx(1 - 0.1 / 0.4)
    assert values["habit_error_reduction_ceiling"] == pytest.approx(1 - 0.45 / 0.5)
    assert values["reference_transfer_gain"] == -0.05 and values["reference_and_habit_transfer_gain"] == 0.02


def test_a_missing_ablation_leaves_its_headline_nan_and_unmet(quality):
    values = quality.headline({"ours": _row()}, None)
    assert math.isnan(values["habit_error_reduction"]) and math.isnan(values["flicker_ratio_without_temporal"])
    targets = quality.check_targets(values)
    assert targets["habit_error_reduction"]["met"] is False
    assert targets["sync_correlation"] == {"target": ">= 0.8", "value": 0.5, "met": False}
    assert targets["outside_mask_identical"]["met"] is True
    clean = quality._clean({"targets": targets, "_frames": {1: 2}, "x": [math.inf, 0.123456]})
    assert clean["targets"]["habit_error_reduction"]["value"] == "nan" and clean["x"] == ["inf", 0.1235]
    assert "_frames" not in clean
    json.dumps(clean, allow_nan=False)


def test_the_targets_are_met_at_their_thresholds(quality):
    values = {"sync_correlation": 0.8, "habit_error_reduction": 0.3, "occluder_psnr_gain_db": 3.0,
              "flicker_ratio_without_temporal": 1.01, "outside_mask_identical": True}
    assert all(check["met"] for check in quality.check_targets(values).values())
    values["flicker_ratio_without_temporal"] = 1.0  # equal flicker: the temporal layers did not lower it
    assert quality.check_targets(values)["flicker_ratio_without_temporal"]["met"] is False


def test_the_markdown_table_lists_every_row_and_headline(quality):
    rows = {"ours": _row(), "w/o temporal Mamba": _row(flicker=15.0)}
    values = quality.headline(rows, None)
    results = quality._clean({**values, "targets": quality.check_targets(values), "rows": rows})
    table = quality.markdown(results)
    assert "| ours | 0.500 |" in table and "| w/o temporal Mamba |" in table
    assert "| flicker_ratio_without_temporal | 1.500 | > 1.0 | yes |" in table
    assert "| sync_correlation | 0.500 | >= 0.8 | NO |" in table


@pytest.mark.parametrize("case", ["no_speech_folder", "empty_speech_folder", "small_corpus", "no_corpus"])
def test_bad_folders_are_usage_errors_before_any_work(quality, tmp_path, capsys, case):
    corpus, speech, work = tmp_path / "corpus", tmp_path / "speech", tmp_path / "work"
    corpus.mkdir()
    for i in range(3 if case == "small_corpus" else quality.HELD_OUT_FIRST + 1):
        (corpus / f"utt_{i:03d}.wav").write_bytes(b"")  # never read: the check only counts them
    speech.mkdir()
    if case != "empty_speech_folder":
        (speech / "a.wav").write_bytes(b"")
    argv = ["--evaluate-only", "--corpus", str(tmp_path / "missing" if case == "no_corpus" else corpus),
            "--speech", str(tmp_path / "missing" if case == "no_speech_folder" else speech), "--work", str(work)]
    with pytest.raises(SystemExit) as exit_info:
        quality.main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    expected = {"no_speech_folder": "does not exist", "empty_speech_folder": "holds no audio file",
                "small_corpus": f"no more than {quality.HELD_OUT_FIRST} wav files", "no_corpus": "does not exist"}
    assert expected[case] in message
    assert not work.exists()  # nothing was written
