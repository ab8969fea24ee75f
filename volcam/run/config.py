"""Run configurations: MONAI bundle-style YAML/JSON read with :class:`monai.bundle.ConfigParser`.

A config is a dictionary. Components are built from ``_target_`` entries, ``@key`` refers to
another entry and ``$expr`` is evaluated, exactly as in a MONAI bundle, so a ``network_def``
or a list of preprocessing transforms can be copied from any bundle. The keys are listed in
:mod:`volcam.run.schema`; free entries for ``@`` references go under ``vars``
(``vars: {keys: [image, label]}``, then ``keys: "@vars::keys"``).

**A config is code.** ``$`` expressions run arbitrary Python and ``_target_`` can name any
callable, exactly as in MONAI bundles. Treat a config like a script: run configs from others
only with ``allow_eval=False`` (``volcam run --no-eval``), which refuses ``$`` expressions and
``%`` macros and only builds ``_target_`` components from MONAI's networks and transforms,
``torch.nn`` and volcam.

Relative paths are taken from the current directory; ``config_dir`` holds the folder of the
config file, so ``"$@config_dir + '/model.pt'"`` names a file next to the config.

Overrides (``volcam run CONFIG --override key=value``) use dotted keys (``cam.method=hirescam``;
MONAI's ``::`` works too) and YAML values (``targets.classes=[1,2]``, ``checkpoint=none``).
Every error names the key that is wrong, as a :class:`volcam.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ConfigError
from volcam.run.checkpoint import checkpoint_path
from volcam.run.no_eval import check_no_eval
from volcam.run.outputs import OutputSettings
from volcam.run.overrides import apply_overrides, id_to_key, parse_override, resolve_device
from volcam.run.schema import MAP_SECTIONS, SECTIONS, TOP_LEVEL
from volcam.run.settings import (
    CamSettings,
    DataSettings,
    SlidingSettings,
    TargetSettings,
    check_section,
    int_list,
)

__all__ = ["RunConfig", "load_config", "parse_override", "resolve_device"]


@dataclass(frozen=True)
class RunConfig:
    """A parsed, validated run configuration.

    The sections are frozen dataclasses (:mod:`volcam.run.settings`); components
    (``network_def``, ``preprocessing``, ``cam.reshape``) are built on demand through
    ``parser`` so that errors name their key.
    """

    parser: Any
    path: Path | None
    checkpoint: str | None
    checkpoint_key: str | None
    device_name: str
    spatial_dims: int
    input_size: tuple[int, ...] | None
    python_path: tuple[str, ...]
    config_dir: str
    cam: CamSettings
    targets: TargetSettings
    sliding: SlidingSettings
    data: DataSettings
    outputs: OutputSettings
    raw: Mapping[str, Any]
    allow_eval: bool = True
    nnunet: Mapping[str, Any] | None = None

    def require_network(self, command: str) -> None:
        """Refuse an ``nnunet`` config in a command that needs ``network_def``."""
        if self.nnunet is not None:
            raise ConfigError(
                f"{command} needs a config with network_def and checkpoint, not an nnunet section; nnU-Net models "
                "are explained by volcam run and volcam nnunet",
                key="nnunet",
            )

    # ---- plain settings
    def __getitem__(self, key: str) -> Any:
        """Dotted access kept for scripts: ``config["cam.method"]``, ``config["outputs.dir"]``."""
        section, _, name = key.partition(".")
        objects = {
            "cam": self.cam,
            "targets": self.targets,
            "sliding_window": self.sliding,
            "data": self.data,
            "outputs": self.outputs,
        }
        if section in objects and name:
            value = getattr(objects[section], name)
            return list(value) if isinstance(value, tuple) else value
        if key == "device":
            return self.device_name
        if key in ("checkpoint", "checkpoint_key", "spatial_dims", "config_dir"):
            return getattr(self, key)
        if key == "input_size":
            return None if self.input_size is None else list(self.input_size)
        raise KeyError(key)

    @property
    def device(self) -> Any:
        """The :class:`torch.device` of ``device`` (``auto``: CUDA when available)."""
        return resolve_device(self.device_name)

    @property
    def class_names(self) -> dict[int, str]:
        """Class index -> name used in file names and the summary (``class1`` when unnamed)."""
        return dict(self.targets.names)

    @property
    def out_channels(self) -> int | None:
        """``network_def.out_channels`` (or ``out_classes``) when the config gives it as a number."""
        net = self.raw.get("network_def") or {}
        for k in ("out_channels", "out_classes", "num_classes"):
            v = net.get(k) if isinstance(net, Mapping) else None
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def in_channels(self) -> int | None:
        net = self.raw.get("network_def") or {}
        v = net.get("in_channels") if isinstance(net, Mapping) else None
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def with_device(self, device: Any) -> RunConfig:
        return replace(self, device_name=str(device))

    def with_output_dir(self, folder: str | os.PathLike[str]) -> RunConfig:
        return replace(self, outputs=replace(self.outputs, dir=str(folder)))

    def with_layers(self, layers: Sequence[str]) -> RunConfig:
        """The same config with ``cam.target_layers`` set (the default layer, once chosen)."""
        return replace(self, cam=replace(self.cam, target_layers=tuple(layers)))

    def example_input(self, size: Sequence[int] | None = None) -> Any:
        """A zero input ``[1, C, *S]`` for the network: C from ``network_def.in_channels``; S from
        ``size``, else ``input_size``, else ``sliding_window.roi_size``, else 64 per axis."""
        import torch

        dims = self.spatial_dims
        shape = list(size or self.input_size or self.sliding.roi_size or [64] * dims)
        if len(shape) == 1:
            shape = shape * dims
        if len(shape) != dims:
            raise ConfigError(
                f"--input-size must have {dims} entries (one per spatial axis), not {shape}", key="input_size"
            )
        channels = self.in_channels
        if channels is None:
            net = self.parser.get("network_def") or {}
            given = net.get("in_channels") if isinstance(net, Mapping) else None
            channels = int(self.parsed("network_def.in_channels")) if given is not None else 1
        return torch.zeros(1, channels, *shape)

    def map_sections(self) -> dict[str, Any]:
        """The raw entries that affect the maps (after overrides), for the case records."""
        return {k: self.raw.get(k) for k in MAP_SECTIONS}

    def map_hash(self) -> str:
        """A hash of :meth:`map_sections` (canonical JSON)."""
        text = json.dumps(self.map_sections(), sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    # ---- components
    def parsed(self, key: str, default: Any = None) -> Any:
        """The parsed content of ``key`` (dotted), built through the parser; errors name the key."""
        config_id = key.replace(".", "::")
        if config_id not in self.parser:
            return default
        self._extend_path()
        try:
            return self.parser.get_parsed_content(config_id)
        except ConfigError:
            raise
        except Exception as err:
            cause = err.__cause__ or err
            detail = f"{err}" if cause is err else f"{err}; {type(cause).__name__}: {cause}"
            detail = detail.replace("\n set '_mode_=debug' to enter the debugging mode.", "")
            if "Cannot locate class or function path" in detail:
                detail += (
                    "; a class of your own must be importable: put its folder on the import path with "
                    "`python_path: [folder]` in the config (or --python-path folder)"
                )
            raise ConfigError(f"{key} could not be built: {detail}", key=key) from err

    def _extend_path(self) -> None:
        for folder in self.python_path:
            if folder not in sys.path:
                sys.path.insert(0, folder)

    def build_network(self, *, load_weights: bool = True) -> Any:
        """The network of ``network_def`` (``eval()`` mode) with the checkpoint's weights, on the CPU."""
        import torch

        from volcam.run.checkpoint import load_checkpoint

        net = self.parsed("network_def")
        if not isinstance(net, torch.nn.Module):
            raise ConfigError(f"network_def must build a torch.nn.Module, not {type(net).__name__}", key="network_def")
        if load_weights and self.checkpoint is not None:
            load_checkpoint(net, self.checkpoint, key=self.checkpoint_key)
        return net.eval()

    def build_preprocessing(self) -> Any:
        """A MONAI ``Compose``: loading, then ``preprocessing``, over keys image/label.

        Files are loaded with ``LoadImaged`` + ``EnsureChannelFirstd`` unless the list starts
        with its own ``LoadImaged`` (as bundle lists do). Every dictionary transform is made
        tolerant to a missing ``label`` so that unlabelled cases share the pipeline.
        """
        from monai.transforms import Compose, LoadImaged, MapTransform

        from volcam.run.loading import loading_transforms

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
            items = [*loading_transforms(), *items]
        return Compose(items)

    def build_cam(self, model: Any, method: str | None = None, **options: Any) -> Any:
        """The CAM method of the ``cam`` section (or ``method``, e.g. ``cam.fallback``, at the
        same layers), bound to ``model``; ``options`` (e.g. ``normalize=False``) are passed to
        the method on top of ``cam.method_args``."""
        import volcam

        cam = self.cam
        cls = volcam.get_method(method or cam.method)
        reshape = self.parsed("cam.reshape") if cam.reshape is not None else None
        kwargs = {**cam.method_args, **options}
        try:
            return cls(
                model,
                list(cam.target_layers),
                layer_output=cam.layer_output,
                model_output=cam.model_output,
                reshape=reshape,
                **kwargs,
            )
        except ConfigError:
            raise
        except Exception as err:
            key = "cam.target_layers" if type(err).__name__.startswith("Layer") else "cam"
            raise ConfigError(f"{key}: {err}", key=key) from err

    def list_cases(self) -> Any:
        """The cases of the ``data`` section (see :func:`volcam.run.cases.list_cases`)."""
        from volcam.run.cases import list_cases

        if self.nnunet is not None:
            from volcam.run.nnunet_runner import nnunet_cases

            return nnunet_cases(self, self.data.as_mapping())
        exclude = [Path(self.outputs.dir)]
        return list_cases(self.data.as_mapping(), exclude=exclude)


# --------------------------------------------------------------------------- loading


def _resolved(parser: Any, config_id: str) -> Any:
    """Parsed content of a plain setting (``@`` references and ``$`` expressions resolved)."""
    try:
        return parser.get_parsed_content(config_id)
    except Exception as err:
        key = id_to_key(config_id)
        raise ConfigError(f"{key} could not be resolved: {err}", key=key) from err


def _uses_refs(v: Any) -> bool:
    if isinstance(v, str):
        return v.startswith(("@", "$", "%"))
    if isinstance(v, Mapping):
        return any(_uses_refs(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_uses_refs(x) for x in v)
    return False


def _plain(parser: Any, config_id: str, raw: Any) -> Any:
    """Resolve a raw setting only when it uses a reference or an expression."""
    return _resolved(parser, config_id) if _uses_refs(raw) else raw


def _read(source: Any) -> tuple[dict[str, Any], Path | None]:
    from monai.bundle import ConfigParser

    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), None
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"CONFIG must be an existing .yaml/.json file, not '{path}'", key="CONFIG")
    try:
        content = ConfigParser.load_config_file(path)
    except Exception as err:
        raise ConfigError(f"CONFIG must be valid YAML or JSON, not '{path}': {err}", key="CONFIG") from err
    if not isinstance(content, Mapping):
        raise ConfigError(f"CONFIG must hold a mapping of keys, not {type(content).__name__}", key="CONFIG")
    return dict(content), path


def _spatial_dims(value: Any, raw: Mapping[str, Any]) -> int:
    dims = value
    if dims is None:
        net = raw.get("network_def") or {}
        dims = net.get("spatial_dims", net.get("dimensions", 3)) if isinstance(net, Mapping) else 3
        dims = dims if isinstance(dims, int) else 3
    if dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, not {dims!r}", key="spatial_dims")
    return int(dims)


def load_config(
    source: Any,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    allow_eval: bool = True,
    python_path: Sequence[str] = (),
) -> RunConfig:
    """Read and validate a run configuration.

    Args:
        source: a ``.yaml``/``.yml``/``.json`` path, or a dictionary.
        overrides: ``"key=value"`` strings (see :func:`parse_override`) or a mapping of
            dotted keys to values, applied after reading.
        allow_eval: False refuses ``$`` expressions, ``%`` macros and ``_target_`` components
            outside :data:`SAFE_TARGET_MODULES` (configs from others), before anything is
            evaluated.
        python_path: folders added to ``sys.path`` before components are built (on top of the
            config's own ``python_path``).

    Returns:
        a :class:`RunConfig`. Raises :class:`ConfigError` naming the key that is wrong.
    """
    from monai.bundle import ConfigParser

    content, path = _read(source)
    content.setdefault("config_dir", str(path.parent.resolve()) if path is not None else os.getcwd())
    if not allow_eval:
        check_no_eval(content)
    parser = ConfigParser(content)
    apply_overrides(parser, overrides)
    raw = parser.get()
    if not allow_eval:
        check_no_eval(raw)  # values given by --override too

    nnunet = None
    if raw.get("nnunet") is not None:
        from volcam.run.nnunet_runner import nnunet_section

        nnunet = nnunet_section(raw)
    if raw.get("network_def") is None and nnunet is None:
        raise ConfigError(
            "network_def is required (a _target_ mapping building the network, or an nnunet section naming a "
            f"results folder){did_you_mean('network_def', raw)}",
            key="network_def",
        )
    unknown = [k for k in raw if k not in TOP_LEVEL]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"{k} is not a key of a run config (keys: {', '.join(TOP_LEVEL)}){did_you_mean(k, TOP_LEVEL)}; "
            "put free entries for @references under `vars:`",
            key=str(k),
        )
    if raw.get("vars") is not None and not isinstance(raw.get("vars"), Mapping):
        raise ConfigError(f"vars must be a mapping of free entries, not {raw['vars']!r}", key="vars")

    def plain(k: str) -> Any:
        return _plain(parser, k, raw[k]) if k in raw else TOP_LEVEL[k]

    sections = {}
    for name in SECTIONS:
        section = check_section(name, raw.get(name))
        given = raw.get(name) or {}
        sections[name] = {
            k: _plain(parser, f"{name}::{k}", v) if k in given and k != "reshape" else v for k, v in section.items()
        }
    if not raw.get("data"):
        raise ConfigError("data is required (one of data.folder, data.files or data.dataset_json)", key="data")

    dims = _spatial_dims(plain("spatial_dims"), raw)
    folders = plain("python_path") or []
    if isinstance(folders, str):
        folders = [folders]
    if not isinstance(folders, (list, tuple)) or not all(isinstance(f, (str, os.PathLike)) for f in folders):
        raise ConfigError(f"python_path must be a list of folders, not {folders!r}", key="python_path")
    base = Path(str(plain("config_dir")))
    folders = [str((base / f).resolve()) if not os.path.isabs(f) else str(f) for f in folders]
    folders += [str(Path(f).resolve()) for f in python_path]
    input_size = plain("input_size")
    device = plain("device")
    if not isinstance(device, str):
        device = str(device)
    return RunConfig(
        parser=parser,
        path=path,
        checkpoint=None if nnunet is not None else checkpoint_path(plain("checkpoint"), "checkpoint" in raw),
        checkpoint_key=plain("checkpoint_key"),
        device_name=device,
        spatial_dims=dims,
        input_size=None if input_size is None else int_list(input_size, "input_size", dims),
        python_path=tuple(dict.fromkeys(folders)),
        config_dir=str(plain("config_dir")),
        cam=CamSettings.from_raw(sections["cam"]),
        targets=TargetSettings.from_raw(sections["targets"]),
        sliding=SlidingSettings.from_raw(sections["sliding_window"], dims),
        data=DataSettings.from_raw(sections["data"]),
        outputs=OutputSettings.from_raw(sections["outputs"]),
        raw=copy.deepcopy(dict(raw)),
        allow_eval=allow_eval,
        nnunet=nnunet,
    )
