"""Evidence that the synthetic face generator (`shards.face`, `shards.synthetic`) is a fair test bed.

1. Geometry: each AU moves the landmarks FACS says it moves, in the FACS direction, by a visible
   amount, and leaves the rest of the face alone.
2. Locality: each AU changes the pixels of its own region, and far less than a change of person.
3. Identity: a person is the same in every clip; persons differ; 10,000 of them are possible.
4. Dynamics: frame-level AU rates are skewed like BP4D/DISFA, AUs co-occur as in real faces, and
   events have onsets and offsets.
5. Determinism: the same arguments give byte-identical shards; held-out persons stay out of train.
6. Difficulty: AUs are learnable from pixels but subtle and label-hungry; identity is easy.

Run with `pytest -s` to see the figures (rates table, F1s, identity accuracy).
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from shards.face import AU_INDEX, AU_NAMES, Identity, face_state, landmarks_canonical, project, render
from shards.manifest import heldout_people
from shards.synthetic import (
    Renderer,
    _video_setting,
    au_track,
    occurrence,
    write_synthetic,
)

A = len(AU_NAMES)
SIZE = 112
POSE = np.array([[0.2, -0.1, 0.05, 1.0, 0.0, 0.0]], np.float32)  # yaw, pitch, roll, scale, dx, dy
PEOPLE = range(5)
SEED = 0
MOVE_PX = 1.0  # a landmark the AU moves moves at least this far at intensity 5 (112 px crop)
STAY_PX = 0.3  # a landmark the AU does not move stays within this

# iBUG-68 groups
JAW = list(range(0, 17))
TEMPLES = [0, 16]
BROWS = list(range(17, 27))
BRIDGE = list(range(27, 31))
NOSE = list(range(27, 36))
EYES = list(range(36, 48))
EYE_CORNERS = [36, 39, 42, 45]
LOWER_LIDS = [40, 41, 46, 47]
MOUTH = list(range(48, 68))
LIP_CENTRES = [51, 57, 62, 66]
CORNERS = [48, 54]
LID_PAIRS = [(37, 41), (38, 40), (43, 47), (44, 46)]  # upper lid above lower lid


def au_vector(name: str | None = None, value: float = 5.0) -> np.ndarray:
    au = np.zeros((1, A), np.float32)
    if name is not None:
        au[0, AU_INDEX[name]] = value
    return au


def landmarks(ident: Identity, au: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical [68, 2] and projected pixels [68, 2] at POSE."""
    canon = landmarks_canonical(ident, face_state(ident, au))
    return canon[0], project(canon, POSE, SIZE)[0]


# -- 1. geometry ---------------------------------------------------------------------------------
#
# Each check gets (c0, c1, p0, p1): neutral and AU landmarks in canonical units (v grows downwards)
# and in pixels at POSE. Directions are judged in canonical space (the face's own frame),
# magnitudes in pixels.


def _moves(p0, p1, idx):
    return np.linalg.norm(p1[idx] - p0[idx], axis=-1)


def up(*idx):
    def check(c0, c1, p0, p1):
        dv = c1[list(idx), 1] - c0[list(idx), 1]
        px = _moves(p0, p1, list(idx))
        assert (dv < 0).all(), f"landmarks {idx} should rise: canonical dv {dv.round(4)}"
        assert (px > MOVE_PX).all(), f"landmarks {idx} rise only {px.round(2)} px (want > {MOVE_PX})"

    return check


def down(*idx):
    def check(c0, c1, p0, p1):
        dv = c1[list(idx), 1] - c0[list(idx), 1]
        px = _moves(p0, p1, list(idx))
        assert (dv > 0).all(), f"landmarks {idx} should fall: canonical dv {dv.round(4)}"
        assert (px > MOVE_PX).all(), f"landmarks {idx} fall only {px.round(2)} px (want > {MOVE_PX})"

    return check


def distance(i, j, sign):
    """|i - j| grows (sign +1) or shrinks (-1) in canonical space, by > MOVE_PX in pixels."""

    def check(c0, c1, p0, p1):
        dc = np.linalg.norm(c1[i] - c1[j]) - np.linalg.norm(c0[i] - c0[j])
        dp = np.linalg.norm(p1[i] - p1[j]) - np.linalg.norm(p0[i] - p0[j])
        what = "grow" if sign > 0 else "shrink"
        assert sign * dc > 0, f"distance {i}-{j} should {what}: canonical change {dc:.4f}"
        assert sign * dp > MOVE_PX, f"distance {i}-{j} changes only {dp:.2f} px (want {what} by > {MOVE_PX})"

    return check


def all_brows_down(c0, c1, p0, p1):
    dv = c1[BROWS, 1] - c0[BROWS, 1]
    assert (dv > 0).all(), f"all brow points should lower: dv {dv.round(4)}"


def corners_apart(c0, c1, p0, p1):
    assert c1[48, 0] < c0[48, 0] and c1[54, 0] > c0[54, 0], "lip corners should move outwards"


def rise_ratio(small, big, most):
    """Rise of `small` landmarks at most `most` x the rise of `big` ones (canonical)."""

    def check(c0, c1, p0, p1):
        rise_small = (c0[small, 1] - c1[small, 1]).max()
        rise_big = (c0[big, 1] - c1[big, 1]).min()
        assert rise_small <= most * rise_big, (
            f"landmarks {small} rise {rise_small:.4f}, more than {most} x the {rise_big:.4f} of {big}"
        )

    return check


def lids_closed(c0, c1, p0, p1):
    for i, j in LID_PAIRS:
        before, after = np.linalg.norm(p0[i] - p0[j]), np.linalg.norm(p1[i] - p1[j])
        assert c1[i, 1] <= c1[j, 1] + 1e-6 or after < 0.1 * before, f"lids {i}/{j} cross"
        assert after < 0.1 * before, f"lids {i}/{j} still {after:.2f} px apart (open: {before:.2f} px)"


UPPER_STAY = JAW + NOSE + MOUTH
GEOMETRY = {
    # AU: (checks, landmarks that must stay)
    "AU1": ([up(21, 22), rise_ratio([17, 26], [21, 22], 0.3)], UPPER_STAY + EYES),
    "AU2": ([up(17, 26), rise_ratio([21, 22], [17, 26], 0.3)], UPPER_STAY + EYES),
    "AU4": ([down(21, 22), all_brows_down, distance(21, 22, -1)], UPPER_STAY + EYES),
    "AU5": ([up(37, 38, 43, 44)], UPPER_STAY + BROWS + EYE_CORNERS + LOWER_LIDS),
    "AU6": ([up(*LOWER_LIDS)], UPPER_STAY + BROWS + EYE_CORNERS),
    "AU7": ([up(*LOWER_LIDS)], UPPER_STAY + BROWS + EYE_CORNERS),
    "AU45": ([down(37, 38, 43, 44), up(*LOWER_LIDS), lids_closed], UPPER_STAY + BROWS + EYE_CORNERS),
    "AU9": ([up(31, 35)], JAW + MOUTH + EYES + BRIDGE),
    "AU10": ([up(51)], JAW + BROWS + EYES + BRIDGE + CORNERS + [55, 56, 57, 58, 59, 65, 66, 67]),
    "AU12": ([up(*CORNERS), corners_apart, distance(48, 54, +1)], JAW + BROWS + EYES + NOSE + LIP_CENTRES),
    "AU14": ([distance(48, 54, -1)], JAW + BROWS + EYES + NOSE + LIP_CENTRES),
    "AU15": ([down(*CORNERS)], JAW + BROWS + EYES + NOSE + LIP_CENTRES),
    "AU17": ([up(57, 8)], BROWS + EYES + NOSE + TEMPLES),
    "AU20": ([distance(48, 54, +1)], JAW + BROWS + EYES + NOSE),
    "AU23": ([distance(48, 54, -1)], JAW + BROWS + EYES + NOSE),
    "AU24": ([distance(51, 57, -1)], JAW + BROWS + EYES + NOSE),
    "AU25": ([distance(62, 66, +1)], JAW + BROWS + EYES + NOSE + CORNERS),
    "AU26": ([down(8)], BROWS + EYES + NOSE + TEMPLES),
}


def test_geometry_table_covers_every_au():
    assert sorted(GEOMETRY) == sorted(AU_NAMES)


@pytest.mark.parametrize("au", AU_NAMES)
def test_au_geometry(au):
    checks, stay = GEOMETRY[au]
    for person in PEOPLE:
        ident = Identity.make(SEED, person)
        c0, p0 = landmarks(ident, au_vector())
        c1, p1 = landmarks(ident, au_vector(au))
        for check in checks:
            try:
                check(c0, c1, p0, p1)
            except AssertionError as e:
                raise AssertionError(f"{au}, person {person}: {e}") from None
        moved = _moves(p0, p1, stay)
        worst = int(np.argmax(moved))
        assert moved[worst] < STAY_PX, (
            f"{au}, person {person}: landmark {stay[worst]} should stay but moves {moved[worst]:.2f} px"
        )


# -- 2. locality ---------------------------------------------------------------------------------

UPPER_AUS = ["AU1", "AU2", "AU4", "AU5", "AU7", "AU45"]
LOWER_AUS = ["AU10", "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26"]
LOCAL_SHARE = 0.8


def region(au: str, lm: np.ndarray, size: int) -> np.ndarray:
    """Boolean [S, S] mask of where `au` should act, from the neutral face's projected landmarks."""
    rows = (np.arange(size) + 0.5)[:, None] * np.ones((1, size))
    cols = (np.arange(size) + 0.5)[None, :] * np.ones((size, 1))
    brow_top = lm[BROWS, 1].min()
    bridge_mid = lm[[28, 29], 1].mean()
    nose_base = lm[33, 1]
    forehead = nose_base - brow_top  # facial thirds: the forehead is about as tall as brow-to-nose
    if au in UPPER_AUS:  # forehead, brows and eyes
        return (rows > brow_top - forehead) & (rows < bridge_mid)
    if au == "AU6":  # eyes and the cheeks under them (the cheek raiser's own region)
        return (rows > brow_top - forehead) & (rows < nose_base)
    if au == "AU9":  # nose, glabella and inner brows, between the outer eye corners
        return (rows > brow_top - 2) & (rows < lm[51, 1]) & (cols > lm[36, 0]) & (cols < lm[45, 0])
    assert au in LOWER_AUS
    return rows > bridge_mid


def neutral_and_au(person: int, au: str | None, size: int = SIZE, seed: int = SEED):
    ident = Identity.make(seed, person)
    setting = _video_setting(seed, 0, 0, size)  # same scene and light for every person
    state = face_state(ident, au_vector(au))
    return ident, render(ident, state, POSE, size, setting["light"], setting["background"])[0]


@pytest.fixture(scope="module")
def neutral_renders():
    out = {}
    for person in PEOPLE:
        ident, img = neutral_and_au(person, None)
        out[person] = (ident, img, landmarks(ident, au_vector())[1])
    return out


@pytest.mark.parametrize("au", AU_NAMES)
def test_au_locality(au, neutral_renders):
    shares, notes = [], []
    for person in PEOPLE:
        _, img0, lm = neutral_renders[person]
        _, img1 = neutral_and_au(person, au)
        diff = np.abs(img1 - img0).sum(-1)
        assert diff.max() > 10, f"{au}, person {person}: no visible change (max {diff.max():.1f})"
        shares.append(diff[region(au, lm, SIZE)].sum() / diff.sum())
        rows = np.arange(SIZE) + 0.5
        if au == "AU6":  # for the record: the stricter band that stops at the nose bridge's middle
            notes.append(diff[rows < lm[[28, 29], 1].mean()].sum() / diff.sum())
        if au == "AU9":  # for the record: how much of AU9's change is above the eyes (inner brows)
            notes.append(diff[rows < lm[EYE_CORNERS, 1].mean()].sum() / diff.sum())
    print(f"\n{au}: share of |diff| inside its region per person {[round(float(x), 2) for x in shares]}")
    if notes:
        what = "share above the nose bridge's middle" if au == "AU6" else "share above the eyes (brows)"
        print(f"{au}: {what} per person {[round(float(x), 2) for x in notes]}")
    assert min(shares) >= LOCAL_SHARE, f"{au}: only {min(shares):.2f} of the change lies in its region"


def test_au_change_small_next_to_identity(neutral_renders):
    worst = []
    for person in PEOPLE:
        _, img0, _ = neutral_renders[person]
        _, other = neutral_renders[(person + 1) % len(PEOPLE)][:2]
        between = np.abs(other - img0).mean()
        changes = {au: np.abs(neutral_and_au(person, au)[1] - img0).mean() for au in AU_NAMES}
        au, biggest = max(changes.items(), key=lambda kv: kv[1])
        worst.append((biggest / between, au))
        print(f"\nperson {person}: mean |diff| other person {between:.2f}, biggest AU {au} {biggest:.2f}")
        assert biggest < 0.5 * between, f"person {person}: {au} changes {biggest:.2f}, person change {between:.2f}"
    print(f"largest AU / identity ratio {max(worst)[0]:.3f} ({max(worst)[1]})")


# -- 3. identity persistence ---------------------------------------------------------------------


def test_identity_persists_across_clips_and_videos():
    identities = 7
    a, b = Renderer(SEED, identities, 4, 48), Renderer(SEED, identities, 4, 48)
    # two clips of the same person from different videos, found through the renderer's own draw
    seen: dict[int, dict[int, int]] = {}  # person -> video -> first clip
    pair = None
    for clip in range(60):
        meta = a.frames_and_labels(clip)[3]
        videos = seen.setdefault(meta["person"], {})
        videos.setdefault(meta["video"], clip)
        if len(videos) == 2:
            pair = meta["person"], list(videos.values())
            break
    assert pair is not None, "no person seen in two videos"
    person, (clip1, clip2) = pair
    assert b.person_of(clip1) == b.person_of(clip2) == person
    p1, p2 = a.person(person), Identity.make(SEED, person)  # cached vs freshly made
    assert p1.geometry == p2.geometry
    np.testing.assert_array_equal(p1.skin, p2.skin)
    np.testing.assert_array_equal(p1.texture, p2.texture)
    c1 = landmarks_canonical(p1, face_state(p1, au_vector()))
    c2 = landmarks_canonical(p2, face_state(p2, au_vector()))
    np.testing.assert_array_equal(c1, c2)
    # the same person rendered in the same state, pose and light gives the same picture
    setting = _video_setting(SEED, person, 0, 48)
    imgs = [render(p, face_state(p, au_vector()), POSE, 48, setting["light"], setting["background"]) for p in (p1, p2)]
    np.testing.assert_array_equal(imgs[0], imgs[1])
    # and every other person differs in geometry, skin and neutral landmarks
    for other in range(identities):
        if other == person:
            continue
        q = Identity.make(SEED, other)
        assert q.geometry != p1.geometry
        assert np.abs(q.skin - p1.skin).max() > 1.0
        cq = landmarks_canonical(q, face_state(q, au_vector()))
        assert np.abs(cq - c1).max() > 0.01
    # a different seed is a different population
    assert Identity.make(SEED + 1, person).geometry != p1.geometry


def test_ten_thousand_distinct_people():
    people = list(range(0, 10_000, 4)) + [9_999]
    assert Identity.make(SEED, 123, texture_size=4).geometry == Identity.make(SEED, 123).geometry  # drawn first
    geo = np.array([list(Identity.make(SEED, p, texture_size=4).geometry.values()) for p in people])
    assert len({tuple(g) for g in geo}) == len(people)
    # not just distinct floats: even the nearest pair differs visibly in standardised shape space
    from sklearn.neighbors import NearestNeighbors

    z = (geo - geo.mean(0)) / geo.std(0)
    dist, _ = NearestNeighbors(n_neighbors=2).fit(z).kneighbors(z)
    nearest = dist[:, 1]
    print(f"\n{len(people)} persons: nearest-neighbour distance in standardised geometry "
          f"min {nearest.min():.2f}, median {np.median(nearest):.2f} (dims {z.shape[1]})")  # fmt: skip
    assert nearest.min() > 0.1
    # identical seeds make identical people; the 10,000th is reachable and stable
    assert Identity.make(SEED, 9_999).geometry == Identity.make(SEED, 9_999).geometry


# -- 4. dynamics and rates -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracks():
    clips, frames, identities = 2000, 16, 300
    people = {p: Identity.make(SEED, p, texture_size=4) for p in range(identities)}
    rng = np.random.default_rng([SEED, 0xD7])
    who = rng.integers(identities, size=clips)
    return np.stack([au_track(np.random.default_rng([SEED, 0xAC, c]), people[int(p)], frames) for c, p in enumerate(who)])


def test_rates_and_cooccurrence(tracks):
    occ = occurrence(tracks).reshape(-1, A).astype(bool)
    rate = {name: float(occ[:, i].mean()) for name, i in AU_INDEX.items()}

    def lift(given, au):
        g, a = occ[:, AU_INDEX[given]], occ[:, AU_INDEX[au]]
        return float(a[g].mean() / a.mean())

    print(f"\nframe-level occurrence (intensity >= 1) over {tracks.shape[0]} clips x {tracks.shape[1]} frames:")
    print(" | ".join(f"{n} {rate[n]:.3f}" for n in AU_NAMES))
    pairs = [("AU6", "AU12"), ("AU1", "AU2"), ("AU4", "AU7"), ("AU25", "AU26"), ("AU23", "AU24")]
    lifts = {f"P({b}|{a})/P({b})": lift(a, b) for a, b in pairs}
    print("co-occurrence lift: " + " | ".join(f"{k} {v:.2f}" for k, v in lifts.items()))

    common, rare = ["AU12", "AU10", "AU7"], ["AU15", "AU23", "AU24"]
    ratio = min(rate[c] for c in common) / max(rate[r] for r in rare)
    print(f"min(common) / max(rare) = {ratio:.2f}; AU25 / AU9 = {rate['AU25'] / rate['AU9']:.1f}")
    assert ratio >= 2.0, rate
    assert rate["AU25"] >= 3 * rate["AU9"], rate
    for k, v in lifts.items():
        assert v > 1.3, f"{k} = {v:.2f}"


def test_events_have_onset_and_offset(tracks):
    peak = tracks.max(axis=1)  # [clips, A]
    span = tracks.max(axis=1) - tracks.min(axis=1)
    shares = {}
    for name, i in AU_INDEX.items():
        strong = peak[:, i] >= 3
        if strong.sum() >= 40:
            shares[name] = float((span[strong, i] >= 0.5).mean())
    print("\nshare of clips with an AU peaking >= 3 whose intensity varies by >= 0.5 within the clip:")
    print(" | ".join(f"{k} {v:.2f}" for k, v in shares.items()))
    assert len(shares) >= 12
    for name, share in shares.items():
        assert share > 0.5, f"{name}: only {share:.2f} of strong events rise or fall within the clip"


# -- 5. determinism and held-out identities ------------------------------------------------------


def test_write_synthetic_deterministic_and_heldout_separate(tmp_path):
    args = dict(clips=6, frames=4, size=48, identities=5, seed=2, shard_samples=2, heldout=0.4)
    m1 = write_synthetic(tmp_path / "a", **args)
    m2 = write_synthetic(tmp_path / "b", **args)
    files1 = sorted(p.name for p in (tmp_path / "a").iterdir())
    files2 = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files1 == files2 and "manifest.json" in files1
    for name in files1:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert m1.to_json() == m2.to_json()

    held = {f"p{p:05d}" for p in heldout_people(2, 5, 0.4)}
    splits = m1.splits
    assert set(splits) == {"train", "heldout"}, "pick a seed whose six clips include a held-out person"
    assert set(splits["heldout"]["identities"]) <= held
    assert not set(splits["train"]["identities"]) & held
    assert not set(splits["train"]["shards"]) & set(splits["heldout"]["shards"])

    def identities_in(shards):
        out = []
        for shard in shards:
            with tarfile.open(tmp_path / "a" / shard) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        out.append(json.loads(tar.extractfile(member).read())["identity"])
        return out

    train_ids, held_ids = identities_in(splits["train"]["shards"]), identities_in(splits["heldout"]["shards"])
    assert train_ids and held_ids
    assert not set(train_ids) & held, "a held-out person appears in a train shard"
    assert set(held_ids) <= held
    assert sorted(set(train_ids)) == splits["train"]["identities"]
    assert sorted(set(held_ids)) == splits["heldout"]["identities"]


# -- 6. difficulty -------------------------------------------------------------------------------

# Landmarks that no AU moves (checked by test_au_geometry's "stay" lists): nose bridge and eye
# corners. Faces are aligned on them, as AU pipelines align on stable points, so that a linear
# probe sees the face's parts at fixed pixels without being handed the AU-driven landmarks.
STABLE = [27, 28, 29, 30, 36, 39, 42, 45]


def _aligned_gray(frames: np.ndarray, lm: np.ndarray, template: np.ndarray, out: int) -> np.ndarray:
    from PIL import Image

    feats = []
    design = np.c_[template, np.ones(len(template))]
    for frame, points in zip(frames, lm):
        coef, *_ = np.linalg.lstsq(design, points[STABLE], rcond=None)  # output pixel -> input pixel
        gray = Image.fromarray(frame).convert("L")
        warped = gray.transform((out, out), Image.AFFINE, data=tuple(coef[:, 0]) + tuple(coef[:, 1]),
                                resample=Image.BILINEAR)  # fmt: skip
        feats.append(np.asarray(warped, np.float32).ravel())
    return np.stack(feats)


def _resized_gray(frames: np.ndarray, out: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).convert("L").resize((out, out), Image.BILINEAR), np.float32).ravel()
                     for f in frames])  # fmt: skip


@pytest.mark.slow
def test_difficulty_aus_subtle_and_label_hungry_identity_easy():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    seed, identities, clips, frames, size, out = 5, 60, 1000, 4, 64, 32
    renderer = Renderer(seed, identities, frames, size)
    ref = Identity.make(seed, 0)
    canon = landmarks_canonical(ref, face_state(ref, au_vector()))[0][STABLE]
    template = ((canon - np.array([0.0, 0.22])) / 1.5 + 0.5) * out  # crop: u in +-0.75, v in -0.53..0.97
    aligned, raw, labels, person, clip_of = [], [], [], [], []
    for c in range(clips):
        img, au, lm, meta = renderer.frames_and_labels(c)
        aligned.append(_aligned_gray(img, lm, template, out))
        raw.append(_resized_gray(img, 24))
        labels.append(occurrence(au))
        person += [meta["person"]] * frames
        clip_of += [c] * frames
    aligned, raw, labels = np.concatenate(aligned), np.concatenate(raw), np.concatenate(labels)
    person, clip_of = np.array(person), np.array(clip_of)

    held = heldout_people(seed, identities, 0.2)
    test = np.isin(person, sorted(held))
    train = ~test
    rate = labels[train].mean(0)
    aus = [n for n, i in AU_INDEX.items() if 0.05 <= rate[i] <= 0.6]
    draws = [np.random.default_rng([seed, 2, k]).random(train.sum()) < 0.02 for k in range(3)]  # 2% subsets

    def probe(feats):
        x = StandardScaler().fit(feats[train]).transform(feats)
        xtr, xte = x[train], x[test]
        f1_all, f1_few, auc_all, f1_pos = [], [], [], []
        for name in aus:
            y = labels[:, AU_INDEX[name]]
            ytr, yte = y[train], y[test]
            model = LogisticRegression(class_weight="balanced", C=0.01, max_iter=1000).fit(xtr, ytr)
            f1_all.append(f1_score(yte, model.predict(xte)))
            auc_all.append(roc_auc_score(yte, model.decision_function(xte)))
            scores = []
            for few in draws:
                yfew = ytr[few]
                if yfew.min() == yfew.max():  # no positive (or no negative) among the few: a constant guess
                    scores.append(f1_score(yte, np.full(len(yte), yfew[0])))
                else:
                    small = LogisticRegression(class_weight="balanced", C=0.01, max_iter=1000).fit(xtr[few], yfew)
                    scores.append(f1_score(yte, small.predict(xte)))
            f1_few.append(np.mean(scores))  # averaged over the 2% draws
            f1_pos.append(2 * yte.mean() / (1 + yte.mean()))  # F1 of always answering "present"
        return np.array(f1_all), np.array(f1_few), np.array(auc_all), np.array(f1_pos)

    with threadpool_limits(1):  # BLAS threads fight on two cores; one is faster here
        f1_all, f1_few, auc_all, f1_pos = probe(aligned)
        raw_all, raw_few, raw_auc, _ = probe(raw)

        # identity among the training persons from the same aligned pixels; test clips unseen
        keep = train
        x = StandardScaler().fit_transform(aligned[keep])
        in_train = np.random.default_rng([seed, 3]).random(clips)[clip_of[keep]] < 0.7
        ident = LogisticRegression(C=0.1, max_iter=1000).fit(x[in_train], person[keep][in_train])
        id_acc = float((ident.predict(x[~in_train]) == person[keep][~in_train]).mean())
        chance = 1 / len(set(person[keep]))

    print(f"\n{clips} clips x {frames} frames at {size} px, {identities} persons ({len(held)} held out), "
          f"{train.sum()} train / {test.sum()} test frames; 2% = {[int(d.sum()) for d in draws]} frames")  # fmt: skip
    print("AU     rate   F1@2%  F1@all  AUC@all  F1(always present)")
    for k, name in enumerate(aus):
        print(f"{name:5s} {rate[AU_INDEX[name]]:6.3f} {f1_few[k]:6.3f} {f1_all[k]:7.3f} {auc_all[k]:8.3f} {f1_pos[k]:8.3f}")
    print(f"mean  aligned {out}x{out}: F1@2% {f1_few.mean():.3f}  F1@all {f1_all.mean():.3f}  "
          f"AUC@all {auc_all.mean():.3f}  F1(always present) {f1_pos.mean():.3f}")  # fmt: skip
    print(f"mean  unaligned 24x24: F1@2% {raw_few.mean():.3f}  F1@all {raw_all.mean():.3f}  AUC@all {raw_auc.mean():.3f}")
    print(f"identity (aligned pixels, unseen clips): accuracy {id_acc:.3f}, chance {chance:.3f} "
          f"({id_acc / chance:.0f}x chance)")  # fmt: skip

    assert auc_all.mean() > 0.58, "with all labels the probe should learn something about AUs"
    assert f1_all.mean() < 0.85, "AUs should be subtle, far from solved by a linear probe on pixels"
    assert f1_few.mean() <= f1_all.mean() - 0.05, "2% of the labels should be clearly worse than all"
    assert id_acc > 10 * chance, "identity should be easy from the same pixels"


def test_rendering_in_several_processes_writes_the_same_bytes(tmp_path):
    """`workers` processes render a set (as cached_synthetic does with every core) into shards
    byte-identical to one process's: each clip draws from its own seeded generator."""
    import hashlib

    from shards import synthetic

    settings = dict(clips=100, frames=3, size=32, identities=10, shard_samples=40, heldout=0.0)
    one = synthetic.write_synthetic(tmp_path / "one", **settings)
    two = synthetic.write_synthetic(tmp_path / "two", workers=2, **settings)
    assert [s.sha256 for s in one.shards] == [s.sha256 for s in two.shards] and len(one.shards) == 3
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "two").glob("*.tar"))]
    assert digest == [s.sha256 for s in one.shards]
