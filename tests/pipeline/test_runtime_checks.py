"""Device and dtype checked against this torch build before any model is loaded; NaN chunks stop a dub."""

from __future__ import annotations

import pytest
import torch

from stabledub_core.errors import NumericalError, OptionError
from stabledub_core.pipeline.chunk_model import check_finite, check_runtime


def test_devices_and_dtypes():
    assert check_runtime("cpu", "auto") is None and check_runtime("cpu", "bfloat16") is None
    assert "float16 on the CPU" in check_runtime("cpu", "float16", lambda n: "--" + n)
    with pytest.raises(OptionError, match="unknown --device 'bogus'"):
        check_runtime("bogus", "auto", lambda n: "--" + n)
    with pytest.raises(OptionError, match="unknown dtype 'int8'"):
        check_runtime("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="device 'cuda:1': .*use device cpu"):
            check_runtime("cuda:1", "auto")
    else:
        with pytest.raises(OptionError, match="CUDA GPU"):
            check_runtime(f"cuda:{torch.cuda.device_count()}", "auto")


def test_a_nan_chunk_stops_the_dub():
    check_finite(torch.zeros(2, 4), "latents", 0, torch.float32)
    values = torch.zeros(2, 4)
    values[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="NaN or infinite latents for output frames from 32 .*float16.*try "
                                             "dtype float32"):
        check_finite(values, "latents", 32, torch.float16)
