"""Exception tree. Every error volcam raises on bad input derives from :class:`VolcamError`
and from the matching built-in, so ``except ValueError`` keeps working for callers."""

from __future__ import annotations

__all__ = [
    "VolcamError",
    "ShapeError",
    "LayerNotFoundError",
    "SelectorError",
    "TargetError",
    "LayerNotReachedError",
    "ConfigError",
    "ImageReadError",
    "MethodNotFoundError",
    "ValueRangeError",
]


class VolcamError(Exception):
    """Base class of every volcam error."""


class ShapeError(VolcamError, ValueError):
    """A tensor does not have the shape that was expected.

    Attributes:
        expected: a readable description of the expected shape.
        actual_shape: the shape that was given.
    """

    def __init__(self, message: str, *, expected: str | None = None, actual_shape: tuple | None = None):
        super().__init__(message)
        self.expected = expected
        self.actual_shape = tuple(actual_shape) if actual_shape is not None else None


class LayerNotFoundError(VolcamError, LookupError):
    """A target layer name does not name a module of the model."""

    def __init__(self, message: str, *, name: str | None = None, suggestions: tuple = ()):
        super().__init__(message)
        self.name = name
        self.suggestions = tuple(suggestions)

    def __str__(self) -> str:  # LookupError subclasses (KeyError) would quote the message
        return self.args[0] if self.args else ""


class LayerNotReachedError(VolcamError, RuntimeError):
    """A target layer was not run by the forward pass, or the score does not depend on it."""


class SelectorError(VolcamError, TypeError):
    """A selector cannot pick a tensor out of a (possibly nested) output."""


class TargetError(VolcamError, ValueError):
    """A target (category, mask, callable) does not fit the model output."""


class MethodNotFoundError(VolcamError, KeyError):
    """No CAM method is registered under that name."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class ConfigError(VolcamError, ValueError):
    """A configuration value is missing or wrong; the message names the key."""

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class ImageReadError(VolcamError, OSError):
    """An image file cannot be read or is not a valid image."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class ValueRangeError(VolcamError, ValueError):
    """Values of an array are not finite, or lie outside the range they must have
    (a heat volume outside [0, 1], a world point outside the image).

    Attributes:
        value_range: the (min, max) that was found, when it applies.
    """

    def __init__(self, message: str, *, value_range: tuple | None = None):
        super().__init__(message)
        self.value_range = tuple(value_range) if value_range is not None else None
