"""Fixtures of the node tests: the stand-in ComfyUI (``helpers/comfy_stub.py``) with the pack imported."""

import sys

import pytest

from helpers.comfy_stub import FakeComfy, import_package


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """Stand-in ComfyUI modules in ``sys.modules`` (removed afterwards) and the node pack imported with them."""
    fake = FakeComfy(tmp_path_factory.mktemp("comfyui"))
    saved = {name: sys.modules.get(name) for name in fake.modules()}
    sys.modules.update(fake.modules())
    fake.package = import_package()
    fake.nodes = fake.package.NODE_CLASS_MAPPINGS
    yield fake
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
