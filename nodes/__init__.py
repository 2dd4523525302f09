"""ComfyUI adapters of StableDub: ComfyUI values <-> core types, progress bars, interruption, model folders.

No computation happens here (it is all in ``stabledub_core``). Importing this package registers nothing with
ComfyUI and loads no model: model folders are registered when a loader's ``INPUT_TYPES`` is first asked for.

ComfyUI loads the pack from its folder without putting that folder on ``sys.path``; the core library
``stabledub_core`` beside this package is then loaded under its own name from its own folder (:func:`_load_core`).
``sys.path`` is never changed, so ``import nodes`` anywhere still finds ComfyUI's ``nodes`` module, not this package
(``tests/nodes/test_side_effects.py``).
"""

import importlib.util
import os
import sys

CORE = "stabledub_core"
CORE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), CORE)


def _load_core() -> None:
    """Make ``import stabledub_core`` work without touching ``sys.path`` or ``sys.meta_path``.

    An importable ``stabledub_core`` (the pack installed as a library, or the repository on the path in tests) is
    used as is. Otherwise the sibling package is loaded from ``CORE_DIR`` and entered in ``sys.modules`` under its
    own name; its submodules are then found through the package's ``__path__``, as for any package.
    """
    if CORE in sys.modules or importlib.util.find_spec(CORE) is not None:
        return
    init = os.path.join(CORE_DIR, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(f"ComfyUI-StableDub: the core library {CORE!r} is missing from {CORE_DIR}: reinstall the "
                          "node pack")
    spec = importlib.util.spec_from_file_location(CORE, init, submodule_search_locations=[CORE_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[CORE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[CORE]
        raise


_load_core()

from . import audio, compositing, face, habit, loaders, masks, sampling  # noqa: E402

_MODULES = (loaders, face, habit, masks, compositing, audio, sampling)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    for _node_id, (_cls, _title) in _module.NODES.items():
        if _node_id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"duplicate StableDub node id {_node_id}")
        NODE_CLASS_MAPPINGS[_node_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_node_id] = _title
