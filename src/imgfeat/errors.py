"""The exceptions imgfeat raises.

    ImgfeatError                 base of everything below
    ├── ConfigError              a bad option or combination; fix the command line
    │   └── UnknownModel         a model name the registry does not know
    ├── MissingExtra             an optional package is not installed
    ├── ModelUnavailable         the model's weights are not on this machine
    ├── SourceError              the input cannot be listed (missing path, unreachable storage)
    ├── OutputError              the output exists but does not belong to this run
    ├── UnknownId                an id that is not in the index (also a KeyError)
    └── TooManyErrors            more images failed than --max-error-ratio allows

A bad *image* never raises: it becomes a row with status "error" and a reason.
"""

from __future__ import annotations


class ImgfeatError(Exception):
    """Base class of every error imgfeat raises on purpose."""


class ConfigError(ImgfeatError, ValueError):
    """A bad option or combination of options."""


class UnknownModel(ConfigError):
    """A model name that is not in the registry."""


class MissingExtra(ImgfeatError, ImportError):
    """An optional dependency is missing; the message names the pip command."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = ""):
        hint = f"pip install 'imgfeat[{extra}]'" if extra else f"pip install {package}"
        what = f" for {purpose}" if purpose else ""
        super().__init__(f"{package} is needed{what} but is not installed: {hint}")
        self.package = package
        self.extra = extra


class ModelUnavailable(ImgfeatError):
    """A model's weights cannot be found or made on this machine."""


class SourceError(ImgfeatError):
    """The input cannot be listed or opened."""


class OutputError(ImgfeatError):
    """The output folder holds something this run must not mix with."""


class UnknownId(ImgfeatError, KeyError):
    """An id asked for that the index does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TooManyErrors(ImgfeatError):
    """The share of failed images passed the limit the user set."""
