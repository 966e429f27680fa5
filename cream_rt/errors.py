"""User-facing errors: one clear line naming the thing and what was expected."""

__all__ = ["CreamError", "MetadataError", "ScoreMapError", "ModelFileError", "ImageReadError", "OutputError",
           "Terminated", "os_error_line"]


class CreamError(Exception):
    """An error caused by the user's input (file, shape, value); the CLI prints it as one line."""


class MetadataError(CreamError):
    """A wsolevaluation metadata file is missing, malformed or inconsistent."""


class ScoreMapError(CreamError):
    """A score map has the wrong shape, NaN values or values outside [0, 1]."""


class ModelFileError(CreamError):
    """A checkpoint or exported model file is missing, corrupt or from an unknown version."""


class ImageReadError(CreamError):
    """An image file is missing or cannot be decoded."""


class OutputError(CreamError):
    """An output path cannot be written (a folder where a file is expected, no permission, ...)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so temporary outputs are removed."""


def os_error_line(exc: OSError, what: str = "") -> str:
    """`<file>: <reason>` of an OSError, without the errno noise."""
    name = exc.filename if exc.filename is not None else what
    reason = exc.strerror or exc.__class__.__name__
    return f"{name}: {reason.lower()}" if name else reason.lower()
