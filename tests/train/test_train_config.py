"""Training options: defaults < config file < flags; a resumed run starts from its saved options; the extra's list."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from stabledub_core.cli.main import build_parser
from stabledub_core.cli.train import _given_options
from stabledub_core.errors import OptionError
from stabledub_core.train.config import TrainOptions, merge_options, read_config_file

ROOT = Path(__file__).resolve().parents[2]


def test_a_file_overrides_the_defaults_and_flags_override_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('learning_rate = 3e-5\nbatch_size = 2\nmixed_precision = "bf16"\nmax_grad_norm = 2\n')
    args = build_parser().parse_args(["train", "stage1", "data", "--output", "run", "--batch-size", "8"])
    options = merge_options(read_config_file(path), _given_options(args))
    assert (options.learning_rate, options.batch_size, options.mixed_precision) == (3e-5, 8, "bf16")
    assert options.max_grad_norm == 2.0 and isinstance(options.max_grad_norm, float)
    assert options.max_steps == TrainOptions().max_steps  # neither file nor flag: the default


def test_json_files_work_too_and_unknown_names_or_bad_values_are_clear_errors(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"ema_decay": 0.999}))
    assert merge_options(read_config_file(path)).ema_decay == 0.999
    path.write_text(json.dumps({"learning_rat": 1e-4}))
    with pytest.raises(OptionError, match="unknown training option.*learning_rat"):
        read_config_file(path)
    with pytest.raises(OptionError, match="batch_size must be a int"):
        merge_options({"batch_size": "four"})
    with pytest.raises(OptionError, match="drop_prob must be between 0.0 and 1.0"):
        merge_options({"drop_prob": 1.5})
    with pytest.raises(OptionError, match="does not exist"):
        read_config_file(tmp_path / "missing.toml")


def test_only_given_flags_count_so_a_resumed_run_keeps_its_saved_options():
    args = build_parser().parse_args(["train", "stage2", "d", "--output", "o", "--resume", "latest",
                                      "--max-steps", "50"])
    assert _given_options(args) == {"max_steps": 50}
    saved = json.loads(TrainOptions(learning_rate=5e-5, drop_prob=0.2).to_json())
    options = merge_options(saved, {}, _given_options(args))
    assert (options.learning_rate, options.drop_prob, options.max_steps) == (5e-5, 0.2, 50)


def test_the_train_extra_is_the_same_list_in_pyproject_and_requirements_train():
    listed = [line.strip() for line in (ROOT / "requirements-train.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert listed == extra
    assert "-r requirements-train.txt" in (ROOT / "requirements-dev.txt").read_text()
    for text in ((ROOT / "requirements.txt").read_text(), "\n".join(extra)):
        assert not re.search(r"^torch\b", text, re.M)
