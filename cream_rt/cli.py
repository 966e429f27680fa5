"""The `cream` command line: one entry point, one subcommand per job. Heavy imports (torch,
onnx) happen inside the subcommands that need them, so `cream localize` and `cream eval
--maps` run on a torch-free install."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import NoReturn

from . import __version__
from .errors import CreamError, Terminated, os_error_line

# name -> (help, module of cream_rt.commands with `add_arguments(parser)` and `run(args)`)
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("evaluate score maps, a checkpoint or an exported model (wsolevaluation protocol)", "eval_cmd"),
    "synth": ("generate the synthetic WSOL benchmark (images, masks, metadata)", "synth_cmd"),
    "backbones": ("list the registered backbones", "backbones_cmd"),
    "train": ("train a CAM model with CREAM context-embedding learning", "train_cmd"),
    "fit-embeddings": ("learn CREAM's context embeddings of a trained CAM model (frozen)", "fit_cmd"),
    "import": ("turn an ImageNet, torchvision or wsolevaluation classifier into a cream checkpoint (CAM; then "
               "fit-embeddings)", "import_cmd"),
    "tune": ("choose CREAM's inference settings (EM layer, center, T, embeddings, box threshold) on a val split",
             "tune_cmd"),
    "train-regressor": ("CREAM + box regressor: train a class-agnostic regressor on CREAM's pseudo boxes",
                        "regressor_cmd"),
    "demo": ("synthesize data, train a small CREAM model, compare CAM vs CREAM, write overlays", "demo"),
    "export": ("export a checkpoint to one ONNX graph (EM unrolled, embeddings embedded)", "export_cmd"),
    "localize": ("localize images with an exported model (ONNX Runtime, no torch)", "localize_cmd"),
    "parity": ("compare the eager model (or an fp32 export) and an export on the same images", "parity_cmd"),
    "bench": ("latency per image and throughput of every engine side by side", "bench_cmd"),
    "report": ("one HTML page of a checkpoint's CAM and CREAM on a split: metrics, threshold curve, gallery",
               "report_cmd"),
}


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one `cream: error: ...` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        self.exit(2, f"cream: error: {sub + ': ' if sub else ''}{message} (see `{self.prog} --help`)\n")


class _DefaultsShown(argparse.HelpFormatter):
    """`--help` shows each option's default, where it has one and its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand; the arguments of `only` that one (None: of all). Each
    command module declares its own (`add_arguments`) and is imported only when it is needed."""
    import importlib

    parser = Parser(prog="cream", description="CAM / CREAM weakly supervised object localization: train, "
                    "export, localize, evaluate and benchmark.")
    parser.add_argument("--version", action="version", version=f"cream-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_text, module_name) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_DefaultsShown)
        if only is None or name == only:
            module = importlib.import_module(f"cream_rt.commands.{module_name}")
            module.add_arguments(p)
            for action in p._actions:  # argparse omits the help line (and so the default) of an option without help
                if action.help is None and action.option_strings and action.default is not None \
                        and action.default is not False:
                    action.help = "default: %(default)s"
            p.set_defaults(_run=module.run)
    return parser


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _one_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text (DataLoader workers and some libraries
    wrap the original error in a traceback)."""
    import re

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])[:300] if len(lines) > 1 else lines[0][:300]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. A user error prints one line `cream: error: ...` and exits with status 2;
    SIGINT exits 130 and SIGTERM 143, after the temporary outputs are removed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    args.command_line = "cream " + " ".join(argv)  # recorded in results files
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    _log_to_stderr()
    code = _dispatch(args)
    if getattr(args, "ends_process", False):
        _end_process(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    """The command's exit status; its errors as one line."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if _main_thread() else None
    try:
        return int(args._run(args) or 0)
    except CreamError as exc:
        _error(_one_line(exc))
    except OSError as exc:  # a path the command could not read or write
        _error(os_error_line(exc))
    except MemoryError:
        _error("out of memory (a smaller --batch-size, or smaller images, may fit)")
    except KeyboardInterrupt:
        print("cream: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("cream: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # a bug or a case not handled above: still one line, the trace on request
        if os.environ.get("CREAM_DEBUG"):
            raise
        _error(f"unexpected {exc.__class__.__name__}: {_one_line(exc)} (CREAM_DEBUG=1 prints the traceback)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 2


def _end_process(code: int) -> NoReturn:
    """Exit a torchrun worker without interpreter shutdown, its output flushed. torch keeps the
    default process group referenced after destroy_process_group once DDP has been imported, so
    gloo's worker threads outlive it; one that frees a finished collective while the interpreter
    shuts down aborts the process (SIGABRT) after a good run (docs/distributed.md)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0:
        _wait_for_other_ranks()
    os._exit(code)


def _wait_for_other_ranks(seconds: float = 10.0) -> None:
    """A failing torchrun worker waits (at most `seconds`) for the other ranks before it exits:
    torchrun stops every rank as soon as one exits, so a rank failing on the same check a moment
    later would be stopped before printing its own line."""
    import datetime

    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=seconds), wait_all_ranks=True)
    except Exception:  # a rank that never arrives, or a group already broken: exit as before
        pass


class _StderrLines(logging.Handler):
    """The library's log records as lines on the stderr of the moment: progress (INFO) as it is,
    warnings and errors as `cream: warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        print(message if record.levelno < logging.WARNING else f"cream: {record.levelname.lower()}: {message}",
              file=sys.stderr)


def _log_to_stderr() -> None:
    """The CLI's process-wide settings, once: the library's log records (INFO and above) on
    stderr, and OpenCV's (`preprocess.configure_opencv`)."""
    from .preprocess import configure_opencv

    configure_opencv()
    logger = logging.getLogger("cream_rt")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines(logging.INFO))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _error(line: str) -> None:
    print(f"cream: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
