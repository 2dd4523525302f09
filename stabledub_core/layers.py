"""The import layers of ``stabledub_core``, lowest first: the one place where their order is declared.

A module may import modules of its own layer or of lower ones, never of a higher one, and no two files may import
each other, directly or through others (``tests/test_layers.py`` checks both on every ``.py`` file of the package,
function-local imports included, and that the package never imports ComfyUI). Each layer is named by the top-level
module or subpackage of ``stabledub_core`` it holds; the ground floor holds several modules that import nothing of
the package (``runtime``: stop checks and progress types; ``errors``: the error hierarchy; this module; and the
package's ``__init__``). ``__main__``
(``python -m stabledub_core``) belongs with the command line. Above the package: ``nodes/`` (the ComfyUI adapters),
which may import ``stabledub_core`` but never the other way round.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "layers", "runtime"),
    ("ops",),
    ("media",),
    ("face",),
    ("masks",),
    ("models",),
    ("pipeline",),
    ("synthetic",),
    ("train",),
    ("evaluate",),
    ("cli", "__main__"),
)


def layer_index(name: str) -> int:
    """The layer (0 = ground floor) of a top-level module or subpackage name of ``stabledub_core``.

    Raises:
        KeyError: ``name`` is in no layer.
    """
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise KeyError(f"{name!r} is in no layer of stabledub_core.layers.LAYERS")
