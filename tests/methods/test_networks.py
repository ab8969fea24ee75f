"""MONAI networks at small sizes: parity with MONAI's and Captum's Grad-CAM at the
feature-map resolution, and every listed architecture explained end to end."""

import copy
import warnings

import pytest
import torch
from captum.attr import LayerGradCam
from helpers import assert_same_state, hook_count, model_state
from monai.networks.nets import UNETR, AttentionUnet, BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet
from monai.visualize import GradCAM as MonaiGradCAM

import volcam


def unet(dims):
    return UNet(dims, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1), "model.1.submodule.0"


def basic_unet(dims):
    return BasicUNet(dims, 1, 3, features=(4, 4, 8, 8, 8, 4)), "upcat_2"


def segresnet(dims):
    return SegResNet(
        dims, init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 1, 1), blocks_up=(1, 1)
    ), "up_layers.0"


def masked_sum(mask, category):
    return lambda logits, *_: (logits[:, category] * mask).flatten(1).sum(1)


@pytest.mark.parametrize("build", [unet, basic_unet, segresnet], ids=["UNet", "BasicUNet", "SegResNet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_raw_maps_match_monai_and_captum(build, dims):
    torch.manual_seed(0)
    model, layer = build(dims)
    model.eval()
    size = 32 if build is basic_unet else 16
    x = torch.randn(2, 1, *([size] * dims))
    res = volcam.GradCAM(model, layer).explain(x, targets=volcam.SegmentationTarget(1))
    mask = (model(x).argmax(1) == 1).float()
    # MONAI: its class_score replaced by the same masked sum (it leaves hooks behind: use a copy)
    monai_cam = MonaiGradCAM(copy.deepcopy(model), layer)
    monai_cam.nn_module.class_score = masked_sum(mask, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_raw = monai_cam.compute_map(x, class_idx=1)
    torch.testing.assert_close(res.layer_maps[0], monai_raw, rtol=1e-4, atol=1e-5)
    # Captum: LayerGradCam with relu_attributions on a forward returning the masked sum
    twin = copy.deepcopy(model)
    captum_raw = LayerGradCam(lambda inp: masked_sum(mask, 1)(twin(inp)), dict(twin.named_modules())[layer]).attribute(
        x, relu_attributions=True
    )
    torch.testing.assert_close(res.layer_maps[0], captum_raw, rtol=1e-4, atol=1e-5)
    assert float(res.layer_maps[0].amax()) > 0  # a real map, not the trivial zero


def check_heat(heat, x):
    assert heat.shape == (x.shape[0], 1, *x.shape[2:])
    assert torch.isfinite(heat).all()
    for b in range(x.shape[0]):
        assert float(heat[b].amax()) == pytest.approx(1.0) and float(heat[b].amin()) == 0.0


def test_dynunet_deep_supervision_in_training_mode():
    torch.manual_seed(0)
    model = DynUNet(
        3,
        1,
        3,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        deep_supervision=True,
        deep_supr_num=1,
    ).train()
    x = torch.randn(2, 1, 16, 16, 16)
    before = model_state(model)
    with torch.no_grad():
        stacked = model(x)
    assert stacked.shape == (2, 2, 3, 16, 16, 16)  # [B, 1 + deep_supr_num, classes, *S]
    res = volcam.GradCAM(model, "upsamples.0", model_output=lambda out: out[:, 0]).explain(x, targets=1)
    assert_same_state(before, model_state(model))
    assert model.training
    check_heat(res.heat, x)
    torch.testing.assert_close(res.output, stacked[:, 0])
    # the main head in training mode is the eval-mode output (instance norm, no dropout): same map
    model.eval()
    evaluated = volcam.GradCAM(model, "upsamples.0")(x, targets=1)
    torch.testing.assert_close(res.heat, evaluated, rtol=1e-4, atol=1e-5)
    # the auxiliary head explained instead gives another map
    aux = volcam.GradCAM(model.train(), "upsamples.0", model_output=lambda out: out[:, 1])(x, targets=1)
    assert not torch.allclose(aux, res.heat, atol=1e-3)


def test_attention_unet():
    model = AttentionUnet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    layer = "model.1.submodule.1"  # the attention block of the second level
    res = volcam.GradCAM(model, layer).explain(x, targets=volcam.SegmentationTarget(1, mask="all"))
    check_heat(res.heat, x)
    assert hook_count(model) == 0


def unetr():
    return UNETR(1, 2, (32, 32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4).eval()


def tokens_to_grid(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], 2, 2, 2)


def test_unetr_tokens_with_reshape_match_plain_autograd():
    # float64: this random UNETR's gradient at the tokens changes by about 1% under float32
    # rounding (instance norms over 2x2x2 maps), more than the comparison below allows
    torch.manual_seed(0)
    model = unetr().double()
    x = torch.randn(2, 1, 32, 32, 32, dtype=torch.float64)
    target = volcam.SegmentationTarget(1, mask="all")
    res = volcam.GradCAM(model, "vit.blocks.3", reshape=tokens_to_grid).explain(x, targets=target)
    check_heat(res.heat, x)
    kept = {}
    h = model.vit.blocks[3].register_forward_hook(lambda m, i, o: kept.__setitem__("t", o))
    out = model(x.clone().requires_grad_(True))
    h.remove()
    tokens = kept["t"]  # [B, 8, 48]
    g = torch.autograd.grad(out[:, 1].sum(), tokens)[0]
    ref = torch.relu((g.mean(1, keepdim=True) * tokens).sum(2))  # weights per feature, summed over features
    torch.testing.assert_close(res.layer_maps[0].flatten(1), ref.detach().float(), rtol=1e-4, atol=1e-5)
    # the same tokens picked out of the ViT's (x, hidden_states) output through a selector path
    via_selector = volcam.GradCAM(model, "vit", layer_output=(1, 3), reshape=tokens_to_grid).explain(x, targets=target)
    torch.testing.assert_close(via_selector.layer_maps[0], res.layer_maps[0])
    assert hook_count(model) == 0


def test_swinunetr_list_output_stage_and_decoder():
    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2).eval()
    x = torch.randn(2, 1, 64, 64)
    decoder = volcam.GradCAM(model, "decoder3").explain(x, targets=volcam.SegmentationTarget(1, mask="all"))
    check_heat(decoder.heat, x)
    # swinViT returns a list of five stages; the selector picks stage 2 ([B, 48, 8, 8]) and hands the clone on
    stage = volcam.GradCAM(model, "swinViT", layer_output=2).explain(
        x, targets=volcam.SegmentationTarget(1, mask="all")
    )
    assert stage.layer_maps[0].shape == (2, 1, 8, 8)
    check_heat(stage.heat, x)
    assert hook_count(model) == 0


def test_every_method_on_a_3d_unet():
    model, layer = unet(3)
    model.eval()
    x = torch.randn(2, 1, 16, 16, 16)
    before = model_state(model)
    for name, cls in volcam.METHODS.items():
        kw = {"batch_size": 8} if name == "scorecam" else {}
        res = cls(model, layer, **kw).explain(x, targets=volcam.SegmentationTarget(1, mask="all"))
        check_heat(res.heat, x)
    assert_same_state(before, model_state(model))
