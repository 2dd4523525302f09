"""ComfyUI adapters of StableDub: ComfyUI values <-> core types, progress bars, interruption, model folders.

No computation happens here (it is all in ``stabledub_core``). Importing this package registers nothing with
ComfyUI and loads no model: model folders are registered when a loader's ``INPUT_TYPES`` is first asked for.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("stabledub_core") is None:  # ComfyUI does not put custom node folders on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from . import compositing, face, loaders, masks, sampling  # noqa: E402

_MODULES = (loaders, face, masks, compositing, sampling)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    for _node_id, (_cls, _title) in _module.NODES.items():
        if _node_id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"duplicate StableDub node id {_node_id}")
        NODE_CLASS_MAPPINGS[_node_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_node_id] = _title
