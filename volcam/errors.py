"""Exception and warning tree.

Every error volcam raises derives from :class:`VolcamError` and from the matching built-in,
so ``except ValueError`` keeps working for callers:

- :class:`ArgumentError` (``ValueError``): a bad argument of a function or method;
- :class:`ConfigError` (``ValueError``): a bad value in a run configuration, naming its key;
- :class:`ShapeError`, :class:`TargetError`, :class:`ValueRangeError` (``ValueError``),
  :class:`SelectorError` (``TypeError``), :class:`LayerNotFoundError` (``LookupError``),
  :class:`LayerNotReachedError` (``RuntimeError``), :class:`ImageReadError` (``OSError``),
  :class:`DistributedError` (``RuntimeError``).

Warnings derive from :class:`VolcamWarning` so that callers can filter them by category
(``warnings.filterwarnings("ignore", category=volcam.EmptyTargetWarning)``) rather than by
matching message text.
"""

from __future__ import annotations

__all__ = [
    "VolcamError",
    "ArgumentError",
    "ShapeError",
    "LayerNotFoundError",
    "SelectorError",
    "TargetError",
    "LayerNotReachedError",
    "ConfigError",
    "ImageReadError",
    "MethodNotFoundError",
    "ValueRangeError",
    "DistributedError",
    "VolcamWarning",
    "EmptyTargetWarning",
    "EmptyMapWarning",
    "TrainingModeWarning",
    "LayerCallWarning",
]


class VolcamError(Exception):
    """Base class of every volcam error."""


class ArgumentError(VolcamError, ValueError):
    """An argument of a function or method has a wrong value or type.

    Attributes:
        name: the argument's name, when one is given.
    """

    def __init__(self, message: str, *, name: str | None = None):
        super().__init__(message)
        self.name = name


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


class DistributedError(VolcamError, RuntimeError):
    """A run over several processes cannot start or go on: the launcher's environment is
    incomplete, a process has no device of its own, or a process stopped responding."""


class VolcamWarning(UserWarning):
    """Base class of every warning volcam gives."""


class EmptyTargetWarning(VolcamWarning, RuntimeWarning):
    """A sample's target region is empty (the network predicts no voxel of the class, or a
    given mask selects none): its map is all zero."""


class EmptyMapWarning(VolcamWarning, RuntimeWarning):
    """A map is zero everywhere although its target region is not empty (no positive
    evidence at the layer); the message says why and what to try."""


class TrainingModeWarning(VolcamWarning):
    """The model is in training mode: dropout and batch statistics make maps change from
    call to call."""


class LayerCallWarning(VolcamWarning):
    """A target layer ran more than once in one forward pass (weight sharing, recurrence)."""


class ModelStateError(VolcamError, RuntimeError):
    """The model or the calling context does not allow a CAM to be computed (gradients are
    needed under ``torch.inference_mode()``, or the parameters were created under it); the
    message says what to do."""


class LayerCallError(VolcamError, RuntimeError):
    """A target layer ran more than once in one forward pass and ``layer_call="error"`` asked
    for that to be refused, or ``layer_call`` names a call that did not happen."""


__all__ += ["ModelStateError", "LayerCallError"]
