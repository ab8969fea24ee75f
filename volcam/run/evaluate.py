"""``volcam evaluate``: is the map right? Localisation, faithfulness and sanity checks.

Reads the same configuration as ``volcam run`` (network, checkpoint, CAM method and layer,
classes, preprocessing, data) and, for every case and class:

- explains the class with the configured CAM, and draws a random map (independent uniform
  noise) as the reference a useful map must beat;
- localisation of both maps against the case's label of the class (or, for unlabelled
  cases, the predicted region): energy pointing game, pointing game, IoU and Dice at the
  mask's volume (or ``--level``), and the same per connected component (lesion-wise);
- deletion and insertion curves of both maps for the score the CAM explains, and their areas;
- on the first ``sanity_cases`` cases: cascading and independent model-parameter
  randomisation and label randomisation (Adebayo et al. 2018).

Writes to ``output`` (default ``<outputs.dir>/evaluation``)::

    metrics.csv      one row per case, class and map (the CAM method, random)
    components.csv   one row per case, class, map and connected component of the reference
    sanity.csv       one row per case, class, check and step
    curves.json      the deletion/insertion curves, per case, class and map
    summary.json     settings and the means per class and map, sanity flags
    plots/curves_<class>.png           deletion and insertion curves, all cases
    plots/sanity_<case>_<class>.png    Spearman and SSIM per randomisation step

Cases are explained whole (no sliding window): a faithfulness curve needs the model's
score of the whole perturbed image.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volcam.errors import ConfigError
from volcam.run.config import RunConfig
from volcam.run.evaluate_report import SANITY_KINDS, mean, number, plot, summarise, write_outputs
from volcam.run.evaluate_report import table as table_of

__all__ = ["SANITY_KINDS", "EvaluateOptions", "Evaluation", "evaluate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``volcam evaluate`` computes (its command-line options).

    Attributes:
        output: output folder (default ``<outputs.dir>/evaluation``).
        cases: evaluate only the first N cases.
        against: reference mask for localisation: ``"label"``, ``"prediction"`` or ``"auto"``
            (the label where the case has one).
        level: threshold the map at this level for IoU/Dice (default: its hottest voxels at
            the mask's own volume).
        steps: deletion/insertion steps.
        baseline: what removed voxels become: ``"blur"``, ``"min"``, ``"mean"`` or a number.
        sigma: blur baseline width in voxels.
        batch_size: images per forward pass for the curves.
        sanity: the sanity checks (``cascading``, ``independent``, ``label``).
        sanity_cases: run them on the first N cases.
        threshold: flag a randomised map whose Spearman correlation with the original is at
            least this.
        random: also score a random map (the reference a useful map must beat).
        seed: seed of the random map, tie-breaking and re-initialisation.
    """

    output: str | None = None
    cases: int | None = None
    against: str = "auto"
    level: float | None = None
    steps: int = 20
    baseline: Any = "blur"
    sigma: float = 5.0
    batch_size: int = 8
    sanity: tuple[str, ...] = ("cascading", "label")
    sanity_cases: int = 1
    threshold: float = 0.5
    random: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        from volcam.checks import in_range, non_negative_int, positive_int

        positive_int(self.steps, "steps", error=ConfigError)
        positive_int(self.batch_size, "batch_size", error=ConfigError)
        positive_int(self.cases, "cases", error=ConfigError, allow_none=True)
        non_negative_int(self.sanity_cases, "sanity_cases", error=ConfigError)
        in_range(self.threshold, "threshold", -1.0, 1.0, error=ConfigError)
        bad = [s for s in self.sanity if s not in SANITY_KINDS]
        if bad:
            raise ConfigError(f"`sanity` must list some of {list(SANITY_KINDS)}, not {bad}", key="sanity")
        if self.against not in ("auto", "label", "prediction"):
            raise ConfigError(f"`against` must be auto, label or prediction, not {self.against!r}", key="against")
        if isinstance(self.baseline, str) and self.baseline not in ("blur", "min", "mean"):
            raise ConfigError(f"`baseline` must be blur, min, mean or a number, not {self.baseline!r}", key="baseline")
        if not self.sigma > 0:
            raise ConfigError(f"`sigma` must be positive, not {self.sigma}", key="sigma")


@dataclass
class Evaluation:
    """What :func:`evaluate` did: where it wrote, the means per class and map, the failures."""

    output: Path
    summary: dict[str, Any]
    failures: int = 0
    table: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _one_class(result: Any, t: int) -> Any:
    """The result of target ``t`` of an ``explain_classes`` result, as ``explain`` would give it."""
    from volcam.result import CAMResult

    return CAMResult(
        heat=result.heat[:, t : t + 1],
        output=result.output,
        layer_maps=[m[:, t : t + 1] for m in result.layer_maps],
        scores=result.scores[:, t],
        layer_names=result.layer_names,
    )


def evaluate(
    config: RunConfig,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    say: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Evaluation:
    """Localisation, faithfulness and sanity checks of the config's CAM (see the module docstring).

    Cases are explained whole (no sliding window). A case or class that fails is reported
    through ``warn`` and counted; the others are still written.
    """
    import torch

    from volcam.errors import TargetError, VolcamError
    from volcam.metrics import component_localisation, faithfulness, localisation
    from volcam.metrics.sanity import label_randomisation, model_randomisation
    from volcam.run.loading import load_case
    from volcam.run.runner import Runner

    say = say or log.info
    warn = warn or log.warning
    out = Path(options.output) if options.output else Path(config.outputs.dir) / "evaluation"
    config.require_network("volcam evaluate")
    runner = Runner(config.with_output_dir(out))
    model, cam, pre, device = runner.model, runner.cam, runner.pre, runner.device
    cases = list(config.list_cases())
    if options.cases is not None:
        cases = cases[: options.cases]
    classes = runner.classes
    names = runner.names
    mask_mode = config.targets.mask
    method = config.cam.method
    sanity_kinds = list(dict.fromkeys(options.sanity))
    if config.sliding.roi_size is not None:
        warnings.warn("volcam evaluate explains whole cases; sliding_window is not used", stacklevel=2)
    say(f"volcam evaluate: {len(cases)} case(s), classes {classes}, {method} at {runner.layer_names}, device {device}")
    started = time.perf_counter()

    metric_rows: list[dict] = []
    component_rows: list[dict] = []
    sanity_rows: list[dict] = []
    curves_json: list[dict] = []
    pooled: dict[int, dict[str, dict[str, list]]] = {}  # class -> map -> kind -> [Curve]
    sanity_plots: list[tuple[str, int, dict]] = []
    failures = 0
    started = time.perf_counter()

    for index, case in enumerate(cases):
        t0 = time.perf_counter()
        try:
            if options.against == "label" and case.label is None:
                raise TargetError(f"--against label needs a label file for case '{case.id}', not none")
            data = load_case(case, pre, config.spatial_dims, need_label=mask_mode == "label")
        except Exception as err:  # an unreadable case fails alone
            failures += 1
            warn(f"volcam evaluate: case {case.id}: {err}")
            continue
        # plain tensors: the metadata is not needed here and a MetaTensor slows every operation
        x = data["image"].as_tensor()[None].float().to(device)
        label = data["label"].as_tensor().to(device) if "label" in data else None
        try:  # every class from one forward pass
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # empty targets are reported in the table
                every = cam.explain_classes(x, classes, masks=runner.masks(label), activation=config.targets.activation)
        except Exception as err:  # the case fails alone
            failures += 1
            warn(f"volcam evaluate: case {case.id}: {err}")
            continue
        for t, category in enumerate(classes):
            try:
                target = runner.target(category, label)
                result = _one_class(every, t)
                use_label = label is not None and options.against != "prediction"
                reference = (
                    runner.label_region(label, category)[None, None]
                    if label is not None and use_label
                    else runner.predicted(result.output, category)[None, None]
                )
                reference_kind = "label" if use_label else "prediction"
                volume = int(reference.sum())
                maps = {method: result.heat}
                if options.random:
                    gen = torch.Generator().manual_seed(options.seed * 100003 + index * 101 + category)
                    maps["random"] = torch.rand(result.heat.shape, generator=gen).to(device)
                for map_name, heat in maps.items():
                    row = {
                        "case": case.id,
                        "class": category,
                        "class_name": names[category],
                        "map": map_name,
                        "reference": reference_kind,
                        "reference_volume": volume,
                        "score": number(result.scores[0]),
                    }
                    if volume > 0:
                        loc = localisation(heat, reference, level=options.level)
                        row.update({k: number(v[0]) for k, v in loc.items()})
                        comps = component_localisation(heat, reference, level=options.level)
                        for j in range(comps["batch"].numel()):
                            component_rows.append(
                                {
                                    "case": case.id,
                                    "class": category,
                                    "class_name": names[category],
                                    "map": map_name,
                                    **{
                                        k: (int(v[j]) if k in ("component", "volume") else number(v[j]))
                                        for k, v in comps.items()
                                        if k != "batch"
                                    },
                                }
                            )
                        row["components"] = int(comps["batch"].numel())
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # a weak baseline shows in baseline_kept
                        curves = faithfulness(
                            model,
                            x,
                            heat,
                            target,
                            steps=options.steps,
                            baseline=options.baseline,
                            sigma=options.sigma,
                            batch_size=options.batch_size,
                            model_output=cam.model_output,
                            generator=torch.Generator().manual_seed(options.seed),
                        )
                    row["baseline_kept"] = number(
                        curves["deletion"].baseline_score[0] / curves["deletion"].reference[0]
                    )
                    for kind, curve in curves.items():
                        row[f"{kind}_auc"] = number(curve.auc[0])
                        pooled.setdefault(category, {}).setdefault(map_name, {}).setdefault(kind, []).append(curve)
                        curves_json.append(
                            {
                                "case": case.id,
                                "class": category,
                                "map": map_name,
                                "kind": kind,
                                "fractions": curve.fractions.tolist(),
                                "scores": curve.scores[0].tolist(),
                                "image_score": number(curve.reference[0]),
                                "baseline_score": number(curve.baseline_score[0]),
                                "relative": curve.relative[0].tolist(),
                                "auc": number(curve.auc[0]),
                            }
                        )
                    metric_rows.append(row)
                if index < options.sanity_cases and sanity_kinds:
                    results = {}
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        for kind in sanity_kinds:
                            if kind == "label":
                                results[kind] = label_randomisation(cam, x, target, threshold=options.threshold)
                            else:
                                results[kind] = model_randomisation(
                                    cam, x, target, mode=kind, seed=options.seed, threshold=options.threshold
                                )
                    for kind, res in results.items():
                        for step, name in enumerate(res.steps):
                            sanity_rows.append(
                                {
                                    "case": case.id,
                                    "class": category,
                                    "class_name": names[category],
                                    "check": kind,
                                    "step": step + 1,
                                    "randomised": name,
                                    "spearman": number(res.spearman[step, 0]),
                                    "spearman_support": number(res.spearman_support[step, 0])
                                    if res.spearman_support is not None
                                    else float("nan"),
                                    "ssim": number(res.ssim[step, 0]),
                                    "flagged": bool(res.flagged[step, 0]),
                                    "unchanged": bool(res.unchanged[0]) if step == len(res.steps) - 1 else "",
                                }
                            )
                    sanity_plots.append((case.id, category, results))
            except Exception as err:  # one case and class fails alone; the others are still written
                failures += 1
                what = "" if isinstance(err, VolcamError) else f"{type(err).__name__}: "
                warn(f"volcam evaluate: case {case.id}, class {category}: {what}{err}")
        done = [r for r in metric_rows if r["case"] == case.id and r["map"] == method]
        say(
            f"  {case.id}: "
            + "; ".join(
                f"{r['class_name']} energy {r.get('energy', float('nan')):.2f} dice {r.get('dice', float('nan')):.2f} "
                f"deletion {r['deletion_auc']:.2f} insertion {r['insertion_auc']:.2f}"
                for r in done
            )
            + f"  ({time.perf_counter() - t0:.1f} s)"
        )

    summary = summarise(metric_rows, sanity_rows, classes, names)
    write_outputs(out, options, config, metric_rows, component_rows, sanity_rows, curves_json, summary)
    plot(out, pooled, sanity_plots, names, method)
    table = table_of(summary)
    say(table)
    notes = []
    for c in classes:  # per class: one weak class is not hidden by the mean over classes
        kept = mean(r.get("baseline_kept") for r in metric_rows if r["class"] == c and r["map"] == method)
        if kept > 0.5:
            notes.append(
                f"volcam evaluate: note: for {names[c]}, the baseline image keeps {kept:.0%} of the score on "
                "average (baseline_kept in metrics.csv): it removes little of the evidence and the curves are "
                "stretched; try --baseline min or a larger --sigma"
            )
    for note in notes:
        say(note)
    seconds = time.perf_counter() - started
    say(
        f"volcam evaluate: wrote {out}/metrics.csv, summary.json and plots/ in {seconds:.0f} s"
        + (f"; {failures} failure(s)" if failures else "")
    )
    return Evaluation(out, summary, failures, table, notes, seconds)
