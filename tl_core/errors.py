"""Errors raised by the engine.

Every error a user can cause derives from :class:`TLCoreError`; its message says what was
received, what is allowed and what to do, so the app and the CLI can show ``str(err)`` as is.
"""


class TLCoreError(Exception):
    """Base class of every error the engine raises on purpose."""


class DataError(TLCoreError):
    """The dataset cannot be read or used as given (empty, too few images per class, bad zip)."""


class ImageDecodeError(TLCoreError):
    """One image cannot be used; the loader skips it and lists this reason."""


class WeightsUnavailableError(TLCoreError):
    """Pretrained weights were asked for but cannot be found locally nor downloaded."""


class ConfigError(TLCoreError):
    """A setting is out of range or names something unknown."""


class RunNotFoundError(TLCoreError):
    """No stored run has the given id."""


class NotFittedError(TLCoreError):
    """A head was asked to predict before it was fitted."""


class CancelledError(TLCoreError):
    """The run was cancelled through the progress protocol."""


class ExportError(TLCoreError):
    """A model file could not be written, loaded or checked."""


class QuotaError(TLCoreError):
    """A hosted workspace is over one of its quotas (saved datasets, queued runs, cost of a run)."""
