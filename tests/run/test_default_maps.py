"""The default method and layer give maps that mean something on trained networks of three
architectures: non-empty, with their peak inside the predicted structure, on every held-out
case and class (issue: a default chosen by measurement)."""

from __future__ import annotations

import pytest
import torch

from volcam.config import load_config
from volcam.run.defaults import DEFAULT_METHOD
from volcam.run.loading import load_case
from volcam.run.runner import make_runner

EXPECTED_LAYER = {"unet": "model.1.submodule.2", "segresnet": "up_layers.1", "dynunet": "upsamples.1"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_LAYER))
def test_the_default_map_is_not_empty_and_peaks_inside_the_prediction(trained_networks, name):
    trained = trained_networks[name]
    assert min(trained.dice.values()) > 0.6, trained.dice  # the network learnt its classes
    config = load_config(trained.config)
    assert config.cam.method == DEFAULT_METHOD and config.cam.target_layers == ()
    runner = make_runner(config)
    assert runner.config.cam.target_layers == (EXPECTED_LAYER[name],)
    checked = 0
    for case in config.list_cases():
        out = runner.explain_case(case, load_case(case, runner.pre, config.spatial_dims))
        for cls in out.classes:
            heat = cls.heat.as_tensor()[0]
            if not bool(cls.prediction.any()):
                continue  # nothing predicted: nothing to point at
            assert float(heat.max()) > 0, (case.id, cls.name, cls.row["note"])
            peak = torch.nonzero(heat == heat.max())[0]
            assert bool(cls.prediction[tuple(peak.tolist())]), (case.id, cls.name)
            assert cls.row["energy_in_prediction"] > 5 * float(cls.prediction.float().mean()), cls.row
            checked += 1
    assert checked == 3 * len(config.targets.classes)  # every held-out case predicts every class
