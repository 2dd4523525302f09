"""Which errors the CLI turns into one line: StableDubError only; any other exception is a bug and propagates."""

import argparse
import signal
import warnings

import pytest

from stabledub_core.cli import main as cli
from stabledub_core.errors import NoFaceError, OptionError


def _raising(error):
    def command(args):
        raise error
    return command


@pytest.fixture
def run_failing(monkeypatch):
    """Run the CLI's dispatcher on a command that raises the given error."""
    def run(error, debug=False, command=None):
        command = _raising(error) if command is None else command
        monkeypatch.setattr(cli, "_run_preview", command, raising=False)  # a dispatch dict of _run_* functions
        return cli._main(argparse.Namespace(command="preview", debug=debug, run=command))  # or set_defaults(run=)
    return run


@pytest.mark.parametrize("error", [OptionError("bad value\n   for  --frames"), NoFaceError("no face in the video")])
def test_a_stabledub_error_is_one_line_and_exit_2(run_failing, capsys, error):
    assert run_failing(error) == cli.EXIT_USER_ERROR == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stabledub: error: ")
    assert "Traceback" not in err
    assert err.strip().endswith(" ".join(str(error).split()))


def test_debug_shows_the_stabledub_error_traceback(run_failing):
    with pytest.raises(OptionError):
        run_failing(OptionError("bad value"), debug=True)


@pytest.mark.parametrize("error", [ValueError("a bug"), FileNotFoundError("a bug"), TypeError("a bug"),
                                   RuntimeError("a bug")])
def test_other_errors_are_bugs_and_propagate(run_failing, capsys, error):
    with pytest.raises(type(error), match="a bug"):
        run_failing(error)
    assert "stabledub: error" not in capsys.readouterr().err


def test_the_sigterm_handler_is_restored_after_a_bug(run_failing):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError):
        run_failing(ValueError("a bug"))
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_wrapped_by_a_library_is_still_an_interruption(run_failing, capsys):
    """diffusers' lazy imports turn any Exception, a stage's Interrupted too, into RuntimeError(...) from it."""
    try:
        try:
            raise cli.Interrupted("stopped by signal 1")
        except cli.Interrupted as signal_error:
            raise RuntimeError("Failed to import diffusers.models.autoencoders") from signal_error
    except RuntimeError as wrapped:
        error = wrapped
    assert run_failing(error) == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err.strip() == "stabledub: interrupted; no output written"


class _Finalized:
    """An object whose finalizer runs ``action`` (as the garbage collector runs a library's ``__del__``)."""

    def __init__(self, action):
        self.action = action

    def __del__(self):
        self.action()


def test_a_signal_landing_in_a_finalizer_is_not_reported_and_still_stops(monkeypatch):
    """The handler raises KeyboardInterrupt; inside a ``__del__`` Python can only report it ("Exception ignored in
    ..."), which would print a second line beside the interrupted one. The stop flag keeps the request."""
    reported = []
    monkeypatch.setattr(cli.sys, "unraisablehook", reported.append)
    cli.STOP.reset()
    try:
        with cli._interrupts_in_finalizers_quiet():
            _Finalized(lambda: cli._raise_interrupted(signal.SIGINT, None))
            assert cli.STOP() and cli.STOP.signum == signal.SIGINT
            assert reported == []
            _Finalized(lambda: 1 / 0)  # any other error of a finalizer is still reported
            assert [r.exc_type for r in reported] == [ZeroDivisionError]
        assert cli.sys.unraisablehook == reported.append
        cli.STOP.reset()
        _Finalized(lambda: cli._raise_interrupted(signal.SIGINT, None))  # outside a run: reported as before
        assert [r.exc_type for r in reported] == [ZeroDivisionError, KeyboardInterrupt]
    finally:
        cli.STOP.reset()


def test_a_signal_landing_in_a_library_that_catches_every_exception_still_interrupts(run_failing, capsys, recwarn):
    """matplotlib wraps an optional import in ``try/except Exception: warnings.warn(...)``; a signal arriving in
    that import came out as a stray warning beside the interrupted line (a CI run). The handler's exception must
    pass such a block."""
    def library_import(args):
        try:
            cli._raise_interrupted(signal.SIGTERM, None)
        except Exception:  # noqa: BLE001 - what the library does
            warnings.warn("Unable to import Axes3D")

    cli.STOP.reset()
    try:
        assert run_failing(None, command=library_import) == cli.EXIT_INTERRUPTED == 130
    finally:
        cli.STOP.reset()
    assert capsys.readouterr().err.strip() == "stabledub: interrupted; no output written"
    assert [str(w.message) for w in recwarn] == []
