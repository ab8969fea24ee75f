"""One frozen dataclass per config section, validated where it is built.

``XSettings.from_raw(mapping, ...)`` fills in defaults, rejects unknown keys with a
did-you-mean and checks every value; errors are :class:`~volcam.errors.ConfigError` naming
the key (``targets.mask must be one of prediction, label, whole, not 'labels'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ConfigError
from volcam.run.schema import (
    ACTIVATIONS,
    MASKS,
    SECTIONS,
)

__all__ = [
    "CamSettings",
    "TargetSettings",
    "SlidingSettings",
    "DataSettings",
    "check_section",
    "int_list",
    "safe_name",
]


def check_section(name: str, raw: Any) -> dict[str, Any]:
    """The section's raw mapping with defaults filled in; unknown keys rejected."""
    defaults = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name} must be a mapping of settings, not {type(raw).__name__}", key=name)
    for k in raw:
        if k not in defaults:
            raise ConfigError(
                f"{name}.{k} is not a setting of {name} (settings: {', '.join(defaults)}){did_you_mean(k, defaults)}",
                key=f"{name}.{k}",
            )
    out = {k: (v if not isinstance(v, (dict, list)) else type(v)(v)) for k, v in defaults.items()}
    out.update(raw)
    return out


def _show(value: Any) -> str:
    """A value as a user wrote it: numpy and torch scalars print as plain numbers."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        value = item()
    return repr(value)


def int_list(value: Any, key: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """A tuple of ints from an int (repeated ``length`` times) or a list."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * (length or 1)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key} must be a list of integers, not {_show(value)}", key=key)
    if length is not None and len(value) != length:
        raise ConfigError(f"{key} must have {length} entries (one per spatial axis), not {list(value)}", key=key)
    if any(v < minimum for v in value):
        raise ConfigError(f"{key} must hold integers >= {minimum}, not {list(value)}", key=key)
    return tuple(value)


def _choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"{key} must be one of {', '.join(choices)}, not {_show(value)}{did_you_mean(value, choices)}", key=key
        )
    return str(value)


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {_show(value)}", key=key)
    return value


def _number(value: Any, key: str, low: float, high: float, *, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be a number in {interval}, not {_show(value)}", key=key)
    return float(value)


def safe_name(text: str) -> str:
    """A file-system-safe name: letters, digits, '-', '_' and '.' (no leading dots)."""
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(text)).strip("._") or "case"


def _first_bad(values: Any, allowed: tuple[str, ...]) -> Any:
    """The first entry of a list that is not allowed (the value itself if it is no list), or None."""
    if not isinstance(values, (list, tuple)):
        return values
    return next((v for v in values if v not in allowed), None)


def _selector(value: Any) -> Any:
    """Selectors in YAML: an int, a str, or a list path (made a tuple)."""
    if isinstance(value, list):
        return tuple(value)
    return value


@dataclass(frozen=True)
class CamSettings:
    """``cam``: the method, its target layers and selectors (no layers: the default layer,
    chosen by :func:`volcam.run.defaults.choose_layer` once the network is built)."""

    method: str
    target_layers: tuple[str, ...]
    #: the method computed for a class whose map is all zero although the class is predicted
    #: (None: no second method); by default HiResCAM when ``method`` is left out too
    fallback: str | None = None
    layer_output: Any = None
    model_output: Any = None
    reshape: Any = None  # the raw entry; built through the parser (it may be an @ref or $expr)
    method_args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> CamSettings:
        from volcam.methods import METHODS, get_method
        from volcam.run.defaults import DEFAULT_FALLBACK, DEFAULT_METHOD

        s = dict(raw)
        fallback = s.get("fallback")
        if s["method"] is None:  # left out: the default, chosen by measurement (volcam.run.defaults)
            s["method"] = DEFAULT_METHOD
            fallback = DEFAULT_FALLBACK if fallback is None else fallback
        if isinstance(fallback, str) and fallback.lower() in ("none", "off"):
            fallback = None  # the default method without a second one
        for key, name in (("method", s["method"]), ("fallback", fallback)):
            if key == "fallback" and name is None:
                continue
            if not isinstance(name, str) or not name:
                raise ConfigError(f"cam.{key} must be a method name, not {_show(name)}", key=f"cam.{key}")
            try:
                get_method(name)
            except Exception as err:
                raise ConfigError(
                    f"cam.{key} must be one of {sorted(METHODS)}, not {name!r}{did_you_mean(name, METHODS)}",
                    key=f"cam.{key}",
                ) from err
        layers = s["target_layers"]
        if layers is None or layers == [] or layers == "":
            layers = []  # chosen when the network is built (volcam.run.defaults)
        if isinstance(layers, str):
            layers = [layers]
        if not (isinstance(layers, (list, tuple)) and all(isinstance(x, str) for x in layers)):
            raise ConfigError(
                f"cam.target_layers must be a dotted module name or a list of them, not {_show(layers)}",
                key="cam.target_layers",
            )
        args = s["method_args"] or {}
        if not isinstance(args, Mapping):
            raise ConfigError(f"cam.method_args must be a mapping, not {_show(args)}", key="cam.method_args")
        return cls(
            method=s["method"],
            target_layers=tuple(layers),
            fallback=fallback,
            layer_output=_selector(s["layer_output"]),
            model_output=_selector(s["model_output"]),
            reshape=s["reshape"],
            method_args=dict(args),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (for case records and the summary)."""
        return {
            "method": self.method,
            "fallback": self.fallback,
            "method_args": {k: _describe(v) for k, v in sorted(self.method_args.items())},
            "target_layers": list(self.target_layers),
            "layer_output": _describe(self.layer_output),
            "model_output": _describe(self.model_output),
            "reshape": _describe(self.reshape),
        }


def _describe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    return repr(value)


@dataclass(frozen=True)
class TargetSettings:
    """``targets``: which output channels are explained, over which voxels.

    ``label_values`` maps a class (output channel) to the label values that make its
    reference region in a label map; by default class ``c`` is ``label == c``, and for a
    single-channel (sigmoid) output channel 0 is the foreground ``label > 0``.
    """

    classes: tuple[int, ...]
    names: Mapping[int, str]
    mask: str = "prediction"
    activation: str = "softmax"
    label_values: Mapping[int, tuple[int, ...]] | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> TargetSettings:
        s = dict(raw)
        classes = s["classes"]
        if classes is None:
            raise ConfigError(
                "targets.classes is required (the output channels to explain, e.g. [1, 2]; "
                "[0] for a single-channel sigmoid network)",
                key="targets.classes",
            )
        if isinstance(classes, int) and not isinstance(classes, bool):
            classes = [classes]
        classes = int_list(classes, "targets.classes", minimum=0)
        if len(set(classes)) != len(classes):
            raise ConfigError(f"targets.classes must not repeat a class, not {list(classes)}", key="targets.classes")
        mask = _choice(s["mask"], MASKS, "targets.mask")
        activation = _choice(s["activation"], ACTIVATIONS, "targets.activation")
        names = s["names"]
        if names is not None and not isinstance(names, (Mapping, list)):
            raise ConfigError(f"targets.names must be a mapping or a list, not {_show(names)}", key="targets.names")
        resolved: dict[int, str] = {}
        for c in classes:
            if isinstance(names, Mapping) and (c in names or str(c) in names):
                resolved[c] = safe_name(str(names.get(c, names.get(str(c)))))
            elif isinstance(names, list) and 0 <= c < len(names):
                resolved[c] = safe_name(str(names[c]))
            else:
                resolved[c] = f"class{c}"
        seen: dict[str, int] = {}
        for c, n in resolved.items():
            other = seen.get(n.lower())
            if other is not None:
                raise ConfigError(
                    f"targets.names must give every class its own folder, not '{n}' to both class {other} and "
                    f"class {c} (names are made file-safe: letters, digits, '-', '_' and '.'; case is ignored)",
                    key="targets.names",
                )
            seen[n.lower()] = c
        values = s["label_values"]
        label_values = None
        if values is not None:
            if not isinstance(values, Mapping):
                raise ConfigError(
                    f"targets.label_values must map classes to label values ({{1: [1, 3]}}), not {_show(values)}",
                    key="targets.label_values",
                )
            label_values = {}
            for k, v in values.items():
                try:
                    c = int(k)
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"targets.label_values must be keyed by class index, not {k!r}", key="targets.label_values"
                    ) from None
                label_values[c] = int_list(v, f"targets.label_values[{c}]", minimum=0)
        return cls(tuple(classes), resolved, mask, activation, label_values)

    def describe(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "names": {str(k): v for k, v in self.names.items()},
            "mask": self.mask,
            "activation": self.activation,
            "label_values": None
            if self.label_values is None
            else {str(k): list(v) for k, v in sorted(self.label_values.items())},
        }


@dataclass(frozen=True)
class SlidingSettings:
    """``sliding_window``: explain window by window when ``roi_size`` is set."""

    roi_size: tuple[int, ...] | None = None
    sw_batch_size: int = 1
    overlap: float = 0.25
    mode: str = "gaussian"

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], spatial_dims: int) -> SlidingSettings:
        s = dict(raw)
        roi = None if s["roi_size"] is None else int_list(s["roi_size"], "sliding_window.roi_size", spatial_dims)
        batch = s["sw_batch_size"]
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(
                f"sliding_window.sw_batch_size must be an integer >= 1, not {_show(batch)}",
                key="sliding_window.sw_batch_size",
            )
        overlap = _number(s["overlap"], "sliding_window.overlap", 0.0, 1.0, high_open=True)
        mode = _choice(s["mode"], ("gaussian", "constant"), "sliding_window.mode")
        return cls(roi, batch, overlap, mode)


@dataclass(frozen=True)
class DataSettings:
    """``data``: where the cases are (exactly one of folder, files, dataset_json)."""

    folder: str | None = None
    glob: str = "*.nii.gz"
    label_folder: str | None = None
    files: tuple[Any, ...] | None = None
    dataset_json: str | None = None
    dicom: str | None = None
    series: Mapping[str, Any] = field(default_factory=dict)
    section: str = "test"
    num_workers: int = 2

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> DataSettings:
        s = dict(raw)
        workers = s["num_workers"]
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"data.num_workers must be an integer >= 0, not {_show(workers)}", key="data.num_workers")
        given = [k for k in ("folder", "files", "dataset_json", "dicom") if s.get(k) is not None]
        if len(given) != 1:
            raise ConfigError(
                "data must set exactly one of 'folder', 'files', 'dataset_json' or 'dicom', "
                f"not {given if given else 'none of them'}",
                key="data",
            )
        series = s["series"] or {}
        if not isinstance(series, Mapping) or any(k not in ("uid", "description", "modality") for k in series):
            bad = (
                next((k for k in series if k not in ("uid", "description", "modality")), series)
                if isinstance(series, Mapping)
                else series
            )
            raise ConfigError(
                f"data.series must be a mapping of uid, description (a pattern) and modality, not {_show(bad)}"
                f"{did_you_mean(bad, ('uid', 'description', 'modality')) if isinstance(bad, str) else ''}",
                key="data.series",
            )
        files = s["files"]
        if files is not None:
            if isinstance(files, (str, os.PathLike)) or not isinstance(files, (list, tuple)) or not files:
                raise ConfigError(f"data.files must be a non-empty list, not {_show(files)}", key="data.files")
            files = tuple(files)
        return cls(
            folder=None if s["folder"] is None else str(s["folder"]),
            glob=str(s["glob"] or "*.nii.gz"),
            label_folder=None if s["label_folder"] is None else str(s["label_folder"]),
            files=files,
            dataset_json=None if s["dataset_json"] is None else str(s["dataset_json"]),
            dicom=None if s["dicom"] is None else str(s["dicom"]),
            series=dict(series),
            section=str(s["section"] or "test"),
            num_workers=workers,
        )

    def as_mapping(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "glob": self.glob,
            "label_folder": self.label_folder,
            "files": None if self.files is None else list(self.files),
            "dataset_json": self.dataset_json,
            "dicom": self.dicom,
            "series": dict(self.series),
            "section": self.section,
            "num_workers": self.num_workers,
        }
