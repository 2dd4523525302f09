"""Every exception class of stabledub_core is a StableDubError (one hierarchy, stabledub_core/errors.py).

The CLI prints a StableDubError as one line and exits with status 2; any other exception is a bug and keeps its
traceback. So an error a user can cause must never be a plain ValueError/FileNotFoundError subclass.
"""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import stabledub_core
from stabledub_core import errors
from stabledub_core.errors import StableDubError

PACKAGE = Path(stabledub_core.__file__).parent

# Exception classes that are deliberately not StableDubErrors, with the reason.
ALLOWED = {
    "stabledub_core.runtime.Interrupted": "a stop request (Ctrl-C, SIGTERM, ComfyUI's cancel), not an error",
    "stabledub_core.ops.selective_scan_cpu.KernelBuildError":
        "the compiled CPU kernel failed to build: logged, and the PyTorch scan runs instead; no user sees it",
}


def _modules() -> list[str]:
    names = [stabledub_core.__name__]
    names += [m.name for m in pkgutil.walk_packages(stabledub_core.__path__, prefix="stabledub_core.")]
    return sorted(names)


def _exception_classes() -> list[type]:
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found.append(obj)
    return found


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_every_module_is_walked():
    files = {".".join(("stabledub_core", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
             for p in PACKAGE.rglob("*.py")}
    assert files == set(_modules())


def test_every_exception_class_is_a_stabledub_error():
    classes = _exception_classes()
    assert len(classes) > 20  # the walk found the hierarchy at all
    bad = [_qualname(c) for c in classes if not issubclass(c, StableDubError) and _qualname(c) not in ALLOWED]
    assert not bad, ("exception classes that are not StableDubError subclasses (define them in "
                     "stabledub_core/errors.py under the right base, or allow-list an internal one here): "
                     + ", ".join(bad))


def test_the_allow_list_is_short_and_current():
    names = {_qualname(c) for c in _exception_classes()}
    assert set(ALLOWED) <= names, f"stale allow-list entries: {sorted(set(ALLOWED) - names)}"
    assert len(ALLOWED) <= 3


def test_no_two_exception_classes_share_a_name():
    by_name: dict[str, list[str]] = {}
    for cls in _exception_classes():
        by_name.setdefault(cls.__name__, []).append(_qualname(cls))
    clashes = {name: where for name, where in by_name.items() if len(where) > 1}
    assert not clashes, f"exception classes with the same name: {clashes}"


def test_user_errors_are_defined_in_errors_py():
    elsewhere = [_qualname(c) for c in _exception_classes()
                 if issubclass(c, StableDubError) and c.__module__ != errors.__name__]
    assert not elsewhere, f"define these in stabledub_core/errors.py and import them from there: {elsewhere}"


def test_no_exception_class_hides_inside_a_function_or_class():
    """The import walk sees module-level classes only; an exception class anywhere else would escape it."""
    hidden = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and id(node) not in top:
                bases = [ast.unparse(b) for b in node.bases]
                if node.name.endswith(("Error", "Exception")) or any(b.endswith(("Error", "Exception")) for b in bases):
                    hidden.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not hidden, f"define exception classes at module level (in errors.py): {hidden}"


@pytest.mark.parametrize("name", [n for n in dir(errors) if n.endswith("Error")])
def test_each_error_keeps_a_builtin_mixin(name):
    cls = getattr(errors, name)
    if cls is StableDubError:
        return
    assert issubclass(cls, (ValueError, FileNotFoundError)), f"{name} lost its ValueError/FileNotFoundError base"


def test_the_merged_and_renamed_classes():
    from stabledub_core.models import audio_context, checkpoint
    from stabledub_core.pipeline import windows

    assert checkpoint.CheckpointError is errors.CheckpointError  # one CheckpointError, not a second local one
    assert issubclass(errors.PickleRefusedError, errors.CheckpointError)
    assert audio_context.AudioContextError is not windows.SamplerWindowError
    assert not hasattr(windows, "WindowError") and not hasattr(audio_context, "WindowError")
