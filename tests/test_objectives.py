"""The pretraining objectives, views, learning-rate schedule and parameter groups: the formulas
and invariances their docstrings state, checked numerically, and short training runs of a tiny
real `ClipEncoder` that must lower each loss."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pretrain.augment import augment, make_views, step_generator
from pretrain.config import PretrainConfig
from pretrain.model import ClipEncoder
from pretrain.objectives import OBJECTIVES, PretrainModel, build_objectives
from pretrain.objectives.temporal import ClipContrastive, TemporalMargin
from pretrain.train import lr_at, param_groups
from pretrain.views import Encoded, View

ARCH, SIZE, DIM = "resnet10t", 32, 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: see conftest.one_thread


def views_of(au_list, times):
    """An `Encoded` as PretrainModel.encode makes it, from AU embeddings and times."""
    return Encoded([View(au=au, time=t, clip=au.mean(1), features=au) for au, t in zip(au_list, times)])


def clips_of(clip_list):
    return Encoded([View(clip=c) for c in clip_list])


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def uneven_times(b: int, length: int, seed: int) -> torch.Tensor:
    """Strictly increasing frame times starting at 0, with uneven steps, per clip."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(1, 4, (b, length - 1), generator=g).float()
    return torch.cat([torch.zeros(b, 1), steps.cumsum(1)], dim=1)


def fixed_clips(b: int, t: int, seed: int) -> torch.Tensor:
    """uint8 [B, T, 3, H, W] clips that change smoothly over time (a blend of two images)."""
    g = torch.Generator().manual_seed(seed)
    a, z = torch.rand(2, b, 1, 3, SIZE, SIZE, generator=g)
    w = torch.linspace(0, 1, t).view(1, t, 1, 1, 1)
    return ((1 - w) * a + w * z).mul(255).round().to(torch.uint8)


def tiny_model(spec: dict, seed: int = 0) -> PretrainModel:
    torch.manual_seed(seed)
    encoder = ClipEncoder(ARCH, DIM, "conv", SIZE)
    objectives, weights = build_objectives(spec, DIM)
    return PretrainModel(encoder, objectives, weights)


def train(model: PretrainModel, views: list[View], steps: int, lr: float = 1e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        total, _ = model(views)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append(float(total.detach()))
    return history


def backbone_grad_reaches(model: PretrainModel, views: list[View]) -> bool:
    model.zero_grad(set_to_none=True)
    total, _ = model(views)
    total.backward()
    grads = [p.grad for p in model.encoder.backbone.parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------ temporal margin


def reference_temporal_margin(z: torch.Tensor, time: torch.Tensor, margin: float) -> float:
    """The docstring's formula, triplet by triplet (a, p, n) with |t_a - t_p| < |t_a - t_n|."""
    z = nn.functional.normalize(z.double(), dim=-1)
    terms = []
    for c in range(z.shape[0]):
        t = time[c].double()
        big_g = max(abs(float(x - y)) for x in t for y in t)
        for a in range(len(t)):
            for p in range(len(t)):
                for n in range(len(t)):
                    gp, gn = abs(float(t[a] - t[p])), abs(float(t[a] - t[n]))
                    if gp < gn:
                        d_ap = float((z[c, a] - z[c, p]).pow(2).sum())
                        d_an = float((z[c, a] - z[c, n]).pow(2).sum())
                        terms.append(max(0.0, d_ap - d_an + margin * (gn - gp) / big_g))
    return sum(terms) / len(terms)


def test_temporal_margin_matches_its_formula():
    torch.manual_seed(0)
    b, length = 3, 5
    au = [torch.randn(b, length, 6), torch.randn(b, length, 6)]
    times = [uneven_times(b, length, 1), uneven_times(b, length, 2)]
    loss = TemporalMargin(DIM, margin=0.7)(None, views_of(au, times))["temporal_margin"]
    expected = sum(reference_temporal_margin(a, t, 0.7) for a, t in zip(au, times)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_temporal_margin_invariances():
    torch.manual_seed(1)
    b, length, d = 5, 6, 8
    au = [torch.randn(b, length, d), torch.randn(b, length, d)]
    times = [uneven_times(b, length, 3), uneven_times(b, length, 4)]
    objective = TemporalMargin(d, margin=0.5)

    def loss(au_list, time_list):
        return objective(None, views_of(au_list, time_list))["temporal_margin"]

    base = loss(au, times)
    assert base > 0
    rot = random_orthogonal(d, 5)
    assert torch.allclose(loss([a @ rot for a in au], times), base, atol=1e-5), "rotation of the embedding space"
    assert torch.allclose(loss(au, [t + 17.0 for t in times]), base, atol=1e-6), "shift of time"
    reversed_t = [t.amax(dim=1, keepdim=True) - t for t in times]
    assert torch.allclose(loss(au, reversed_t), base, atol=1e-6), "reversal of time"
    perm = torch.randperm(b)
    assert torch.allclose(loss([a[perm] for a in au], [t[perm] for t in times]), base, atol=1e-6), "clip order"
    # the loss does look at which frame has which time: shuffling times within clips changes it
    shuffled = [t[:, torch.randperm(length)] for t in times]
    assert not torch.allclose(loss(au, shuffled), base, atol=1e-4)


def great_circle(b: int, length: int, d: int, times: torch.Tensor, seed: int) -> torch.Tensor:
    """Embeddings on a half great circle, the angle proportional to time: the squared distance
    2 - 2 cos(angle) grows with the time gap."""
    angle = math.pi * times / times.amax(dim=1, keepdim=True)
    plane = torch.stack([angle.cos(), angle.sin()], dim=-1)  # [B, L, 2]
    basis = random_orthogonal(d, seed)[:2]  # a random plane in R^d
    return plane @ basis


def test_temporal_margin_is_zero_for_time_ordered_embeddings():
    b, length, d = 4, 6, 8
    times = torch.arange(length).float().expand(b, -1) * 2  # stride 2, as data.stride makes them
    z = great_circle(b, length, d, times, seed=7)
    objective = TemporalMargin(d, margin=0.5)
    ordered = objective(None, views_of([z], [times]))["temporal_margin"]
    assert float(ordered) == pytest.approx(0.0, abs=1e-6)
    # the same embeddings handed to shuffled frames: time order broken, positive loss
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([z[i, torch.randperm(length, generator=g)] for i in range(b)])
    assert float(objective(None, views_of([shuffled], [times]))["temporal_margin"]) > 0.01


def test_temporal_margin_positive_for_collapsed_embeddings():
    b, length, d = 2, 5, 8
    times = uneven_times(b, length, 9)
    same = torch.ones(b, length, d)
    loss = TemporalMargin(d, margin=0.5)(None, views_of([same], [times]))["temporal_margin"]
    assert float(loss) > 0.05
    assert float(loss) == pytest.approx(reference_temporal_margin(same, times, 0.5), rel=1e-5)
    assert float(TemporalMargin(d, margin=0.0)(None, views_of([same], [times]))["temporal_margin"]) == 0.0


@pytest.mark.slow
def test_temporal_margin_trains_a_clip_encoder():
    model = tiny_model({"temporal_margin": {"margin": 0.5}})
    clips = fixed_clips(4, 6, seed=0)
    times = torch.arange(6).float().expand(4, -1) * 2
    x = (clips.float() / 255 - torch.tensor(MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(STD).view(1, 1, 3, 1, 1)
    views = [View(input=x, time=times)]
    assert backbone_grad_reaches(model, views)
    history = train(model, views, steps=30)
    assert all(math.isfinite(v) for v in history)
    assert history[0] > 0.02
    assert min(history[-5:]) < 0.7 * history[0], history


# ------------------------------------------------------------------------------ clip contrastive


def reference_contrastive(first: torch.Tensor, second: torch.Tensor, tau: float) -> float:
    c, c2 = nn.functional.normalize(first.double(), dim=-1), nn.functional.normalize(second.double(), dim=-1)
    total = 0.0
    for i in range(len(c)):
        total += -torch.log_softmax(c[i] @ c2.T / tau, 0)[i] - torch.log_softmax(c2[i] @ c.T / tau, 0)[i]
    return float(total) / (2 * len(c))


@torch.no_grad()
def test_clip_contrastive_matches_its_formula():
    torch.manual_seed(2)
    objective = ClipContrastive(8, temperature=0.2)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    loss = objective(None, clips_of([a, b]))["clip_contrastive"]
    expected = reference_contrastive(objective.head(a), objective.head(b), 0.2)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@torch.no_grad()
def test_clip_contrastive_invariances():
    torch.manual_seed(3)
    objective = ClipContrastive(8, temperature=0.1)
    a, b = torch.randn(7, 8), torch.randn(7, 8)

    def loss(x, y):
        return objective(None, clips_of([x, y]))["clip_contrastive"]

    base = loss(a, b)
    perm = torch.randperm(7)
    assert torch.allclose(loss(a[perm], b[perm]), base, atol=1e-5), "clip order"
    assert torch.allclose(loss(b, a), base, atol=1e-6), "the two views are symmetric"
    # but the pairing matters: permuting one view only changes the loss
    assert not torch.allclose(loss(a, b[torch.roll(torch.arange(7), 1)]), base, atol=1e-3)


@torch.no_grad()
def test_clip_contrastive_limits():
    b, d = 8, 16
    objective = ClipContrastive(d, temperature=0.05)
    objective.head = nn.Identity()  # score the clip embeddings themselves
    separated = torch.eye(d)[:b] * 3.0  # orthogonal clips, identical views
    loss = objective(None, clips_of([separated, separated]))["clip_contrastive"]
    assert float(loss) == pytest.approx(math.log(1 + (b - 1) * math.exp(-1 / 0.05)), abs=1e-6)
    assert float(loss) < 1e-6
    # all clips alike: every candidate is as likely, log(B), with the real (random) head too
    same = torch.ones(b, d)
    for head in (nn.Identity(), ClipContrastive(d).head):
        objective.head = head
        assert float(objective(None, clips_of([same, same.clone()]))["clip_contrastive"]) == pytest.approx(
            math.log(b), rel=1e-5)  # fmt: skip


def test_clip_contrastive_trains_a_clip_encoder():
    model = tiny_model({"clip_contrastive": {"temperature": 0.1}}, seed=1)
    clips = fixed_clips(8, 3, seed=1)
    frame_index = torch.arange(3).expand(8, -1) * 2
    views = make_views(clips, frame_index, MEAN, STD, step_generator(0, 1, 0, 0, "cpu"), length=2)
    assert backbone_grad_reaches(model, views)
    history = train(model, views, steps=30)
    assert all(math.isfinite(v) for v in history)
    assert history[0] > 1.0  # about log(8) at initialisation
    assert min(history[-5:]) < 0.7 * history[0], history


# ------------------------------------------------------------------------------ build_objectives


def test_build_objectives_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="temporal_margn"):
        build_objectives({"temporal_margn": {"weight": 1.0}}, DIM)
    with pytest.raises(ValueError, match=r"clip_contrastive.*temprature"):
        build_objectives({"clip_contrastive": {"temprature": 0.1}}, DIM)
    with pytest.raises(ValueError):
        build_objectives({}, DIM)


def test_build_objectives_weights_and_total():
    spec = {"temporal_margin": {"weight": 2.0, "margin": 0.3}, "clip_contrastive": {"weight": 0.25, "temperature": 0.2}}
    objectives, weights = build_objectives(spec, DIM)
    assert spec["temporal_margin"] == {"weight": 2.0, "margin": 0.3}, "the spec is not modified"
    assert weights == {"temporal_margin": 2.0, "clip_contrastive": 0.25}
    assert objectives["temporal_margin"].margin == 0.3 and objectives["clip_contrastive"].temperature == 0.2
    assert set(OBJECTIVES) >= {"temporal_margin", "clip_contrastive"}
    _, default = build_objectives({"temporal_margin": None}, DIM)
    assert default == {"temporal_margin": 1.0}

    torch.manual_seed(4)
    model = PretrainModel(nn.Identity(), objectives, weights)
    b, length = 4, 5
    encoded = views_of([torch.randn(b, length, DIM), torch.randn(b, length, DIM)],
                       [uneven_times(b, length, 5), uneven_times(b, length, 6)])  # fmt: skip
    total, losses = model.losses(None, encoded)
    assert set(losses) == {"temporal_margin", "clip_contrastive"}
    assert all(float(v.detach()) > 0 for v in losses.values())
    expected = 2.0 * losses["temporal_margin"] + 0.25 * losses["clip_contrastive"]
    assert torch.allclose(total, expected, rtol=1e-6)


# ------------------------------------------------------------------------------ views


def test_make_views_windows_times_and_normalisation():
    b, t, length = 3, 8, 5
    g0 = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (b, t, 3, SIZE, SIZE), dtype=torch.uint8, generator=g0)
    frame_index = torch.tensor([[0, 2, 4, 6, 8, 10, 12, 14], [5, 6, 7, 8, 9, 10, 11, 12], [0, 1, 3, 6, 10, 15, 21, 28]])
    views = make_views(clips, frame_index, MEAN, STD, step_generator(0, 1, 0, 0, "cpu"), length, augmented=False)
    assert len(views) == 2
    mean, std = torch.tensor(MEAN).view(1, 1, 3, 1, 1), torch.tensor(STD).view(1, 1, 3, 1, 1)
    for view in views:
        assert view.input.shape == (b, length, 3, SIZE, SIZE) and view.input.dtype == torch.float32
        assert view.time.shape == (b, length) and view.time.is_floating_point()
        assert (view.time[:, 0] == 0).all()
        raw = view.input * std + mean  # back to 0..1
        for i in range(b):
            # the view is a window of consecutive stored frames, and its times are their frame
            # index steps, counted from the window's first frame
            windows = [clips[i, s : s + length].float() / 255 for s in range(t - length + 1)]
            starts = [s for s, w in enumerate(windows) if torch.allclose(raw[i], w, atol=1e-5)]
            assert len(starts) == 1, f"clip {i}: view is not a window of the clip"
            s = starts[0]
            assert torch.equal(view.time[i], (frame_index[i, s : s + length] - frame_index[i, s]).float())
        assert torch.equal(views[0].time[0], torch.arange(length).float() * 2)


def test_make_views_seeded():
    clips = torch.randint(0, 256, (4, 8, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    frame_index = torch.arange(8).expand(4, -1)

    def views(step):
        return make_views(clips, frame_index, MEAN, STD, step_generator(3, step, 0, 0, "cpu"), 6)

    a, b, c = views(5), views(5), views(6)
    for va, vb in zip(a, b):
        assert torch.equal(va.input, vb.input) and torch.equal(va.time, vb.time)
    assert not torch.equal(a[0].input, c[0].input)
    assert not torch.equal(a[0].input, a[1].input), "the two views differ"
    raw = a[0].input * torch.tensor(STD).view(1, 1, 3, 1, 1) + torch.tensor(MEAN).view(1, 1, 3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_augment_shape_range_and_one_draw_per_clip():
    g0 = torch.Generator().manual_seed(2)
    frames = torch.rand(6, 1, 3, SIZE, SIZE, generator=g0).expand(-1, 4, -1, -1, -1).contiguous()
    out = augment(frames.clone(), torch.Generator().manual_seed(0))
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, frames, atol=1e-2), "augmentation changed nothing"
    # frames alike in time stay alike: the crop, flip and colour are drawn once per clip
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)
    again = augment(frames.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    # extreme inputs stay in range
    assert augment(torch.ones_like(frames), torch.Generator().manual_seed(1)).max() <= 1
    assert augment(torch.zeros_like(frames), torch.Generator().manual_seed(1)).min() >= 0


# ------------------------------------------------------------------------------ schedule and groups


def make_cfg(**optim):
    cfg = OmegaConf.structured(PretrainConfig)
    cfg.optim.lr, cfg.optim.lr_batch, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 1e-3, 256, 10, 0.01
    cfg.train.steps = 110
    for key, value in optim.items():
        cfg.optim[key] = value
    return cfg


def test_lr_warmup_then_cosine():
    cfg = make_cfg()
    peak = 1e-3 * 64 / 256  # scaled by the global batch
    lr = [lr_at(s, cfg, 64) for s in range(0, 131)]
    assert lr[0] == 0.0
    for s in range(0, 11):
        assert lr[s] == pytest.approx(peak * s / 10, rel=1e-9, abs=1e-15), "linear warmup"
    assert max(lr) == pytest.approx(peak)
    assert all(a >= b - 1e-15 for a, b in zip(lr[10:], lr[11:])), "decays monotonically after warmup"
    assert lr[60] == pytest.approx(peak * (0.01 + 0.99 * 0.5)), "half-way through the cosine"
    assert lr[35] == pytest.approx(peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.25))))
    assert lr[110] == pytest.approx(0.01 * peak), "min_lr_ratio * peak at train.steps"
    assert lr[130] == pytest.approx(0.01 * peak), "and stays there"
    assert lr_at(10, cfg, 512) == pytest.approx(2 * 1e-3)
    no_warmup = make_cfg(warmup_steps=0)
    assert lr_at(1, no_warmup, 256) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 110))))


def test_param_groups_decay_only_weight_matrices():
    torch.manual_seed(0)
    encoder = ClipEncoder(ARCH, DIM, "transformer", SIZE)
    objectives, weights = build_objectives({"temporal_margin": {}, "clip_contrastive": {}}, DIM)
    model = PretrainModel(encoder, objectives, weights)
    frozen = model.encoder.backbone.conv1[0].weight
    frozen.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)), "a parameter in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable and id(frozen) not in set(ids)
    named = dict(model.named_parameters())
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in named.items():
        if not p.requires_grad:
            continue
        if p.ndim <= 1:
            assert id(p) in no_decay_ids, name
        else:
            assert id(p) not in no_decay_ids, name
    kinds = {type(m).__name__ for m in model.modules() for p in m.parameters(recurse=False) if p.ndim <= 1}
    assert {"BatchNorm2d", "Linear", "LayerNorm"} <= kinds  # norms and biases seen
    assert any(p.ndim == 4 for p in decay["params"]), "conv kernels are decayed"


def geometry_views(features, landmarks):
    return Encoded([View(features=f, landmarks=lm) for f, lm in zip(features, landmarks)])


def test_landmark_geometry_whitens_its_targets_and_skips_unknown_landmarks():
    """The running whitening maps the targets onto unit-variance principal axes (so a head that
    outputs zeros scores exactly 1 per component on the batch it was estimated from); clips with
    an unknown landmark drop out; no landmarks at all is a clear error."""
    from pretrain.objectives.geometry import LandmarkGeometry

    g = torch.Generator().manual_seed(0)
    b, length, feat = 12, 5, 8
    # shapes vary along a few directions, with very unequal variances (like identity vs AUs)
    basis = torch.randn(6, 136, generator=g)
    scales = torch.tensor([5.0, 2.0, 1.0, 0.3, 0.1, 0.05])
    lms = [((torch.randn(b, length, 6, generator=g) * scales) @ basis).view(b, length, 68, 2) for _ in range(2)]
    objective = LandmarkGeometry(feature_dim=feat, components=4)
    with torch.no_grad():
        objective.head.weight.zero_(), objective.head.bias.zero_()
    features = [torch.randn(b, length, feat, generator=g) for _ in range(2)]
    loss = objective(None, geometry_views(features, lms))["landmark_geometry"]
    assert float(loss.detach()) == pytest.approx(1.0, rel=1e-3)
    whitened = objective.shape(torch.cat(lms).flatten(2).flatten(0, 1))
    assert torch.allclose(whitened.var(0, unbiased=False), torch.ones(4), rtol=1e-3)
    # a clip with one unknown frame is left out of the loss and of the statistics
    lms[0][0, 2] = float("nan")
    before = objective.shape.mean.clone()
    assert torch.isfinite(objective(None, geometry_views(features, lms))["landmark_geometry"])
    assert torch.isfinite(objective.shape.mean).all() and not torch.equal(before, objective.shape.mean)
    with pytest.raises(ValueError, match="landmarks"):
        objective(None, Encoded([View(features=features[0])]))


@pytest.mark.slow
def test_landmark_geometry_trains_a_real_encoder_to_read_the_face_shape():
    """A tiny ClipEncoder on clips whose 'landmarks' are a function of the pixels lowers the loss
    well below 1, the score of knowing nothing."""
    from pretrain.objectives.geometry import LandmarkGeometry

    torch.manual_seed(0)
    encoder = ClipEncoder(ARCH, DIM, "none", SIZE)
    objective = LandmarkGeometry(feature_dim=encoder.num_features, components=3, momentum=0.1)
    opt = torch.optim.AdamW([*encoder.parameters(), *objective.parameters()], lr=3e-3)
    clips = fixed_clips(8, 4, seed=1)  # smooth blends: mean brightness of a region moves with time
    frames = clips.float() / 255
    cue = torch.stack([frames[..., :16, :16].mean((2, 3, 4)), frames[..., 16:, 16:].mean((2, 3, 4)),
                       frames[..., :16, 16:].mean((2, 3, 4))], -1)  # [B, T, 3]  # fmt: skip
    landmarks = (cue @ torch.randn(3, 136, generator=torch.Generator().manual_seed(2))).view(8, 4, 68, 2)
    x = (frames - torch.tensor(MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(STD).view(1, 1, 3, 1, 1)
    losses = []
    for _ in range(60):
        loss = objective(None, geometry_views([encoder(x)["features"]], [landmarks]))["landmark_geometry"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _whitened_flips(whitening, steps: int = 200) -> tuple[int, float]:
    """Feed a running whitening batches from one fixed distribution whose variances come in
    near-equal pairs (eigh may return such axes in either order and with either sign); count the
    updates after which a fixed probe point's whitened coordinates jump, and the largest jump."""
    g = torch.Generator().manual_seed(0)
    dim = 20
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    scales = torch.tensor([4.0, 3.9, 2.0, 1.98, 1.0, 0.99] + [0.1] * (dim - 6))
    probe = torch.randn(8, dim, generator=g) @ (basis * scales).T
    jumps, largest, previous = 0, 0.0, None
    for _ in range(steps):
        whitening.update((torch.randn(96, dim, generator=g) * scales) @ basis.T)
        now = whitening(probe)
        if previous is not None:
            change = float((now - previous).norm() / previous.norm())
            jumps += change > 0.5
            largest = max(largest, change)
        previous = now
    return jumps, largest


def test_whitening_target_is_continuous_across_updates():
    """The whitened coordinates of a fixed point change only as much as the running statistics
    do: eigh's arbitrary signs and the order of near-equal axes must not flip the regression
    target from one step to the next (they did, dozens of times in 500 steps, before the axes
    were aligned); and the map still whitens."""
    from pretrain.objectives.geometry import Whitening

    whitening = Whitening(20, 6, momentum=0.01)
    jumps, largest = _whitened_flips(whitening)
    assert jumps == 0 and largest < 0.2, (jumps, largest)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 20, generator=g) * torch.linspace(3, 0.1, 20)
    fresh = Whitening(20, 6, momentum=0.01)
    fresh.update(x)
    white = fresh(x)
    assert torch.allclose(white.T @ white / len(x), torch.eye(6), atol=1e-3)


def test_an_objective_that_mines_gets_a_bank_at_construction_and_only_then():
    """Mining is declared by the objective (`Objective.mines`) and the bank handed to the model
    when it is built: a miner without a bank, or a bank with no miner, is refused there, not at
    the first step."""
    from pretrain.bank import MemoryBank
    from pretrain.objectives import Objective, mines, register

    mining, _ = build_objectives({"cross_identity": {}}, DIM)
    plain, weights = build_objectives({"temporal_margin": {}}, DIM)
    assert mines(mining) and not mines(plain)
    with pytest.raises(ValueError, match="cross_identity mines"):
        PretrainModel(nn.Identity(), mining, {"cross_identity": 1.0})
    with pytest.raises(ValueError, match="no objective that mines"):
        PretrainModel(nn.Identity(), plain, weights, bank=MemoryBank(8, DIM, "cpu"))
    with pytest.raises(TypeError, match="must subclass"):
        register("not_an_objective")(nn.Linear)
    assert "not_an_objective" not in OBJECTIVES and issubclass(OBJECTIVES["cross_identity"], Objective)
