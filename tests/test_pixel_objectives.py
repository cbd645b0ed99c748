"""The pixels-only objectives (pretrain/objectives/motion.py, regions.py, masked.py) and the face
geometry they read instead of landmarks: flow against known motion, AU centres against where the
renderer's AUs change the pixels, the transport plan's marginals, and short training runs of
tiny real encoders through `PretrainModel` that must lower each loss and reach the backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.augment import make_views
from pretrain.flow import dense_flow
from pretrain.model import ClipEncoder
from pretrain.objectives import PretrainModel, build_objectives
from pretrain.objectives.motion import standard_grey, to_uint8
from pretrain.objectives.regions import patch_masks, region_centres, sinkhorn
from shards.geometry import ALIGN_POINTS, MEAN_FACE, au_centres, face_mask, template_transforms, to_template

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: see conftest.one_thread


def smooth_image(size: int, seed: int) -> torch.Tensor:
    """uint8 [3, size, size]: smooth random texture (blurred noise), good for flow."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def shifted(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    return torch.roll(image, shifts=(dy, dx), dims=(-2, -1))


# ------------------------------------------------------------------------------ flow


def test_flow_recovers_a_known_translation():
    first = torch.stack([smooth_image(56, s) for s in range(3)])
    second = torch.stack([shifted(im, 2, -1) for im in first])
    flow = dense_flow(first, second)
    assert flow.shape == (3, 2, 56, 56)
    inner = flow[:, :, 8:-8, 8:-8].mean((2, 3))  # away from the wrapped border
    assert torch.allclose(inner, torch.tensor([2.0, -1.0]).expand_as(inner), atol=0.15), inner
    assert dense_flow(first, first)[:, :, 8:-8, 8:-8].abs().mean() < 0.05


def test_flow_objective_field_follows_the_motion_over_the_face():
    """The objective's target: consecutive frames moving right by 1 px a frame give a field of +1
    in x and 0 in y on every face cell."""
    objective, _ = build_objectives({"flow": {"grid": 8}}, 16, 32)
    flow = objective["flow"]
    base = smooth_image(56, 7)
    clip = torch.stack([shifted(base, t, 0) for t in range(4)])[None]  # [1, 4, 3, 56, 56]
    field = flow.field(clip)  # [1, 3, 2 * cells]
    cells = int(face_mask(8).sum())
    assert field.shape == (1, 3, 2 * cells)
    x, y = field.view(3, 2, cells).unbind(1)
    assert torch.allclose(x, torch.ones_like(x), atol=0.2) and y.abs().max() < 0.2


def test_flow_over_every_pair_of_a_view_carries_the_wider_gaps():
    """`pairs: all` adds (0, 2) to (0, 1) and (1, 2): two frames apart, twice the motion."""
    flow = build_objectives({"flow": {"grid": 8, "pairs": "all"}}, 16, 32)[0]["flow"]
    base = smooth_image(56, 7)
    clip = torch.stack([shifted(base, t, 0) for t in range(3)])[None]  # 1 px right a frame
    x = flow.field(clip).view(3, 2, -1)[:, 0]  # pairs (0, 1), (0, 2), (1, 2)
    assert torch.allclose(x.mean(1), torch.tensor([1.0, 2.0, 1.0]), atol=0.2), x.mean(1)
    features = torch.arange(3.0)[None, :, None].expand(1, 3, 16)
    assert flow._inputs(features)[0, :, 0].tolist() == [1.0, 2.0, 1.0]  # f(j) - f(i), pair by pair


def test_non_rigid_flow_drops_the_whole_face_motion_and_keeps_a_local_one():
    """`rigid: false` subtracts the face cells' least-squares affine field: a translation, zoom
    and turn of the whole face leave nothing; motion of one part of the face (a mouth opening)
    stays, and the target keeps most of it."""
    flow = build_objectives({"flow": {"grid": 8, "rigid": False}}, 16, 32)[0]["flow"]
    y, x = torch.meshgrid(torch.linspace(0, 1, 56), torch.linspace(0, 1, 56), indexing="ij")
    affine = torch.stack([0.7 + 1.5 * (x - 0.5) - 0.4 * (y - 0.5), -0.3 + 0.4 * (x - 0.5) + 1.5 * (y - 0.5)])
    assert flow.pool(affine[None]).abs().max() < 1e-4
    local = torch.zeros(1, 2, 56, 56)
    local[0, 1, 42:49, 21:35] = 2.0  # the lower lip moving down
    kept, whole = flow.pool(local), build_objectives({"flow": {"grid": 8}}, 16, 32)[0]["flow"].pool(local)
    assert kept.norm() > 0.7 * whole.norm() and (kept - whole).abs().max() > 0.05


def test_template_flow_measures_each_frame_against_the_mean_face():
    """The template is the mean of the frames seen; a frame shifted 2 px right of it gives a field
    of +2 in x on every face cell, the template itself a field of 0."""
    from pretrain.views import Encoded, View

    objective = build_objectives({"template_flow": {"grid": 8, "size": 56}}, 16, 8)[0]["template_flow"]
    base = smooth_image(56, 3)
    still = base.expand(2, 3, 3, 56, 56)  # two clips of three identical frames: the template is `base`
    objective(None, Encoded([View(frames=still, features=torch.zeros(2, 3, 8))]))
    moved = torch.stack([base, shifted(base, 2, 0)])[None]  # [1, 2, 3, 56, 56]
    objective.eval()  # the template stays as it is
    grey = standard_grey(moved.flatten(0, 1), 56)
    field = objective.pool(dense_flow(to_uint8(objective.template).expand(2, -1, -1), to_uint8(grey)))
    x, y = field.view(2, 2, -1).unbind(1)
    assert x[0].abs().max() < 0.2 and y.abs().max() < 0.3
    assert torch.allclose(x[1], torch.full_like(x[1], 2.0), atol=0.3), x[1]


def test_face_mask_keeps_the_face_and_drops_the_corners():
    mask = face_mask(8)
    assert mask[4, 4] and mask[5, 3] and not mask[0, 0] and not mask[7, 7] and not mask[0, 7]
    assert 0.3 < mask.float().mean() < 0.7


# ------------------------------------------------------------------------------ AU centres


def test_au_centres_follow_jaa_nets_rule_on_known_points():
    lm = np.zeros((68, 2), np.float32)
    lm[39], lm[42] = (40.0, 50.0), (60.0, 50.0)  # inner eye corners: ruler 20
    lm[21], lm[22] = (45.0, 40.0), (55.0, 40.0)  # inner brow ends
    lm[48], lm[54] = (38.0, 80.0), (62.0, 80.0)  # mouth corners
    lm[56], lm[58] = (55.0, 88.0), (45.0, 88.0)  # lower lip
    c = au_centres(lm, ["AU1", "AU12", "AU17"])
    assert np.allclose(c[0], [[45, 30], [55, 30]])  # inner brows, up ruler / 2
    assert np.allclose(c[1], [[38, 80], [62, 80]])  # lip corners
    assert np.allclose(c[2], [[55, 98], [45, 98]])  # below the lower lip, down ruler / 2
    batch = au_centres(torch.tensor(lm).expand(3, 68, 2), ["AU1", "AU12", "AU17"])
    assert batch.shape == (3, 3, 2, 2) and torch.allclose(batch[2], torch.tensor(c))


@pytest.mark.parametrize("au, share", [("AU1", 0.4), ("AU4", 0.3), ("AU12", 0.6), ("AU6", 0.1), ("AU26", 0.08)])
def test_mean_face_au_centres_lie_where_the_renderer_moves_the_pixels(au, share):
    """Render three people with one AU at 5 and at 0; after alignment by their own landmarks, the
    pixels that change lie mostly within 0.1 of the side of the mean face's centres for that AU
    (a region of about 3% of the crop): the canonical template puts each AU where it acts."""
    from shards.face import AU_INDEX, AU_NAMES, Identity, face_state, landmarks_canonical, project, render

    size = 112
    pose = np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], np.float32)
    light = {"direction": (0.0, -0.3, 1.0), "ambient": 0.5, "diffuse": 0.5, "colour": np.ones(3, np.float32)}
    background = np.full((size, size, 3), 128, np.float32)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    pixels = torch.tensor(np.stack([xs.ravel(), ys.ravel()], -1)[None], dtype=torch.float32)
    centres = au_centres(MEAN_FACE, [au])[0]
    for person in range(3):
        ident = Identity.make(0, person)
        rest = np.zeros((1, len(AU_NAMES)), np.float32)
        active = rest.copy()
        active[0, AU_INDEX[au]] = 5
        change = np.abs(render(ident, face_state(ident, active), pose, size, light, background)
                        - render(ident, face_state(ident, rest), pose, size, light, background)).sum(-1).ravel()  # fmt: skip
        landmarks = project(landmarks_canonical(ident, face_state(ident, rest)), pose, size)
        unit = to_template(pixels, template_transforms(torch.tensor(landmarks[:, ALIGN_POINTS])))[0].numpy()
        near = np.linalg.norm(unit[:, None] - centres[None], axis=-1).min(1) < 0.1
        assert near.mean() < 0.05
        assert change[near].sum() / change.sum() >= max(share, 4 * near.mean()), (person, au)


def test_patch_masks_cover_squares_around_the_chosen_centres():
    centres = region_centres()
    assert len(centres) >= 8 and ((centres > 0) & (centres < 1)).all()
    chosen = torch.tensor([[0, 1], [2, 3]])
    masks = patch_masks(centres, chosen, 40, 0.2)
    assert masks.shape == (2, 1, 40, 40)
    for n in range(2):
        for k in chosen[n]:
            x, y = (centres[k] * 40).long()
            assert masks[n, 0, y, x]
    assert 0 < masks[0].float().mean() <= 2 * 0.2 * 0.2 + 1e-6


# ------------------------------------------------------------------------------ optimal transport


def test_sinkhorn_plan_has_the_given_marginals():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(5, 6, 7, generator=g)
    rows = torch.softmax(torch.randn(6, generator=g), 0)
    cols = torch.softmax(torch.randn(7, generator=g), 0)
    plan = sinkhorn(cost, epsilon=0.1, iterations=200, rows=rows, cols=cols)
    assert (plan >= 0).all()
    assert torch.allclose(plan.sum(-1), rows.expand(5, 6), atol=1e-4)
    assert torch.allclose(plan.sum(-2), cols.expand(5, 7), atol=1e-5)
    uniform = sinkhorn(cost, epsilon=0.1, iterations=200)
    assert torch.allclose(uniform.sum(-1), torch.full((5, 6), 1 / 6), atol=1e-4)


def test_sinkhorn_finds_the_matching_at_small_epsilon():
    perm = torch.tensor([2, 0, 3, 1])
    cost = torch.ones(4, 4)
    cost[torch.arange(4), perm] = 0
    plan = sinkhorn(cost, epsilon=0.02, iterations=100)
    assert torch.equal(plan.argmax(-1), perm) and plan[torch.arange(4), perm].sum() > 0.99


# ------------------------------------------------------------------------------ training


def clips(b: int, t: int, size: int, seed: int) -> torch.Tensor:
    """uint8 clips [B, T, 3, S, S]: smooth textures drifting by a pixel a frame, each its own way."""
    out = []
    for c in range(b):
        base, (dx, dy) = smooth_image(size, seed * 100 + c), ((c % 3) - 1, (c // 3) % 3 - 1)
        out.append(torch.stack([shifted(base, dx * i, dy * i) for i in range(t)]))
    return torch.stack(out)


def trained(arch: str, spec: dict, size: int, steps: int, lr: float = 1e-3):
    torch.manual_seed(0)
    encoder = ClipEncoder(arch, 16, "conv", size)
    objectives, weights = build_objectives(spec, 16, encoder.num_features, encoder.patch_size)
    model = PretrainModel(encoder, objectives, weights)
    g = torch.Generator().manual_seed(0)
    views = make_views(clips(6, 4, size, 1), torch.arange(4).repeat(6, 1), MEAN, STD, g, 3)
    model.zero_grad()
    model(views)[0].backward()
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.backbone.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        torch.manual_seed(1)  # the same masks every step: the loss falls by learning, not by luck
        total, losses = model(views)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append(float(total.detach()))
    return history, losses, reached


@pytest.mark.parametrize("arch, spec, size, ratio", [
    # the toy clips move rigidly: two axes of motion
    ("resnet10t", {"flow": {"grid": 4, "components": 2}}, 32, 0.8),
    ("resnet10t", {"flow": {"grid": 4, "components": 2, "source": "frame"}}, 32, 0.8),
    ("resnet10t", {"template_flow": {"grid": 4, "components": 2, "size": 32}}, 32, 0.8),
    # rebuilding random texture is slow to learn: a tenth off in 25 steps
    ("resnet10t", {"roi_inpaint": {"regions": 3}}, 32, 0.93),
    ("resnet10t", {"au_relation": {"regions": 4}}, 32, 0.8),
    ("vit_small_patch8_224", {"masked_image": {"width": 32, "depth": 1}}, 32, 0.8),
])  # fmt: skip
def test_each_pixel_objective_falls_and_reaches_the_backbone(arch, spec, size, ratio):
    history, losses, reached = trained(arch, spec, size, steps=25)
    assert reached, "no gradient reached the backbone"
    assert all(torch.isfinite(v) for v in losses.values())
    assert np.mean(history[-5:]) < ratio * np.mean(history[:3]), history


def test_masked_image_is_refused_on_a_backbone_without_patches():
    with pytest.raises(ValueError, match="masked_image needs a ViT"):
        build_objectives({"masked_image": {}}, 16, 32, patch_size=0)


def test_feature_maps_for_resnet_vit_and_swin():
    """The encoder's last-stage maps, NCHW whatever the family, at sizes where Swin's windows fit."""
    for arch, size, channels in (("resnet10t", 32, 512), ("vit_small_patch8_224", 32, 384),
                                 ("swin_tiny_patch4_window7_224", 112, 768)):  # fmt: skip
        encoder = ClipEncoder(arch, 16, "conv", size)
        with torch.no_grad():
            out = encoder(torch.randn(1, 2, 3, size, size), maps=True)
        assert out["maps"].shape[:3] == (1, 2, channels) and out["maps"].ndim == 5, arch
        assert out["features"].shape == (1, 2, encoder.num_features)
