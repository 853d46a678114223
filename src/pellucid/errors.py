"""Errors a user can act on.

Every failure caused by the user's input (a bad file, an unknown model name, a prompt that does not fit)
is raised as a `PellucidError` subclass with a message that says what happened and what to do. The CLI
prints these without a traceback (`--debug` shows it); anything else is a bug in pellucid.
"""


class PellucidError(Exception):
    """Base class for errors caused by input, not by a bug."""


class ModelFileError(PellucidError):
    """A model file is missing, corrupt, truncated, unsafe or of a format we cannot read."""


class UnsupportedError(PellucidError):
    """A well-formed input that uses a feature pellucid does not implement (yet)."""


class ModelNotFoundError(PellucidError):
    """A model name that is neither in the store, the catalog, nor a path on disk."""


class TemplateError(PellucidError):
    """A chat template failed to render (bad template, hostile template, or raise_exception())."""


class ContextLengthError(PellucidError):
    """A prompt (plus requested tokens) does not fit in the context window."""
