"""Reshape helpers and target layers for MONAI UNETR / ViT / SwinUNETR, in 2D and 3D."""

import pytest
import torch
import torch.nn.functional as F
from helpers import Pyramid, assert_same_state, model_state
from monai.networks.nets import UNETR, SwinUNETR, ViT
from monai.networks.nets.swin_unetr import compute_mask, window_partition

import volcam
from volcam.transformers import (
    ChannelsLast,
    SwinWindows,
    TokenGrid,
    patch_size,
    suggested_layers,
    swin_reshape,
    vit_reshape,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unetr(dims):
    torch.manual_seed(0)
    size = (32, 64) if dims == 2 else (32, 32, 64)
    return UNETR(1, 3, size, feature_size=4, hidden_size=16, mlp_dim=16, num_heads=2, spatial_dims=dims).eval(), size


def swin2d():
    torch.manual_seed(0)
    net = SwinUNETR(
        in_channels=1,
        out_channels=2,
        feature_size=12,
        depths=(2, 2, 2, 2),
        num_heads=(1, 1, 1, 1),
        window_size=4,
        spatial_dims=2,
    )
    return net.eval()


def test_token_grid_by_hand_and_class_token():
    tokens = torch.arange(6.0).view(1, 6, 1).expand(2, 6, 3)  # token t carries the value t in every channel
    grid = TokenGrid((2, 3))(tokens)
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[1, 2], torch.tensor([[0.0, 1, 2], [3, 4, 5]]))  # row-major order
    with_cls = torch.cat([torch.full((2, 1, 3), -1.0), tokens], 1)
    assert torch.equal(TokenGrid((2, 3), class_token=True)(with_cls), grid)
    with pytest.raises(volcam.ShapeError, match=r"N = 7 \(2x3 patches plus a class token\), not \[2, 6, 3\]"):
        TokenGrid((2, 3), class_token=True)(tokens)


@pytest.mark.parametrize("dims", [2, 3])
def test_token_grid_equals_unetr_own_projection(dims):
    net, _ = unetr(dims)
    tokens = torch.randn(2, 8 if dims == 2 else 16, 16)
    assert torch.equal(vit_reshape(net)(tokens), net.proj_feat(tokens))


def test_patch_size_and_class_token_of_a_vit():
    vit = ViT(
        1,
        (32, 32),
        (8, 4),
        hidden_size=16,
        mlp_dim=16,
        num_layers=1,
        num_heads=2,
        classification=True,
        spatial_dims=2,
        proj_type="perceptron",
    )
    assert patch_size(vit) == (8, 4)
    r = vit_reshape(vit, (32, 32))
    assert r.grid_size == (4, 8) and r.class_token
    with pytest.raises(volcam.VolcamError, match="multiple of the patch size"):
        vit_reshape(vit, (30, 32))


@pytest.mark.parametrize(
    "grid,window,shift",
    [((9, 7), (4, 4), (2, 2)), ((6, 10, 12), (4, 4, 4), (2, 2, 2)), ((3, 8, 8), (4, 4, 4), (2, 2, 2))],
)
def test_swin_windows_invert_monai_partition(grid, window, shift):
    x = torch.randn(2, *grid, 5)  # channels last, as Swin blocks hold it
    r = SwinWindows(grid, window, shift)
    padded = [-(-g // w) * w for g, w in zip(grid, r.window_size)]
    pad = []
    for g, p in zip(reversed(grid), reversed(padded)):
        pad += [0, p - g]
    xp = F.pad(x, [0, 0] + pad)
    shifted = torch.roll(xp, shifts=[-s for s in r.shift_size], dims=tuple(range(1, len(grid) + 1)))
    assert torch.equal(r(window_partition(shifted, r.window_size)), x.movedim(-1, 1))
    if grid[0] == 3:  # an axis shorter than the window: whole axis, no shift (as MONAI does)
        assert r.window_size == (3, 4, 4) and r.shift_size == (0, 2, 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_swin_windows_of_a_real_shifted_block(dims):
    block = swin2d().swinViT.layers1[0].blocks[1] if dims == 2 else None
    if dims == 3:
        from monai.networks.nets.swin_unetr import SwinTransformerBlock

        torch.manual_seed(0)
        block = SwinTransformerBlock(12, 1, (4, 4, 4), (2, 2, 2)).eval()
    grid = (10, 6) if dims == 2 else (6, 10, 5)
    x = torch.randn(2, *grid, 12)
    window = tuple(block.window_size)
    windows = SwinWindows(grid, window, tuple(block.shift_size))
    padded = [-(-g // w) * w for g, w in zip(grid, windows.window_size)]
    mask = compute_mask(padded, windows.window_size, windows.shift_size, x.device)
    kept = []
    h = block.attn.register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        expected = block.forward_part1(x, mask)  # attention, windows put back, shift undone, cropped
    h.remove()
    assert torch.allclose(windows(kept[0]), expected.movedim(-1, 1), atol=1e-6)


def test_gradcam_on_unetr_tokens_matches_a_manual_computation():
    net, size = unetr(3)
    x = torch.randn(2, 1, *size)
    cam = volcam.GradCAM(net, "vit.norm", reshape=vit_reshape(net), upsample=False, normalize=False)
    res = cam.explain(x, targets=2)
    kept = []
    h = net.vit.norm.register_forward_hook(lambda m, i, o: kept.append(o))
    out = net(x)
    h.remove()
    score = (out[:, 2] * (out.argmax(1) == 2)).flatten(1).sum(1)
    g = torch.autograd.grad(score.sum(), kept[0])[0]
    a, g = net.proj_feat(kept[0].detach()), net.proj_feat(g)
    expected = torch.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    assert torch.allclose(res.layer_maps[0], expected, rtol=1e-4, atol=1e-6)


def ablation_reference(model, module, x, reshape, category):
    """Zero channel k of the raw layer output (the last axis of tokens/windows) by hand."""
    kept = []
    h = module.register_forward_hook(lambda m, i, o: kept.append(o.detach()))
    with torch.no_grad():
        out = model(x)
    h.remove()
    mask = (out.argmax(1) == category).float()
    y = (out[:, category] * mask).flatten(1).sum(1)
    a = reshape(kept[0])
    w = torch.zeros(a.shape[:2])
    for k in range(a.shape[1]):
        h = module.register_forward_hook(lambda m, i, o, k=k: o.index_fill(-1, torch.tensor([k]), 0.0))
        with torch.no_grad():
            w[:, k] = (y - (model(x)[:, category] * mask).flatten(1).sum(1)) / y.abs()
        h.remove()
    return torch.relu((w.view(*w.shape, *[1] * (a.ndim - 2)) * a).sum(1, keepdim=True))


def test_ablation_of_unetr_token_channels():
    net, size = unetr(2)
    x = torch.randn(2, 1, *size)
    res = volcam.AblationCAM(net, "vit.blocks.6", reshape=vit_reshape(net), batch_size=12).explain(x, targets=1)
    expected = ablation_reference(net, net.vit.blocks[6], x, vit_reshape(net), 1)
    assert expected.abs().max() > 0
    assert torch.allclose(res.layer_maps[0], expected, rtol=1e-4, atol=1e-6)


def test_ablation_of_swin_window_attention_channels():
    net = swin2d()
    x = torch.randn(2, 1, 64, 64)
    name = "swinViT.layers1.0.blocks.1.attn"  # shifted windows, first axis = windows of all samples
    reshape = swin_reshape(net, name, (64, 64))
    assert isinstance(reshape, SwinWindows) and reshape.shift_size == (2, 2) and reshape.grid_size == (32, 32)
    before = model_state(net)
    res = volcam.AblationCAM(net, name, reshape=reshape, batch_size=12).explain(x, targets=1)
    expected = ablation_reference(net, net.get_submodule(name), x, reshape, 1)
    assert torch.allclose(res.layer_maps[0], expected, rtol=1e-4, atol=1e-6)
    assert_same_state(before, model_state(net))


def test_suggested_layers_run_with_their_reshape():
    net, size = unetr(2)
    layers = suggested_layers(net)
    assert list(layers)[:4] == ["vit.blocks.3", "vit.blocks.6", "vit.blocks.9", "vit.norm"]
    assert all(isinstance(layers[n], TokenGrid) for n in list(layers)[:4])
    assert layers["decoder2"] is None
    x = torch.randn(1, 1, *size)
    for name, reshape in layers.items():
        assert volcam.GradCAM(net, name, reshape=reshape)(x, targets=1).shape == x.shape
    swin = swin2d()
    layers = suggested_layers(swin, (64, 64))
    assert isinstance(layers["swinViT.layers2.0.blocks.1"], ChannelsLast)
    assert layers["swinViT.layers3.0"] is None
    assert isinstance(layers["swinViT.layers4.0.blocks.1.attn"], SwinWindows)
    x = torch.randn(1, 1, 64, 64)
    for name in ["swinViT.layers2.0.blocks.1", "swinViT.layers4.0.blocks.1.attn", "swinViT.layers3.0"]:
        assert volcam.GradCAM(swin, name, reshape=layers[name])(x, targets=1).shape == x.shape


def test_helpers_explain_what_they_need():
    with pytest.raises(volcam.VolcamError, match="must be a MONAI UNETR, ViT or SwinUNETR"):
        suggested_layers(Pyramid.pair()[0])
    with pytest.raises(volcam.VolcamError, match="`image_size` must be given for a SwinUNETR"):
        suggested_layers(swin2d())
    with pytest.raises(volcam.VolcamError, match="must be inside a stage of a MONAI SwinTransformer"):
        swin_reshape(swin2d(), "encoder1", (64, 64))
    with pytest.raises(volcam.ShapeError, match=r"windows must be \[B \* 16, 16, C\]"):
        SwinWindows((16, 16), 4)(torch.zeros(3, 16, 8))
