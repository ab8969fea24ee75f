"""Candidate target layers of encoder-decoders: the bottleneck and each decoder stage."""

import pytest
import torch
from helpers import Pyramid, hook_count, model_state
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

import volcam
from volcam.layers import candidate_layers

EXPECTED = {
    "UNet": (
        lambda d: UNet(d, 1, 3, channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 2), num_res_units=2),
        "model.1.submodule.1.submodule.1.submodule.1.submodule",
        [
            "model.1.submodule.1.submodule.1.submodule.2",
            "model.1.submodule.1.submodule.2",
            "model.1.submodule.2",
        ],
    ),
    "UNet without residual units": (
        lambda d: UNet(d, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0),
        "model.1.submodule.1.submodule",
        ["model.1.submodule.2"],
    ),
    "BasicUNet": (
        lambda d: BasicUNet(d, 1, 3, features=(4, 4, 8, 8, 16, 4)),
        "down_4",
        ["upcat_4", "upcat_3", "upcat_2", "upcat_1"],
    ),
    "SegResNet": (
        lambda d: SegResNet(d, init_filters=8, in_channels=1, out_channels=3),
        "down_layers.3",
        ["up_layers.0", "up_layers.1", "up_layers.2"],
    ),
    "DynUNet": (
        lambda d: DynUNet(d, 1, 3, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2]),
        "bottleneck",
        ["upsamples.0", "upsamples.1", "upsamples.2"],
    ),
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("network", list(EXPECTED))
def test_bottleneck_and_decoder_stages_of_monai_networks(network, dims):
    build, bottleneck, decoder = EXPECTED[network]
    torch.manual_seed(0)
    net = build(dims).train()
    before = model_state(net)
    size = 32
    x = torch.randn(1, 1, *([size] * dims))
    found = candidate_layers(net, x)
    assert [(c.role, c.name) for c in found] == [("bottleneck", bottleneck)] + [("decoder", d) for d in decoder]
    # coarsest first, then finer and finer; shapes as the network gives them
    sizes = [c.output_shape[2] for c in found]
    assert sizes[1:] == sorted(sizes[1:]) and sizes[0] == min(sizes)
    modules = dict(net.named_modules())
    for c in found:
        assert c.scale == tuple(s / size for s in c.output_shape[2:])
        out = {}

        def record(m, i, o, out=out):
            out.setdefault("shape", tuple(o.shape))

        h = modules[c.name].register_forward_hook(record)
        with torch.no_grad():
            net.eval()(x)
        h.remove()
        assert out["shape"] == c.output_shape
    net.train()
    after = model_state(net)
    assert after["hooks"] == 0 and net.training
    for name, b in before["buffers"].items():
        assert torch.equal(after["buffers"][name], b)


def test_every_candidate_is_a_usable_target_layer():
    torch.manual_seed(0)
    net = EXPECTED["UNet"][0](3).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    for c in candidate_layers(net, x):
        heat = volcam.HiResCAM(net, c.name)(x, targets=volcam.SegmentationTarget(1, mask="all"))
        assert heat.shape == (1, 1, 32, 32, 32) and float(heat.max()) == 1.0
    assert hook_count(net) == 0


def test_a_generic_encoder_decoder():
    net = Pyramid(2).eval()
    found = candidate_layers(net, torch.randn(1, 1, 8, 8))
    assert [(c.role, c.name, c.output_shape) for c in found] == [
        ("bottleneck", "down", (1, 8, 4, 4)),
        ("decoder", "dec", (1, 6, 8, 8)),
    ]


def test_a_network_that_never_goes_down_has_no_candidates():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert candidate_layers(net, torch.randn(1, 1, 8, 8)) == []


def test_a_model_that_fails_says_so():
    with pytest.raises(volcam.VolcamError, match=r"failed on an example input of shape \[1, 3, 8, 8\]"):
        candidate_layers(Pyramid(2), torch.randn(1, 3, 8, 8))
