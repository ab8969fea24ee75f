"""Attention rollout on small MONAI UNETRs (2D and 3D) with hand-set attention."""

import pytest
import torch
from helpers import Pyramid, assert_same_state, model_state
from monai.networks.nets import UNETR, ViT

import volcam
from volcam.methods.rollout import AttentionRollout

LAYERS = 12  # UNETR always has 12 transformer blocks
SIZES = {2: (32, 64), 3: (32, 32, 64)}  # 16^d patches: grids (2, 4) and (2, 2, 4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small models run faster without thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unetr(dims, **kw):
    torch.manual_seed(0)
    return UNETR(
        1,
        2,
        SIZES[dims],
        feature_size=4,
        hidden_size=32,
        mlp_dim=32,
        num_heads=2,
        spatial_dims=dims,
        qkv_bias=True,
        **kw,
    ).eval()


def patches(dims):
    return 8 if dims == 2 else 16


def set_attention(net, dims, heads_to=None):
    """Tokens fixed to one-hot position embeddings (patch i -> e_i), attention and MLP outputs
    zeroed so the tokens stay the same through all blocks, and queries/keys chosen so that
    every block attends as asked: ``heads_to=None`` -> identity (each token to itself);
    ``heads_to=(p, q)`` -> every token of head 0 attends to patch p, of head 1 to patch q."""
    n = patches(dims)
    with torch.no_grad():
        emb = net.vit.patch_embedding
        for p in emb.patch_embeddings.parameters():
            p.zero_()
        emb.position_embeddings.zero_()
        emb.position_embeddings[0, torch.arange(n), torch.arange(n)] = 1.0
        for blk in net.vit.blocks:
            for p in list(blk.attn.parameters()) + list(blk.mlp.linear2.parameters()):
                p.zero_()
            w, b = blk.attn.qkv.weight, blk.attn.qkv.bias  # rows: (q | k | v) x (head 0 | head 1) x 16
            for h in range(2):
                q, k = slice(16 * h, 16 * h + 16), slice(32 + 16 * h, 32 + 16 * h + 16)
                if heads_to is None:  # q = k = 3 * LN(x)[:16]: <q_i, k_j> peaks sharply at i = j
                    w[q, :16] = 3 * torch.eye(16)
                    w[k, :16] = 3 * torch.eye(16)
                else:  # q = constant, k_j = 2 * LN(x_j)[patch] * ones: only the chosen patch has a large key
                    b[q] = 2.0
                    w[k, heads_to[h]] = 2.0
    return net


def expected_map(n, columns, rate):
    """Closed form: with every row of the fused attention equal to v (v sums to 1 over
    ``columns``), Â^L = rate^L I + (1 - rate^L) 1 v^T; the mean row is rate^L / n + (1 - rate^L) v."""
    v = torch.zeros(n)
    v[list(columns)] = 1.0 / len(columns)
    return rate**LAYERS / n + (1 - rate**LAYERS) * v


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("gradients", [False, True])
def test_identity_attention_gives_a_uniform_map(dims, gradients, device):
    net = set_attention(unetr(dims), dims).to(device)
    x = torch.randn(2, 1, *SIZES[dims], device=device)
    before = model_state(net)
    res = AttentionRollout(net, gradients=gradients, normalize=False).explain(x, targets=1)
    grid = (2, 4) if dims == 2 else (2, 2, 4)
    assert res.layer_maps[0].shape == (2, 1, *grid) and res.heat.device == x.device
    assert torch.allclose(res.layer_maps[0], torch.full_like(res.layer_maps[0], 1 / patches(dims)), atol=1e-6)
    assert_same_state(before, model_state(net))


@pytest.mark.parametrize("dims", [2, 3])
def test_every_token_attending_to_one_patch_lights_it_up(dims):
    n, p = patches(dims), 5
    net = set_attention(unetr(dims), dims, heads_to=(p, p))
    x = torch.randn(2, 1, *SIZES[dims])
    res = AttentionRollout(net, normalize=False).explain(x, targets=1)
    expected = expected_map(n, [p], 0.5)  # Â = (1 e_p^T + I) / 2
    for b in range(2):
        assert torch.allclose(res.layer_maps[0][b].flatten(), expected, atol=1e-6)
    # the heat (upsampled, normalised) peaks inside that patch of the volume
    heat = AttentionRollout(net)(x, targets=1)
    grid = (2, 4) if dims == 2 else (2, 2, 4)
    corner = torch.tensor(torch.unravel_index(torch.tensor(p), grid)) * 16
    for b in range(2):
        peak = torch.tensor(torch.unravel_index(heat[b, 0].argmax(), heat.shape[2:]))
        assert ((peak >= corner) & (peak < corner + 16)).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_head_fusion(dims):
    n, p, q = patches(dims), 1, 6
    net = set_attention(unetr(dims), dims, heads_to=(p, q))
    x = torch.randn(1, 1, *SIZES[dims])

    def run(fusion):
        return AttentionRollout(net, head_fusion=fusion, normalize=False).explain(x).layer_maps[0].flatten()

    assert torch.allclose(run("mean"), expected_map(n, [p, q], 0.5), atol=1e-6)
    assert torch.allclose(run("max"), expected_map(n, [p, q], 1 / 3), atol=1e-6)  # Â = (2Q + I) / 3
    assert torch.allclose(run("min"), torch.full((n,), 1 / n), atol=1e-6)  # the heads never agree: Â = I


def test_fuse_and_roll_by_hand():
    cam = AttentionRollout(unetr(2), head_fusion="mean", discard_ratio=0.5)
    a = torch.tensor([[[[0.1, 0.9], [0.6, 0.4]], [[0.3, 0.7], [0.0, 1.0]]]])  # [B=1, H=2, 2, 2]
    fused = cam.fuse(a, None)  # mean: [[0.2, 0.8], [0.3, 0.7]]; the two smallest (0.2, 0.3) dropped
    assert torch.allclose(fused, torch.tensor([[[0.0, 0.8], [0.0, 0.7]]]))
    # Â rows: ([0, .8] + [1, 0]) / 2 -> [.5, .4] / .9 ; ([0, .7] + [0, 1]) / 2 -> [0, 1]
    rolled = cam.roll([fused])
    assert torch.allclose(rolled, torch.tensor([[[5 / 9, 4 / 9], [0.0, 1.0]]]))
    assert torch.allclose(cam.roll([fused, fused]), rolled @ rolled)
    g = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]]])
    weighted = AttentionRollout(unetr(2), head_fusion="max", gradients=True).fuse(a, g)  # max_h relu(g * a)
    assert torch.allclose(weighted, torch.tensor([[[0.1, 0.7], [1.2, 1.0]]]))


def reference_rollout(attentions, grads=None, class_token=False):
    """Abnar & Zuidema with loops; gradient weighting as mean_h relu(grad * attention)."""
    b, _, n, _ = attentions[0].shape
    out = []
    for s in range(b):
        r = torch.eye(n, dtype=torch.float64)
        for i, a in enumerate(attentions):
            a = a[s].double()
            if grads is not None:
                a = torch.relu(grads[i][s].double() * a)
            f = (a.mean(0) + torch.eye(n, dtype=torch.float64)) / 2
            f = f / f.sum(1, keepdim=True)
            r = f @ r
        out.append(r[0, 1:] if class_token else r.mean(0))
    return torch.stack(out).float()


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_a_reference_on_monai_saved_attention(dims):
    # MONAI's own copy of the attention (save_attn=True), read after a plain forward
    net = unetr(dims, save_attn=True)
    x = torch.randn(2, 1, *SIZES[dims])
    res = AttentionRollout(net, normalize=False).explain(x, targets=1)
    with torch.no_grad():
        net(x)
    ref = reference_rollout([blk.attn.att_mat for blk in net.vit.blocks])
    assert torch.allclose(res.layer_maps[0].flatten(1), ref, atol=1e-6)
    assert all(blk.attn.save_attn for blk in net.vit.blocks)  # left as the user set it


@pytest.mark.parametrize("dims", [2, 3])
def test_gradient_weighting_matches_a_reference(dims):
    net = unetr(dims)
    x = torch.randn(2, 1, *SIZES[dims])
    kept = []
    hooks = [blk.attn.drop_weights.register_forward_hook(lambda m, i, o: kept.append(o)) for blk in net.vit.blocks]
    out = net(x)
    for h in hooks:
        h.remove()
    mask = (out.argmax(1) == 1).float()
    score = (out[:, 1] * mask).flatten(1).sum(1)
    grads = torch.autograd.grad(score.sum(), kept)
    ref = reference_rollout([a.detach() for a in kept], grads)
    res = AttentionRollout(net, gradients=True, normalize=False).explain(x, targets=1)
    assert torch.allclose(res.layer_maps[0].flatten(1), ref, atol=1e-6)
    plain = AttentionRollout(net, normalize=False).explain(x, targets=1)
    assert not torch.allclose(plain.layer_maps[0], res.layer_maps[0], atol=1e-4)


def test_class_token_row_of_a_classification_vit():
    torch.manual_seed(0)
    vit = ViT(
        1,
        (32, 32),
        (8, 8),
        hidden_size=16,
        mlp_dim=16,
        num_layers=3,
        num_heads=2,
        classification=True,
        num_classes=3,
        spatial_dims=2,
        save_attn=True,
    ).eval()
    x = torch.randn(2, 1, 32, 32)
    res = AttentionRollout(vit, model_output=0, normalize=False).explain(x, targets=volcam.ClassifierTarget(2))
    with torch.no_grad():
        vit(x)
    ref = reference_rollout([blk.attn.att_mat for blk in vit.blocks], class_token=True)
    assert res.layer_maps[0].shape == (2, 1, 4, 4)
    assert torch.allclose(res.layer_maps[0].flatten(1), ref, atol=1e-6)


def test_part_of_the_encoder_and_batches():
    net = unetr(3)
    x = torch.randn(3, 1, *SIZES[3])
    half = AttentionRollout(net, [f"vit.blocks.{i}" for i in range(6)])
    assert len(half.blocks) == 6
    whole = half(x, targets=1)
    single = torch.cat([half(x[i : i + 1], targets=1) for i in range(3)])
    assert torch.equal(whole, single)
    # the first six blocks' rollout, by hand from MONAI's saved attention
    for blk in net.vit.blocks:
        blk.attn.save_attn = True
    with torch.no_grad():
        net(x)
    ref = reference_rollout([blk.attn.att_mat for blk in net.vit.blocks[:6]])
    assert torch.allclose(half.explain(x, targets=1).layer_maps[0].flatten(1), ref, atol=1e-6)


def test_flash_attention_blocks_are_read_and_their_flag_restored():
    net = unetr(2)
    x = torch.randn(1, 1, *SIZES[2])
    ref = AttentionRollout(net)(x, targets=1)
    for blk in net.vit.blocks[::2]:
        blk.attn.use_flash_attention = True
    before = model_state(net)
    got = AttentionRollout(net)(x, targets=1)
    assert torch.allclose(got, ref, atol=1e-5)
    assert [blk.attn.use_flash_attention for blk in net.vit.blocks] == [True, False] * 6
    with pytest.raises(RuntimeError, match="target failed"):
        AttentionRollout(net, gradients=True)(x, targets=lambda o: (_ for _ in ()).throw(RuntimeError("target failed")))
    assert [blk.attn.use_flash_attention for blk in net.vit.blocks] == [True, False] * 6
    assert_same_state(before, model_state(net))


def test_registry_and_errors():
    assert volcam.get_method("rollout") is AttentionRollout is volcam.get_method("attention-rollout")
    assert "rollout" in volcam.ATTENTION_METHODS and "rollout" not in volcam.METHODS
    with pytest.raises(volcam.LayerNotFoundError, match="attention rollout needs self-attention blocks"):
        AttentionRollout(Pyramid.pair()[0])
    with pytest.raises(volcam.VolcamError, match="`head_fusion` must be one of"):
        AttentionRollout(unetr(2), head_fusion="median")
    with pytest.raises(volcam.VolcamError, match=r"`discard_ratio` must be a number in \[0, 1\), not 1"):
        AttentionRollout(unetr(2), discard_ratio=1)
    with pytest.raises(volcam.ShapeError, match="the patch grid \\[3, 3\\] must give as many"):
        AttentionRollout(unetr(2), grid_size=(3, 3))(torch.randn(1, 1, *SIZES[2]), targets=1)
