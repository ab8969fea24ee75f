"""Run configurations: MONAI bundle-style YAML/JSON read with :class:`monai.bundle.ConfigParser`.

A config is a dictionary. Components are built from ``_target_`` entries, ``@key`` refers to
another entry and ``$expr`` is evaluated, exactly as in a MONAI bundle, so a ``network_def``
or a list of preprocessing transforms can be copied from any bundle. volcam reads these keys
(every key but ``network_def`` and ``data`` has a default)::

    network_def:       {_target_: monai.networks.nets.UNet, spatial_dims: 3, ...}   # required
    checkpoint:        path/to/model.pt          # null: keep the network's initial weights
    checkpoint_key:    null                      # entry of a wrapper dict holding the state dict
    device:            auto                      # auto | cpu | cuda | cuda:1 ...
    spatial_dims:      null                      # default: network_def.spatial_dims, else 3
    input_size:        null                      # dummy input for `volcam layers`
    cam:
      method:          gradcam                   # a name of volcam.METHODS
      target_layers:   model.1.submodule.0       # dotted name or list of them
      layer_output:    null                      # selector for tuple/list/dict layer outputs
      model_output:    null                      # selector for the model's output
      reshape:         null                      # callable tokens [B,N,K] -> [B,K,*S] (an @ref or $expr)
      method_args:     {}                        # extra keyword arguments of the method
    targets:
      classes:         [1]                       # output channels to explain
      names:           null                      # {1: liver, 2: tumour} or a list, for file names
      mask:            prediction                # prediction | label | whole
      activation:      softmax                   # softmax (exclusive classes) | sigmoid (multi-label)
    preprocessing:     []                        # dictionary transforms over keys image (and label)
    sliding_window:
      roi_size:        null                      # set to explain through volcam.sliding_window_cam
      sw_batch_size:   1
      overlap:         0.25
      mode:            gaussian
    data:                                        # exactly one of folder / files / dataset_json
      folder:          scans/                    #   with glob (default *.nii.gz) and label_folder
      files:           [a.nii.gz, {image: b.nii.gz, label: b_seg.nii.gz}]
      dataset_json:    Task01/dataset.json       #   with section (default test)
      num_workers:     2
    outputs:
      dir:             volcam-output
      heat_nifti:      true
      raw_heat:        false                     # write the unnormalised map instead of [0, 1]
      pngs:            true
      axes:            [axial]                   # axial | coronal | sagittal
      figure:          orthogonal                # orthogonal | mosaic | false
      cmap:            jet
      alpha:           0.5
      window:          null                      # [low, high] intensity window of the overlays
      convention:      radiological

Relative paths are taken from the current directory; ``config_dir`` holds the folder of the
config file, so ``"$@config_dir + '/model.pt'"`` names a file next to the config.

Overrides (``volcam run CONFIG --override key=value``) use dotted keys (``cam.method=hirescam``;
MONAI's ``::`` works too) and YAML values (``targets.classes=[1,2]``, ``checkpoint=null``).
Every error names the key that is wrong, as a :class:`volcam.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volcam.errors import ConfigError

__all__ = [
    "Case",
    "RunConfig",
    "load_config",
    "parse_override",
    "load_checkpoint",
    "extract_state_dict",
    "list_cases",
    "resolve_device",
]

# Settings of the sections volcam owns: name -> default. Unknown keys there are errors
# (with a did-you-mean); unknown top-level keys are allowed, as helpers for @ references.
SECTIONS: dict[str, dict[str, Any]] = {
    "cam": {
        "method": "gradcam",
        "target_layers": None,
        "layer_output": None,
        "model_output": None,
        "reshape": None,
        "method_args": {},
    },
    "targets": {"classes": None, "names": None, "mask": "prediction", "activation": "softmax"},
    "sliding_window": {"roi_size": None, "sw_batch_size": 1, "overlap": 0.25, "mode": "gaussian"},
    "data": {
        "folder": None,
        "glob": "*.nii.gz",
        "label_folder": None,
        "files": None,
        "dataset_json": None,
        "section": "test",
        "num_workers": 2,
    },
    "outputs": {
        "dir": "volcam-output",
        "heat_nifti": True,
        "raw_heat": False,
        "pngs": True,
        "axes": ["axial"],
        "figure": "orthogonal",
        "cmap": "jet",
        "alpha": 0.5,
        "window": None,
        "convention": "radiological",
    },
}
TOP_LEVEL = {
    "network_def": None,
    "checkpoint": None,
    "checkpoint_key": None,
    "device": "auto",
    "spatial_dims": None,
    "input_size": None,
    "preprocessing": [],
    "config_dir": ".",
    **{name: {} for name in SECTIONS},
}
MASKS = ("prediction", "label", "whole")
AXES = ("axial", "coronal", "sagittal")
FIGURES = ("orthogonal", "mosaic")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` into a MONAI config id (``a::b``) and a YAML-parsed value.

    ``cam.method=hirescam`` -> ``("cam::method", "hirescam")``;
    ``targets.classes=[1, 2]`` -> ``("targets::classes", [1, 2])``; ``checkpoint=null`` -> ``None``.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"an override must be key=value, not {text!r}", key=None)
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"an override must be key=value with a key, not {text!r}", key=None)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    config_id = key.replace("::", ".").replace("#", ".").replace(".", "::")
    return config_id, value


def _id_to_key(config_id: str) -> str:
    return config_id.replace("::", ".")


def resolve_device(device) -> torch.device:  # noqa: F821
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other strings go to :class:`torch.device`."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}", key="device") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device must be available on this machine, not {device!r} (no CUDA device)", key="device")
    return dev


# --------------------------------------------------------------------------- checkpoints

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "net", "module")


def _is_state_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def extract_state_dict(obj, model_keys, key: str | None = None) -> dict:
    """Find the model's state dict inside a loaded checkpoint.

    Accepts a bare state dict, the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"model_state_dict": ...}``), a MONAI ``CheckpointSaver`` file (a dict keyed by the saved
    objects' names, e.g. ``{"net": ..., "opt": ...}``) and ``module.`` prefixes of
    ``DataParallel``/``DistributedDataParallel``. ``key`` names the entry explicitly
    (``"a::b"`` or ``"a.b"`` for nested wrappers). The candidate whose keys match the model's
    best is returned.
    """
    model_keys = set(model_keys)
    if key is not None:
        node = obj
        for part in str(key).replace("::", ".").split("."):
            if not isinstance(node, Mapping) or part not in node:
                options = list(node) if isinstance(node, Mapping) else []
                raise ConfigError(
                    f"checkpoint_key must name an entry of the checkpoint, not {key!r}"
                    f" (entries: {options}){_did_you_mean(part, options)}",
                    key="checkpoint_key",
                )
            node = node[part]
        candidates = [node]
    else:
        candidates = [obj]
        if isinstance(obj, Mapping):
            candidates += [obj[k] for k in _WRAPPER_KEYS if k in obj]
            candidates += [v for v in obj.values() if isinstance(v, Mapping)]
    best, best_score = None, -1.0
    for cand in candidates:
        if not _is_state_dict(cand):
            continue
        for prefix in ("", "module.", "model."):
            state = _strip_prefix(cand, prefix) if prefix else dict(cand)
            score = len(model_keys & set(state)) / max(len(model_keys | set(state)), 1)
            if score > best_score:
                best, best_score = state, score
    if best is None:
        entries = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ConfigError(
            f"checkpoint must hold a state dict (bare, or under 'state_dict', 'model' or a "
            f"CheckpointSaver name), not {entries}; set checkpoint_key to the entry that holds it",
            key="checkpoint",
        )
    return best


def load_checkpoint(model, path, *, key: str | None = None, strict: bool = True) -> None:
    """Load weights into ``model`` from ``path`` with ``torch.load(weights_only=True)``.

    See :func:`extract_state_dict` for the layouts understood. Raises :class:`ConfigError`
    (key ``checkpoint``) when the file cannot be read or its weights do not fit the network.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint must be an existing file, not '{path}'", key="checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, objects refused by weights_only
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(err).__name__)
        detail = detail.replace("WeightsUnpickler error: ", "").split(" was not an allowed global")[0]
        raise ConfigError(
            f"checkpoint must be a file torch.load(weights_only=True) can read, not '{path}' ({detail}); "
            "save the model's state_dict() rather than the model object",
            key="checkpoint",
        ) from err
    state = extract_state_dict(obj, model.state_dict().keys(), key=key)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ConfigError(
            f"checkpoint must hold weights for network_def, not those in '{path}': {err}",
            key="checkpoint",
        ) from err


# --------------------------------------------------------------------------- data listing


@dataclass(frozen=True)
class Case:
    """One case of a dataset: an identifier (used for output folders), an image and an optional label."""

    id: str
    image: Path
    label: Path | None = None


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _safe_id(text: str) -> str:
    return "".join(c if (c.isalnum() or c in "-_.") else "_" for c in text).strip("._") or "case"


def _label_for(image: Path, label_folder: Path) -> Path | None:
    stem = _strip_suffix(image.name)
    names = [image.name]
    if stem.endswith("_0000"):  # nnU-Net: case_0000.nii.gz -> case.nii.gz
        names.append(stem[: -len("_0000")] + image.name[len(stem) :])
    for name in names:
        if (label_folder / name).exists():
            return label_folder / name
    return None


def _unique(cases: list[Case], key: str) -> list[Case]:
    seen: dict[str, Path] = {}
    for case in cases:
        if case.id in seen:
            raise ConfigError(
                f"{key} must list images with distinct names, not both '{seen[case.id]}' and '{case.image}'"
                f" (both would write to '{case.id}')",
                key=key,
            )
        seen[case.id] = case.image
    return cases


def _entry(entry, index, base: Path, key: str) -> tuple[Path, Path | None]:
    if isinstance(entry, (str, os.PathLike)):
        return base / Path(entry), None
    if isinstance(entry, Mapping):
        if "image" not in entry:
            raise ConfigError(
                f"{key}[{index}] must be a path or a mapping with an 'image' entry, not {dict(entry)!r}",
                key=f"{key}[{index}]",
            )
        label = entry.get("label")
        return base / Path(entry["image"]), (base / Path(label) if label else None)
    raise ConfigError(
        f"{key}[{index}] must be a path or a mapping with 'image' (and 'label'), not {type(entry).__name__}",
        key=f"{key}[{index}]",
    )


def list_cases(data: Mapping, *, base: str | os.PathLike = ".") -> list[Case]:
    """The cases a ``data`` section describes, in a stable (sorted or listed) order.

    - ``folder`` + ``glob`` (default ``*.nii.gz``, ``**`` recurses) and an optional
      ``label_folder`` whose files have the image's name (or the nnU-Net name without ``_0000``);
    - ``files``: a list of paths or of ``{image: ..., label: ...}`` mappings;
    - ``dataset_json``: an MSD-style ``dataset.json`` and its ``section`` (``training``,
      ``test``, ...) listing paths or ``{image, label}`` mappings relative to the json file.

    Files are not opened here: an unreadable file fails its own case, not the listing.
    """
    base = Path(base)
    unknown = [k for k in data if k not in SECTIONS["data"]]
    if unknown:
        raise ConfigError(
            f"data must only have keys {sorted(SECTIONS['data'])}, not '{unknown[0]}'"
            f"{_did_you_mean(unknown[0], SECTIONS['data'])}",
            key=f"data.{unknown[0]}",
        )
    given = [k for k in ("folder", "files", "dataset_json") if data.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(
            "data must set exactly one of 'folder', 'files' or 'dataset_json', "
            f"not {given if given else 'none of them'}",
            key="data",
        )
    kind = given[0]
    cases: list[Case] = []
    if kind == "folder":
        folder = base / Path(data["folder"])
        if not folder.is_dir():
            raise ConfigError(f"data.folder must be an existing folder, not '{folder}'", key="data.folder")
        pattern = data.get("glob") or "*.nii.gz"
        label_folder = data.get("label_folder")
        label_folder = base / Path(label_folder) if label_folder else None
        if label_folder is not None and not label_folder.is_dir():
            raise ConfigError(
                f"data.label_folder must be an existing folder, not '{label_folder}'", key="data.label_folder"
            )
        images = sorted(p for p in folder.glob(pattern) if p.is_file())
        for image in images:
            rel = image.relative_to(folder)
            case_id = _safe_id("__".join([*rel.parts[:-1], _strip_suffix(rel.name)]))
            label = _label_for(image, label_folder) if label_folder is not None else None
            cases.append(Case(case_id, image, label))
        if not cases:
            raise ConfigError(f"data.glob must match at least one file in '{folder}', not {pattern!r}", key="data.glob")
    elif kind == "files":
        files = data["files"]
        if isinstance(files, (str, os.PathLike)) or not isinstance(files, Sequence) or not files:
            raise ConfigError(f"data.files must be a non-empty list, not {files!r}", key="data.files")
        for i, entry in enumerate(files):
            image, label = _entry(entry, i, base, "data.files")
            cases.append(Case(_safe_id(_strip_suffix(image.name)), image, label))
    else:
        path = base / Path(data["dataset_json"])
        try:
            with open(path) as f:
                listing = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"data.dataset_json must be a readable JSON file, not '{path}' ({err})", key="data.dataset_json"
            ) from err
        section = data.get("section") or "test"
        lists = {k: v for k, v in listing.items() if isinstance(v, list)} if isinstance(listing, dict) else {}
        if section not in lists:
            raise ConfigError(
                f"data.section must name a list of '{path.name}' ({sorted(lists)}), not {section!r}"
                f"{_did_you_mean(section, lists)}",
                key="data.section",
            )
        if not lists[section]:
            raise ConfigError(f"data.section {section!r} of '{path}' must not be empty", key="data.section")
        for i, entry in enumerate(lists[section]):
            image, label = _entry(entry, i, path.parent, f"data.section {section!r}")
            cases.append(Case(_safe_id(_strip_suffix(image.name)), image, label))
    return _unique(cases, f"data.{kind}")


# --------------------------------------------------------------------------- the config


@dataclass
class RunConfig:
    """A parsed, validated run configuration.

    ``settings`` holds the plain values of volcam's own keys (defaults filled in, ``@`` and ``$``
    resolved); components (``network_def``, ``preprocessing``, ``cam.reshape``) are built on
    demand through ``parser`` so that errors name their key.
    """

    parser: Any
    path: Path | None = None
    settings: dict = field(default_factory=dict)

    # ---- plain settings
    def __getitem__(self, key: str):
        node: Any = self.settings
        for part in key.split("."):
            node = node[part]
        return node

    @property
    def spatial_dims(self) -> int:
        return int(self.settings["spatial_dims"])

    @property
    def device(self):
        return resolve_device(self.settings["device"])

    # ---- components
    def parsed(self, key: str, default=None):
        """The parsed content of ``key`` (dotted), built through the parser; errors name the key."""
        config_id = key.replace(".", "::")
        if config_id not in self.parser:
            return default
        try:
            return self.parser.get_parsed_content(config_id)
        except ConfigError:
            raise
        except Exception as err:
            cause = err.__cause__ or err
            detail = f"{err}" if cause is err else f"{err}; {type(cause).__name__}: {cause}"
            detail = detail.replace("\n set '_mode_=debug' to enter the debugging mode.", "")
            raise ConfigError(f"{key} could not be built: {detail}", key=key) from err

    def build_network(self, *, load_weights: bool = True):
        """The network of ``network_def`` (``eval()`` mode) with the checkpoint's weights, on the CPU."""
        import torch

        net = self.parsed("network_def")
        if not isinstance(net, torch.nn.Module):
            raise ConfigError(f"network_def must build a torch.nn.Module, not {type(net).__name__}", key="network_def")
        ckpt = self.settings["checkpoint"]
        if load_weights and ckpt:
            load_checkpoint(net, ckpt, key=self.settings["checkpoint_key"])
        return net.eval()

    def build_preprocessing(self):
        """A :class:`monai.transforms.Compose` of loading plus ``preprocessing``, over keys image/label.

        Files are loaded with ``LoadImaged`` + ``EnsureChannelFirstd`` unless the list starts
        with its own ``LoadImaged`` (as bundle lists do). Every dictionary transform is made
        tolerant to a missing ``label`` so that unlabelled cases share the pipeline.
        """
        from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform

        items = self.parsed("preprocessing", [])
        if isinstance(items, Compose):
            items = list(items.transforms)
        if items is None:
            items = []
        if not isinstance(items, (list, tuple)):
            items = [items]
        for i, t in enumerate(items):
            if not isinstance(t, MapTransform):
                raise ConfigError(
                    f"preprocessing[{i}] must be a dictionary transform over keys 'image' (and 'label'), "
                    f"not {type(t).__name__}; use the transform's 'd' version, e.g. "
                    f"{type(t).__name__}d(keys=['image', 'label'], ...)",
                    key=f"preprocessing[{i}]",
                )
            t.allow_missing_keys = True
        if not items or not isinstance(items[0], LoadImaged):
            items = [
                LoadImaged(keys=["image", "label"], image_only=True, allow_missing_keys=True),
                EnsureChannelFirstd(keys=["image", "label"], allow_missing_keys=True),
                *items,
            ]
        return Compose(items)

    def build_cam(self, model, **options):
        """The CAM method of the ``cam`` section, bound to ``model``; ``options`` (e.g.
        ``normalize=False``) are passed to the method on top of ``cam.method_args``."""
        import volcam

        cam = self.settings["cam"]
        try:
            cls = volcam.get_method(cam["method"])
        except Exception as err:
            raise ConfigError(f"cam.method: {err}", key="cam.method") from err
        reshape = self.parsed("cam.reshape") if cam["reshape"] is not None else None
        kwargs = {**(cam["method_args"] or {}), **options}
        try:
            return cls(
                model,
                cam["target_layers"],
                layer_output=_selector(cam["layer_output"]),
                model_output=_selector(cam["model_output"]),
                reshape=reshape,
                **kwargs,
            )
        except ConfigError:
            raise
        except Exception as err:
            key = "cam.target_layers" if type(err).__name__.startswith("Layer") else "cam"
            raise ConfigError(f"{key}: {err}", key=key) from err

    def list_cases(self) -> list[Case]:
        return list_cases(self.settings["data"])

    @property
    def class_names(self) -> dict[int, str]:
        """Class index -> name used in file names and the summary (``class1`` when unnamed)."""
        t = self.settings["targets"]
        names = t["names"]
        out = {}
        for c in t["classes"]:
            if isinstance(names, Mapping) and (c in names or str(c) in names):
                out[c] = _safe_id(str(names.get(c, names.get(str(c)))))
            elif isinstance(names, (list, tuple)) and 0 <= c < len(names):
                out[c] = _safe_id(str(names[c]))
            else:
                out[c] = f"class{c}"
        return out


def _selector(value):
    """Selectors in YAML: an int, a str, or a list path (made a tuple)."""
    if isinstance(value, list):
        return tuple(value)
    return value


def _check_section(name: str, raw) -> dict:
    """Defaults filled in; unknown keys rejected with a did-you-mean."""
    defaults = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name} must be a mapping of settings, not {type(raw).__name__}", key=name)
    for k in raw:
        if k not in defaults:
            raise ConfigError(
                f"{name}.{k} is not a setting of {name} (settings: {', '.join(defaults)}){_did_you_mean(k, defaults)}",
                key=f"{name}.{k}",
            )
    out = {k: (v if not isinstance(v, (dict, list)) else type(v)(v)) for k, v in defaults.items()}
    out.update(raw)
    return out


def _as_int_list(value, key: str, length: int | None = None, minimum: int = 1) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * (length or 1)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key} must be a list of integers, not {value!r}", key=key)
    if length is not None and len(value) != length:
        raise ConfigError(f"{key} must have {length} entries (one per spatial axis), not {list(value)}", key=key)
    if any(v < minimum for v in value):
        raise ConfigError(f"{key} must hold integers >= {minimum}, not {list(value)}", key=key)
    return list(value)


def _resolved(parser, config_id: str):
    """Parsed content of a plain setting (``@`` references and ``$`` expressions resolved)."""
    try:
        return parser.get_parsed_content(config_id)
    except Exception as err:
        key = _id_to_key(config_id)
        raise ConfigError(f"{key} could not be resolved: {err}", key=key) from err


def _plain(parser, config_id: str, raw):
    """Resolve a raw setting only when it uses a reference or an expression."""

    def uses_refs(v) -> bool:
        if isinstance(v, str):
            return v.startswith(("@", "$", "%"))
        if isinstance(v, Mapping):
            return any(uses_refs(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return any(uses_refs(x) for x in v)
        return False

    return _resolved(parser, config_id) if uses_refs(raw) else raw


def load_config(source, overrides: Sequence[str] | Mapping[str, Any] = ()) -> RunConfig:
    """Read and validate a run configuration.

    Args:
        source: a ``.yaml``/``.yml``/``.json`` path, or a dictionary.
        overrides: ``"key=value"`` strings (see :func:`parse_override`) or a mapping of
            dotted keys to values, applied after reading.

    Returns:
        a :class:`RunConfig`. Raises :class:`ConfigError` naming the key that is wrong.
    """
    from monai.bundle import ConfigParser

    path = None
    if isinstance(source, Mapping):
        content = _deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"CONFIG must be an existing .yaml/.json file, not '{path}'", key="CONFIG")
        try:
            content = ConfigParser.load_config_file(path)
        except Exception as err:
            raise ConfigError(f"CONFIG must be valid YAML or JSON, not '{path}': {err}", key="CONFIG") from err
        if not isinstance(content, Mapping):
            raise ConfigError(f"CONFIG must hold a mapping of keys, not {type(content).__name__}", key="CONFIG")
    content = dict(content)
    content.setdefault("config_dir", str(path.parent.resolve()) if path is not None else os.getcwd())
    parser = ConfigParser(content)

    pairs = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for config_id, value in pairs:
        config_id = str(config_id).replace(".", "::") if "::" not in str(config_id) else str(config_id)
        parts = config_id.split("::")
        if parts[0] in SECTIONS and len(parts) > 1 and parts[1] not in SECTIONS[parts[0]]:
            key = _id_to_key(config_id)
            raise ConfigError(
                f"--override {key}: {parts[1]} is not a setting of {parts[0]}"
                f"{_did_you_mean(parts[1], SECTIONS[parts[0]])}",
                key=key,
            )
        try:
            parser.set(value, config_id, recursive=True)
        except (KeyError, IndexError, ValueError, TypeError) as err:
            key = _id_to_key(config_id)
            raise ConfigError(f"--override {key} must name an entry of the config, not ({err})", key=key) from err

    raw = parser.get()
    if raw.get("network_def") is None:
        raise ConfigError(
            f"network_def is required (a _target_ mapping building the network){_did_you_mean('network_def', raw)}",
            key="network_def",
        )
    settings: dict[str, Any] = {}
    for k, default in TOP_LEVEL.items():
        if k in SECTIONS:
            section = _check_section(k, raw.get(k))
            settings[k] = {
                name: _plain(parser, f"{k}::{name}", v) if name in (raw.get(k) or {}) and name != "reshape" else v
                for name, v in section.items()
            }
        elif k not in ("network_def", "preprocessing"):
            settings[k] = _plain(parser, k, raw[k]) if k in raw else default
    _validate(settings, raw)
    return RunConfig(parser=parser, path=path, settings=settings)


def _deepcopy(obj):
    import copy

    return copy.deepcopy(dict(obj))


def _validate(s: dict, raw: Mapping) -> None:
    # spatial dims: explicit, else from the network definition, else 3
    dims = s["spatial_dims"]
    if dims is None:
        net = raw.get("network_def") or {}
        dims = net.get("spatial_dims", net.get("dimensions", 3)) if isinstance(net, Mapping) else 3
        dims = dims if isinstance(dims, int) else 3
    if dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, not {dims!r}", key="spatial_dims")
    s["spatial_dims"] = dims
    if s["checkpoint"] is not None and not isinstance(s["checkpoint"], (str, os.PathLike)):
        raise ConfigError(f"checkpoint must be a path or null, not {s['checkpoint']!r}", key="checkpoint")
    if s["input_size"] is not None:
        s["input_size"] = _as_int_list(s["input_size"], "input_size", dims)

    cam = s["cam"]
    if not isinstance(cam["method"], str):
        raise ConfigError(f"cam.method must be a method name, not {cam['method']!r}", key="cam.method")
    layers = cam["target_layers"]
    if layers is None or layers == [] or layers == "":
        raise ConfigError(
            "cam.target_layers is required (a dotted module name or a list of them; "
            "`volcam layers CONFIG` lists the candidates)",
            key="cam.target_layers",
        )
    if not (isinstance(layers, str) or (isinstance(layers, list) and all(isinstance(x, str) for x in layers))):
        raise ConfigError(
            f"cam.target_layers must be a dotted module name or a list of them, not {layers!r}",
            key="cam.target_layers",
        )
    if not isinstance(cam["method_args"] or {}, Mapping):
        raise ConfigError(f"cam.method_args must be a mapping, not {cam['method_args']!r}", key="cam.method_args")

    t = s["targets"]
    classes = t["classes"]
    if classes is None:
        raise ConfigError(
            "targets.classes is required (the output channels to explain, e.g. [1, 2])", key="targets.classes"
        )
    if isinstance(classes, int) and not isinstance(classes, bool):
        classes = [classes]
    t["classes"] = _as_int_list(classes, "targets.classes", minimum=0)
    if len(set(t["classes"])) != len(t["classes"]):
        raise ConfigError(f"targets.classes must not repeat a class, not {t['classes']}", key="targets.classes")
    if t["mask"] not in MASKS:
        raise ConfigError(
            f"targets.mask must be one of {', '.join(MASKS)}, not {t['mask']!r}{_did_you_mean(t['mask'], MASKS)}",
            key="targets.mask",
        )
    if t["activation"] not in ("softmax", "sigmoid"):
        raise ConfigError(
            f"targets.activation must be 'softmax' or 'sigmoid', not {t['activation']!r}", key="targets.activation"
        )
    if t["names"] is not None and not isinstance(t["names"], (Mapping, list)):
        raise ConfigError(f"targets.names must be a mapping or a list, not {t['names']!r}", key="targets.names")

    sw = s["sliding_window"]
    if sw["roi_size"] is not None:
        sw["roi_size"] = _as_int_list(sw["roi_size"], "sliding_window.roi_size", dims)
    if not isinstance(sw["sw_batch_size"], int) or sw["sw_batch_size"] < 1:
        raise ConfigError(
            f"sliding_window.sw_batch_size must be an integer >= 1, not {sw['sw_batch_size']!r}",
            key="sliding_window.sw_batch_size",
        )
    if not isinstance(sw["overlap"], (int, float)) or not 0 <= sw["overlap"] < 1:
        raise ConfigError(
            f"sliding_window.overlap must be a number in [0, 1), not {sw['overlap']!r}", key="sliding_window.overlap"
        )
    if sw["mode"] not in ("gaussian", "constant"):
        raise ConfigError(
            f"sliding_window.mode must be 'gaussian' or 'constant', not {sw['mode']!r}", key="sliding_window.mode"
        )

    d = s["data"]
    if not isinstance(d["num_workers"], int) or d["num_workers"] < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, not {d['num_workers']!r}", key="data.num_workers")
    if not raw.get("data"):
        raise ConfigError("data is required (one of data.folder, data.files or data.dataset_json)", key="data")

    o = s["outputs"]
    axes = o["axes"]
    if isinstance(axes, str):
        axes = [axes]
    if not isinstance(axes, list) or any(a not in AXES for a in axes):
        bad = next((a for a in (axes if isinstance(axes, list) else [axes]) if a not in AXES), axes)
        raise ConfigError(
            f"outputs.axes must list some of {', '.join(AXES)}, not {bad!r}{_did_you_mean(bad, AXES)}",
            key="outputs.axes",
        )
    o["axes"] = list(dict.fromkeys(axes))
    if o["figure"] in (None, False, "none"):
        o["figure"] = None
    elif o["figure"] is True:
        o["figure"] = "orthogonal"
    elif o["figure"] not in FIGURES:
        raise ConfigError(
            f"outputs.figure must be one of {', '.join(FIGURES)} or false, not {o['figure']!r}"
            f"{_did_you_mean(o['figure'], FIGURES)}",
            key="outputs.figure",
        )
    if o["window"] is not None and not (
        isinstance(o["window"], (list, tuple))
        and len(o["window"]) == 2
        and all(isinstance(v, (int, float)) for v in o["window"])
        and o["window"][0] < o["window"][1]
    ):
        raise ConfigError(
            f"outputs.window must be [low, high] with low < high, or null, not {o['window']!r}", key="outputs.window"
        )
    if not isinstance(o["dir"], (str, os.PathLike)) or not str(o["dir"]):
        raise ConfigError(f"outputs.dir must be a folder path, not {o['dir']!r}", key="outputs.dir")
    for flag in ("heat_nifti", "raw_heat", "pngs"):
        if not isinstance(o[flag], bool):
            raise ConfigError(f"outputs.{flag} must be true or false, not {o[flag]!r}", key=f"outputs.{flag}")
    if not isinstance(o["alpha"], (int, float)) or not 0 <= o["alpha"] <= 1:
        raise ConfigError(f"outputs.alpha must be a number in [0, 1], not {o['alpha']!r}", key="outputs.alpha")
