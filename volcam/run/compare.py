"""``volcam compare``: which method and layer explain this network best, by measurement.

Over a few cases of the dataset (default 3, chosen so that every configured class is predicted
in at least one of them), every method at a set of candidate layers (default: the bottleneck
and each decoder stage, found by :func:`volcam.layers.candidate_layers`) is scored, per case
and class:

- ``energy_in_prediction`` (and ``energy_in_label`` with a label): the fraction of the map's
  sum inside the region; a random map scores the region's share of the volume
  (``random_energy``), and ``energy_ratio`` is how many times better the map does;
- ``pointing``: whether the map's peak lies inside the predicted region;
- ``deletion_auc`` and ``insertion_auc`` (:mod:`volcam.metrics.faithfulness`);
- ``empty``: the map is zero everywhere;
- on the first case, a randomisation check: the map of a copy of the network with every layer
  re-initialised, compared with the original inside the body (Spearman); a map that explains
  the network changes (``randomised_spearman`` well below 1);
- the time and peak memory of computing the layer's maps.

It is cheap: the gradient methods differ only in how they combine a layer's activations and
gradients, so all of them at one layer come from one forward and one backward pass
(:func:`volcam.explain_methods`); perturbation methods (Score-CAM, Ablation-CAM) run their
own forward passes and are only included when asked (``with_perturbation``).

The recommendation is the (method, layer) with the highest mean energy inside the prediction
among those whose peak lies inside the prediction in most cases, whose maps are rarely empty,
and which change under randomisation; the reason is given in one line.

Writes to ``output`` (default ``<outputs.dir>/compare``): ``compare.csv`` (one row per case,
class, method and layer), ``compare.md`` (the means as a table, and the recommendation),
``summary.json``, ``plots/energy.png`` (energy by method and layer) and ``plots/montage.png``
(the maps of one case: methods in rows, layers in columns, the same slice through the
predicted region).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from volcam.errors import ConfigError
from volcam.run.compare_report import markdown, means_of, recommend, write_outputs
from volcam.run.config import RunConfig

__all__ = ["CompareOptions", "Comparison", "compare", "PERTURBATION_METHODS"]

log = logging.getLogger(__name__)

PERTURBATION_METHODS = ("scorecam", "ablationcam")


@dataclass(frozen=True)
class CompareOptions:
    """What ``volcam compare`` measures (its command-line options).

    Attributes:
        output: output folder (default ``<outputs.dir>/compare``).
        cases: how many cases (chosen to cover every class).
        methods: registry names (default: every method of one layer's activations and
            gradients, plus Score-CAM and Ablation-CAM with ``with_perturbation``).
        layers: dotted names of the layers to compare (default: the bottleneck and each decoder
            stage).
        with_perturbation: also compare the perturbation methods (many forward passes each).
        steps: steps of the deletion and insertion curves.
        batch_size: images per forward pass for the curves.
        randomisation: run the randomisation check on the first case.
        seed: seed of the re-initialisation and of the curves' tie-breaking.
    """

    output: str | None = None
    cases: int = 3
    methods: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    with_perturbation: bool = False
    steps: int = 10
    batch_size: int = 8
    randomisation: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        from volcam.checks import positive_int

        positive_int(self.cases, "cases", error=ConfigError)
        positive_int(self.steps, "steps", error=ConfigError)
        positive_int(self.batch_size, "batch_size", error=ConfigError)


@dataclass
class Comparison:
    """What :func:`compare` found and wrote.

    Attributes:
        output: the output folder.
        rows: one dictionary per case, class, method and layer (the ``compare.csv`` columns).
        means: one dictionary per method and layer: the means over cases and classes.
        recommendation: the chosen ``{"method", "layer", ...}`` mean row, or None.
        reason: the recommendation in one line.
    """

    output: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    means: list[dict[str, Any]] = field(default_factory=list)
    recommendation: dict[str, Any] | None = None
    reason: str = ""
    seconds: float = 0.0


def _methods(options: CompareOptions) -> list[str]:
    from volcam.methods import get_method
    from volcam.methods.shared import SHARED_METHODS

    names = list(options.methods) if options.methods else list(SHARED_METHODS)
    if options.with_perturbation:
        names += [m for m in PERTURBATION_METHODS if m not in names]
    for name in names:
        try:
            get_method(name)
        except Exception as err:
            raise ConfigError(str(err), key="methods") from err
    return names


def _choose_cases(runner: Any, cases: Sequence[Any], n: int, warn: Callable[[str], None]) -> list[tuple[Any, Any]]:
    """Up to ``n`` loaded cases, chosen so that every class is predicted in at least one."""
    from volcam.run.loading import load_case

    chosen: list[tuple[Any, Any]] = []
    spare: list[tuple[Any, Any]] = []
    missing = set(runner.classes)
    for case in cases:
        if len(chosen) >= n and not missing:
            break
        try:
            data = load_case(case, runner.pre, runner.config.spatial_dims)
        except Exception as err:  # an unreadable case is left out
            warn(f"volcam compare: case {case.id} left out: {err}")
            continue
        x = data["image"].as_tensor()[None].float().to(runner.device)
        with torch.no_grad():
            from volcam.selectors import select

            output = select(runner.model(x), runner.config.cam.model_output, what="model output")
        present = {c for c in runner.classes if bool(runner.predicted(output, c).any())}
        if present & missing or len(chosen) < n - len(missing):
            chosen.append((case, data))
            missing -= present
        else:
            spare.append((case, data))
    chosen += spare[: max(0, n - len(chosen))]
    return chosen[:n] if not missing else chosen


def _layers(runner: Any, x: torch.Tensor, options: CompareOptions) -> list[tuple[str, str]]:
    """``(name, role)`` of the layers to compare."""
    if options.layers:
        return [(name, "given") for name in options.layers]
    from volcam.layers import candidate_layers

    found = candidate_layers(runner.model, x)
    if not found:
        raise ConfigError(
            "compare needs layers: this network has no encoder-decoder shape that volcam can find; "
            "name them with --layers",
            key="layers",
        )
    return [(c.name, c.role) for c in found]


def _fraction(heat: torch.Tensor, region: torch.Tensor) -> float:
    """The share of the heat inside ``region``; 0 for an empty map (it points nowhere)."""
    total = float(heat.sum())
    return float((heat * region).sum()) / total if total > 0 else 0.0


def _randomised(model: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every layer that has parameters re-initialised."""
    from volcam.metrics.sanity import parameter_layers, randomise_module

    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    for i, name in enumerate(parameter_layers(work, x)):
        randomise_module(modules[name], seed + i)
    return work


def _maps(model: Any, x: torch.Tensor, layer: str, methods: list[str], target: Any, config: RunConfig) -> Any:

    from volcam.methods.shared import explain_methods

    cam = config.cam
    selector = cam.layer_output if layer in cam.target_layers else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty maps are counted in the table
        return explain_methods(model, x, layer, methods, target, layer_output=selector, model_output=cam.model_output)


def compare(
    config: RunConfig | str | Path | dict[str, Any],
    options: CompareOptions = CompareOptions(),
    *,
    say: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Comparison:
    """Compare methods and layers on the config's network and data (see the module docstring).

    ``config`` is a run configuration: a :class:`RunConfig`, the path of its YAML/JSON file, or
    the mapping itself. ``say`` and ``warn`` receive the progress lines and the warnings
    (default: this module's logger).
    """
    from volcam.metrics.faithfulness import faithfulness
    from volcam.metrics.similarity import body_region, spearman_in
    from volcam.run.config import load_config
    from volcam.run.memory import peak_bytes
    from volcam.run.runner import Runner

    if not isinstance(config, RunConfig):
        config = load_config(config)
    say = say or log.info
    warn = warn or log.warning
    started = time.perf_counter()
    out = Path(options.output) if options.output else Path(config.outputs.dir) / "compare"
    config.require_network("volcam compare")
    runner = Runner(config)
    methods = _methods(options)
    cases = _choose_cases(runner, list(config.list_cases()), options.cases, warn)
    if not cases:
        raise ConfigError("compare needs at least one readable case in the data section", key="data")
    first = cases[0][1]["image"].as_tensor()[None].float().to(runner.device)
    layers = _layers(runner, first, options)
    say(
        f"volcam compare: {len(cases)} case(s) ({', '.join(c.id for c, _ in cases)}), {len(methods)} method(s), "
        f"{len(layers)} layer(s): {', '.join(name for name, _ in layers)}"
    )
    result = Comparison(out)
    weak = 0  # maps whose deletion/insertion baseline barely changes the score
    montage: dict[tuple[str, str], torch.Tensor] = {}
    for index, (case, data) in enumerate(cases):
        x = data["image"].as_tensor()[None].float().to(runner.device)
        label = data["label"].as_tensor().to(runner.device) if "label" in data else None
        body = body_region(x)
        random_model = _randomised(runner.model, x, options.seed) if options.randomisation and index == 0 else None
        for c in runner.classes:
            target = runner.target(c, label)
            for layer, role in layers:
                start = time.perf_counter()
                maps: dict[str, Any] = {}

                def compute(box: dict[str, Any] = maps, layer: str = layer, target: Any = target, x: Any = x) -> None:
                    box.update(_maps(runner.model, x, layer, methods, target, config))

                peak = peak_bytes(compute, runner.device)
                seconds = time.perf_counter() - start
                random_maps = _maps(random_model, x, layer, methods, target, config) if random_model else None
                output = next(iter(maps.values())).output
                pred = runner.predicted(output, c)[None, None]
                region_share = float(pred.float().mean())
                for method, res in maps.items():
                    heat = res.heat
                    hottest = torch.nonzero(heat[0, 0] == heat[0, 0].max())[0]
                    energy = _fraction(heat, pred)
                    row: dict[str, Any] = {
                        "case": case.id,
                        "class": c,
                        "class_name": runner.names[c],
                        "method": method,
                        "layer": layer,
                        "role": role,
                        "energy_in_prediction": energy,
                        "energy_in_label": _fraction(heat, runner.label_region(label, c)[None, None])
                        if label is not None
                        else float("nan"),
                        "random_energy": region_share,
                        "energy_ratio": energy / region_share if region_share > 0 else float("nan"),
                        "pointing": bool(pred[(0, 0, *hottest.tolist())]) if float(heat.max()) > 0 else False,
                        "empty": not bool(heat.max() > 0),
                        "seconds": seconds / len(maps),  # one pass for every method: shared
                        "peak_mb": peak / 2**20,
                    }
                    if float(heat.max()) > 0:
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            curves = faithfulness(
                                runner.model,
                                x,
                                heat,
                                target,
                                steps=options.steps,
                                batch_size=options.batch_size,
                                model_output=config.cam.model_output,
                                generator=torch.Generator().manual_seed(options.seed),
                            )
                        weak += any("baseline image is weak" in str(w.message) for w in caught)
                        row["deletion_auc"] = float(curves["deletion"].auc[0])
                        row["insertion_auc"] = float(curves["insertion"].auc[0])
                    if random_maps is not None:
                        row["randomised_spearman"] = float(spearman_in(heat, random_maps[method].heat, body)[0])
                    result.rows.append(row)
                    if index == 0 and c == runner.classes[0]:
                        montage[(method, layer)] = heat[0, 0].detach().cpu()
        say(f"  {case.id}: done in {time.perf_counter() - started:.0f} s")
    if weak:
        warn(
            f"volcam compare: for {weak} map(s) the blurred baseline of the deletion and insertion curves removes "
            "less than half of the score: their AUCs are rescaled by a small difference (compare them with care)"
        )
    result.means = means_of(result.rows, methods, layers)
    result.recommendation, result.reason = recommend(result.means)
    write_outputs(result, cases[0], runner, methods, layers, montage)
    result.seconds = time.perf_counter() - started
    say(markdown(result.means).rstrip())
    say(f"volcam compare: {result.reason}")
    say(f"volcam compare: wrote {out}/compare.csv, compare.md, summary.json and plots/ in {result.seconds:.0f} s")
    return result
