"""Node widgets made from the pipeline's option dataclasses (``stabledub_core/pipeline/options.py``).

A widget's default, range, choices and tooltip come from the option's field, so the nodes show exactly the defaults
of the Python API and of ``--help``.
"""

from __future__ import annotations

from dataclasses import fields


def widget(kind: type, name: str) -> tuple:
    """The ComfyUI input tuple of option ``name`` of the stage options ``kind``.

    Args:
        kind: A stage's option dataclass, e.g. ``SamplingOptions``.
        name: One of its fields.

    Returns:
        ``(list_of_choices, {...})``, ``("INT", {...})``, ``("FLOAT", {...})`` or ``("BOOLEAN", {...})``.
    """
    from stabledub_core.pipeline.options import option_fields  # local: see nodes/sampling.py

    f = next((f for f in option_fields(kind) if f.name == name), None)
    if f is None:
        raise KeyError(f"{kind.__name__} has no option {name!r}: one of {[f.name for f in fields(kind)]}")
    meta = f.metadata
    spec = {"default": f.default, "tooltip": meta["help"]}
    if meta["choices"]:
        return list(meta["choices"]), spec
    if isinstance(f.default, bool):
        return "BOOLEAN", spec
    spec.update({k: meta[k] for k in ("min", "max", "step") if meta[k] is not None})
    return ("INT" if isinstance(f.default, int) else "FLOAT"), spec


def widgets(kind: type, *names: str) -> dict[str, tuple]:
    """Several widgets of one stage's options, by name (all its flagged options when no name is given)."""
    names = names or tuple(f.name for f in fields(kind) if f.metadata.get("flag"))
    return {name: widget(kind, name) for name in names}
