"""A parametric 2D face: identities, FACS action units as local deformations and shading, iBUG-68
landmarks, head pose, lighting, rendered a whole clip at a time with numpy.

The face lives in canonical coordinates (u to the image's right, v down; the face spans about
u in [-0.7, 0.7], v in [-1, 1]) and is symmetric there. Each frame maps image pixels back to
canonical coordinates through its pose (a face on an ellipsoid turned by yaw and pitch, then
roll, scale and shift), so every feature is drawn as a function of (u, v) for all T frames at
once. Landmarks are the same feature curves sampled at fixed points and mapped forwards.

AUs are given as intensities 0..5; effects scale with intensity / 5 and are small: a full brow
raise moves the brows about 3 px in a 112 px crop, while identity (shape, skin, hair, glasses)
and nuisance (pose, light, background, blur, noise) change the picture far more.

| AU | name | rendered effect |
| --- | --- | --- |
| 1 | inner brow raiser | inner halves of the brows rise; horizontal lines in the central forehead |
| 2 | outer brow raiser | outer halves of the brows rise; horizontal lines in the lateral forehead |
| 4 | brow lowerer | brows lower and draw together (inner ends toward the midline); vertical lines between them |
| 5 | upper lid raiser | upper lids rise: the eyes open wider, more sclera |
| 6 | cheek raiser | lower lids and cheeks rise (cheeks brighten), skin bunches under the eyes, crow's feet at the outer corners, nasolabial fold deepens |
| 7 | lid tightener | lower lids rise and straighten, narrowing the eyes; slight bunching under them |
| 9 | nose wrinkler | horizontal wrinkles across the nose bridge, nose wings rise, inner brows lower a little, fold deepens |
| 10 | upper lip raiser | the upper lip's centre rises, nose wings rise a little, nasolabial fold deepens, upper teeth show when lips part |
| 12 | lip corner puller | lip corners move up and out, nasolabial fold deepens |
| 14 | dimpler | lip corners tighten inward; dimples darken beside them |
| 15 | lip corner depressor | lip corners move down |
| 17 | chin raiser | chin boss pushes up (chin contour rises), lower lip pushed up, chin skin dimples, the furrow under the lower lip deepens |
| 20 | lip stretcher | lip corners stretch sideways and a little down, lips thin |
| 23 | lip tightener | mouth narrows, lips thin |
| 24 | lip presser | lips press together: both lips thin, the mouth narrows a little |
| 25 | lips part | a gap opens between the lips (mouth interior, teeth) |
| 26 | jaw drop | jaw and chin move down, the lower face lengthens; the lower lip follows when lips part |
| 45 | blink | both lids close |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AU_NAMES = ["AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17",
            "AU20", "AU23", "AU24", "AU25", "AU26", "AU45"]  # fmt: skip
AU_INDEX = {name: i for i, name in enumerate(AU_NAMES)}
DEPTH = 0.6  # ellipsoid depth of the face, canonical units
SCALE = 0.36  # pixels per canonical unit, as a share of the image side


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


@dataclass
class Identity:
    """A person: geometry (as offsets of the template), appearance and AU habits."""

    geometry: dict
    skin: np.ndarray  # RGB 0..255
    lips: np.ndarray
    hair: np.ndarray
    brows: np.ndarray
    iris: np.ndarray
    glasses: np.ndarray | None  # frame colour, or None
    wrinkles: float  # depth of wrinkles and folds (age)
    hairline: float
    fringe: float
    side_hair: float
    au_rate: np.ndarray  # [A] multiplier of how often each AU occurs
    au_peak: np.ndarray  # [A] typical apex intensity 0..5
    texture: np.ndarray  # [R, R] skin texture around 0 in canonical space
    hair_texture: np.ndarray  # [R, R]

    @classmethod
    def make(cls, seed: int, person: int, texture_size: int = 64) -> "Identity":
        r = np.random.default_rng([seed, person, 0x1D])
        g = {
            "face_w": _u(r, 0.60, 0.74), "chin_y": _u(r, 0.86, 0.98), "chin_w": _u(r, 0.14, 0.26),
            "cheek_y": _u(r, 0.05, 0.22), "top": _u(r, -1.02, -0.92),
            "eye_x": _u(r, 0.25, 0.32), "eye_y": _u(r, -0.16, -0.06), "eye_w": _u(r, 0.095, 0.125),
            "eye_h": _u(r, 0.042, 0.062), "brow_gap": _u(r, 0.11, 0.17), "brow_thick": _u(r, 0.022, 0.045),
            "brow_arch": _u(r, 0.01, 0.05), "brow_out": _u(r, 0.04, 0.09),
            "nose_y": _u(r, 0.17, 0.27), "nose_w": _u(r, 0.08, 0.125),
            "mouth_y": _u(r, 0.43, 0.53), "mouth_w": _u(r, 0.17, 0.25),
            "lip_up": _u(r, 0.03, 0.055), "lip_lo": _u(r, 0.04, 0.07),
        }  # fmt: skip
        tone = r.uniform(0, 1)
        skin = np.array([236, 200, 172]) * (1 - tone) + np.array([96, 62, 44]) * tone
        skin = skin * r.uniform(0.94, 1.06, 3)
        hair_tone = r.uniform(0, 1)
        hair = np.array([25, 20, 18]) * (1 - hair_tone) + np.array([205, 170, 120]) * hair_tone
        if r.random() < 0.12:  # grey
            hair = np.full(3, r.uniform(140, 210))
        brows = hair * 0.7 + skin * 0.1
        iris = np.array([r.uniform(30, 120), r.uniform(30, 110), r.uniform(20, 90)])
        glasses = np.array([r.uniform(10, 60)] * 3) if r.random() < 0.25 else None
        # AU habits: how often (log-normal around 1) and how strongly this person moves.
        au_rate = np.exp(r.normal(0, 0.45, len(AU_NAMES)))
        au_peak = np.clip(r.normal(r.uniform(2.2, 3.8), 0.6, len(AU_NAMES)), 1.2, 5.0)
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731 - keeps the renderer in float32
        return cls(
            geometry=g, skin=f32(skin), lips=f32(skin * np.array([0.86, 0.56, 0.56])), hair=f32(hair),
            brows=f32(brows), iris=f32(iris),
            glasses=None if glasses is None else f32(glasses), wrinkles=_u(r, 0.35, 1.0), hairline=_u(r, -0.82, -0.55), fringe=_u(r, 0.0, 0.25),
            side_hair=_u(r, 0.02, 0.12), au_rate=au_rate, au_peak=au_peak,
            texture=_smooth_noise(r, texture_size, (2, 5, 12), (0.05, 0.035, 0.02)),
            hair_texture=_stripes(r, texture_size),
        )  # fmt: skip


def _smooth_noise(rng, size: int, cells: tuple, amps: tuple) -> np.ndarray:
    """Sum of upsampled random grids: blotches at several scales (freckles, pores, redness)."""
    out = np.zeros((size, size), np.float32)
    for n, amp in zip(cells, amps):
        grid = rng.normal(0, amp, (n + 1, n + 1))
        idx = np.linspace(0, n, size)
        i0 = np.minimum(idx.astype(int), n - 1)
        f = (idx - i0)[:, None]
        rows = grid[i0] * (1 - f) + grid[i0 + 1] * f  # [size, n+1]
        fc = (idx - i0)[None, :]
        out += (rows[:, i0] * (1 - fc) + rows[:, i0 + 1] * fc).astype(np.float32)
    return out


def _stripes(rng, size: int) -> np.ndarray:
    x = np.linspace(-1, 1, size)[None, :]
    y = np.linspace(-1, 1, size)[:, None]
    angle = rng.uniform(-0.6, 0.6)
    phase = (x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(25, 45)
    return (0.12 * np.sin(phase + 3 * np.sin(y * 4)) + rng.normal(0, 0.04, (size, size))).astype(np.float32)


def _col(x: np.ndarray) -> np.ndarray:
    """[T] -> [T, 1, 1] for broadcasting against [T, H, W]."""
    return np.asarray(x, np.float32).reshape(-1, 1, 1)


def face_state(ident: Identity, au: np.ndarray) -> dict:
    """Per-frame shape parameters [T] from AU intensities au [T, A] (0..5)."""
    g = ident.geometry
    a = {name: np.clip(au[:, i], 0, 5).astype(np.float32) / 5 for name, i in AU_INDEX.items()}
    jaw = 0.15 * a["AU26"]
    lips_apart = np.minimum(1, 3 * a["AU25"])
    gap = lips_apart * (0.03 * a["AU25"] + 0.85 * jaw)
    return {
        "a": a,
        "jaw": jaw,
        "chin_y": g["chin_y"] + jaw - 0.035 * a["AU17"],
        # eyes: upper lid rises with 5, lower lids rise with 6 and 7, both close in a blink
        "lid_up": g["eye_h"] * (1 + 0.65 * a["AU5"] - 0.15 * a["AU7"] - 0.1 * a["AU6"]) * (1 - 0.95 * a["AU45"]),
        "lid_lo": g["eye_h"] * 0.8 * np.maximum(0.1, 1 - 0.8 * a["AU7"] - 0.75 * a["AU6"]) * (1 - 0.9 * a["AU45"]),
        # brows: inner raise (1), outer raise (2), lower and draw together (4), a little with 9
        "brow_inner_dy": -0.085 * a["AU1"] + 0.05 * a["AU4"] + 0.012 * a["AU9"],
        "brow_outer_dy": -0.085 * a["AU2"] + 0.025 * a["AU4"],
        "brow_inner_dx": -0.045 * a["AU4"],
        "wing_dy": -0.035 * a["AU9"] - 0.015 * a["AU10"],
        # mouth corners: half-width and vertical offset from the mouth line
        "corner_w": g["mouth_w"] * (1 + 0.2 * a["AU12"] + 0.28 * a["AU20"] - 0.18 * a["AU14"]
                                    - 0.17 * a["AU23"] - 0.06 * a["AU24"]),  # fmt: skip
        "corner_dy": -0.075 * a["AU12"] + 0.06 * a["AU15"] + 0.02 * a["AU20"] + 0.35 * jaw,
        "mouth_y": g["mouth_y"] + 0.3 * jaw * (1 - lips_apart) - 0.02 * a["AU17"],
        "upper_c": -0.5 * gap - 0.045 * a["AU10"],  # closure line of the upper lip, at the centre
        "lower_c": 0.5 * gap - 0.025 * a["AU17"] * (1 - lips_apart),
        "gap": gap,
        "lip_up": g["lip_up"] * (1 - 0.45 * a["AU23"] - 0.55 * a["AU24"] + 0.25 * a["AU10"] - 0.3 * a["AU20"]),
        "lip_lo": g["lip_lo"] * (1 - 0.4 * a["AU23"] - 0.5 * a["AU24"] + 0.25 * a["AU17"] - 0.3 * a["AU20"]),
        "fold": 0.12 * ident.wrinkles + 0.55 * a["AU12"] + 0.45 * a["AU10"] + 0.3 * a["AU6"] + 0.25 * a["AU9"],
    }


# -- feature curves shared by the renderer and the landmarks ---------------------------------------


def face_half_width(g: dict, chin_y, v):
    """Half-width of the face outline at height v (forehead to chin)."""
    top, cheek = g["top"], g["cheek_y"]
    upper = g["face_w"] * np.sqrt(np.clip(1 - ((v - cheek) / (top - cheek)) ** 2, 0, 1))
    t = np.clip((v - cheek) / (chin_y - cheek), 0, 1)
    lower = g["chin_w"] + (g["face_w"] - g["chin_w"]) * np.sqrt(np.clip(1 - t**2, 0, 1))
    return np.where(v < cheek, upper, np.where(v <= chin_y, lower, 0.0))


def brow_center(g: dict, s: dict, t):
    """Brow centre line at t (0 inner end .. 1 outer end): (|u|, v)."""
    inner = g["eye_x"] - g["eye_w"] * 0.9 + s["brow_inner_dx"]
    outer = g["eye_x"] + g["eye_w"] + g["brow_out"]
    x = inner + t * (outer - inner)
    base = g["eye_y"] - g["brow_gap"] - g["brow_arch"] * np.sin(np.pi * np.clip(t * 0.85 + 0.1, 0, 1))
    y = base + s["brow_inner_dy"] * (1 - t) * np.sqrt(1 - t) + s["brow_outer_dy"] * t * np.sqrt(t)
    return x, y, inner, outer


def lid_curves(g: dict, s: dict, t):
    """Upper and lower lid at t = (|u| - eye_x) / eye_w in [-1, 1]."""
    bulge = np.sqrt(np.clip(1 - t**2, 0, 1))
    return g["eye_y"] - s["lid_up"] * bulge, g["eye_y"] + s["lid_lo"] * bulge


def lip_curves(s: dict, t):
    """At t = |u| / corner half-width: upper lip outer and inner edge, lower lip inner and outer edge."""
    tt = np.clip(t, 0, 1) ** 2
    base = s["mouth_y"] + s["corner_dy"] * tt
    taper = np.sqrt(np.clip(1 - tt, 0, 1))
    upper_in = base + s["upper_c"] * (1 - tt)
    lower_in = base + s["lower_c"] * (1 - tt)
    bow = 1 - 0.35 * np.exp(-((t / 0.22) ** 2))  # Cupid's bow: the upper lip dips at the centre
    return upper_in - s["lip_up"] * taper * bow, upper_in, lower_in, lower_in + s["lip_lo"] * taper


def landmarks_canonical(ident: Identity, s: dict) -> np.ndarray:
    """iBUG-68 landmarks [T, 68, 2] in canonical coordinates."""
    g = ident.geometry
    n = len(s["jaw"])
    pts = np.zeros((n, 68, 2), np.float32)

    def put(i, x, y):
        pts[:, i, 0], pts[:, i, 1] = x, y

    # jaw 0..16: from the left temple down round the chin to the right temple
    chin = s["chin_y"]
    for k in range(17):
        frac = abs(k - 8) / 8  # 1 at the temples, 0 at the chin
        v = chin + (g["eye_y"] - 0.02 - chin) * frac**1.35
        put(k, np.sign(k - 8) * face_half_width(g, chin, v) * (1 if k != 8 else 0), v)
    # brows 17..21 (left, outer to inner), 22..26 (right, inner to outer)
    for k in range(5):
        x, y, _, _ = brow_center(g, s, 1 - k / 4)
        put(17 + k, -x, y)
        x, y, _, _ = brow_center(g, s, k / 4)
        put(22 + k, x, y)
    # nose: bridge 27..30, base 31..35
    for k in range(4):
        put(27 + k, 0, g["eye_y"] + (g["nose_y"] - g["eye_y"]) * k / 3)
    for k, (fx, dy) in enumerate([(-0.8, 0.03), (-0.4, 0.045), (0, 0.05), (0.4, 0.045), (0.8, 0.03)]):
        put(31 + k, fx * g["nose_w"], g["nose_y"] + dy + s["wing_dy"] * (0.5 + 0.5 * abs(fx)))
    # eyes 36..41 (left: outer, 2 upper, inner, 2 lower), 42..47 (right: inner, 2 upper, outer, 2 lower)
    ex, ew = g["eye_x"], g["eye_w"]
    up, lo = lid_curves(g, s, np.float32(1 / 3))
    put(36, -(ex + ew), g["eye_y"]), put(37, -(ex + ew / 3), up), put(38, -(ex - ew / 3), up)
    put(39, -(ex - ew), g["eye_y"]), put(40, -(ex - ew / 3), lo), put(41, -(ex + ew / 3), lo)
    put(42, ex - ew, g["eye_y"]), put(43, ex - ew / 3, up), put(44, ex + ew / 3, up)
    put(45, ex + ew, g["eye_y"]), put(46, ex + ew / 3, lo), put(47, ex - ew / 3, lo)
    # outer lips 48..59, inner lips 60..67
    cw = s["corner_w"]
    corner_y = s["mouth_y"] + s["corner_dy"]
    put(48, -cw, corner_y), put(54, cw, corner_y)
    for k, t in zip((49, 50, 51, 52, 53), (-0.62, -0.25, 0.0, 0.25, 0.62)):
        put(k, t * cw, lip_curves(s, np.float32(abs(t)))[0])
    for k, t in zip((55, 56, 57, 58, 59), (0.62, 0.25, 0.0, -0.25, -0.62)):
        put(k, t * cw, lip_curves(s, np.float32(abs(t)))[3])
    for k, t in zip((60, 61, 62, 63, 64), (-0.88, -0.4, 0.0, 0.4, 0.88)):
        put(k, t * cw, lip_curves(s, np.float32(abs(t)))[1])
    for k, t in zip((65, 66, 67), (0.4, 0.0, -0.4)):
        put(k, t * cw, lip_curves(s, np.float32(abs(t)))[2])
    return pts


# -- pose ------------------------------------------------------------------------------------------


def _depth(u, v):
    return DEPTH * np.sqrt(np.clip(1 - u**2 - (v / 1.2) ** 2, 0, 1))


def project(points: np.ndarray, pose: np.ndarray, size: int) -> np.ndarray:
    """Canonical points [T, N, 2] to pixels; pose [T, 6] = yaw, pitch, roll (rad), scale, dx, dy."""
    u, v = points[..., 0], points[..., 1]
    yaw, pitch, roll, scale, dx, dy = (pose[:, i : i + 1] for i in range(6))
    z = _depth(u, v)
    x = u * np.cos(yaw) + z * np.sin(yaw)
    y = v * np.cos(pitch) - z * np.sin(pitch)
    xr = x * np.cos(roll) - y * np.sin(roll)
    yr = x * np.sin(roll) + y * np.cos(roll)
    px = SCALE * size * scale
    return np.stack([size / 2 + dx * size + xr * px, size / 2 + dy * size + yr * px], -1)


def unproject_grid(pose: np.ndarray, size: int, rows=None, cols=None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) [T, rows, cols] of pixel centres (the whole image by default): `project`
    inverted by fixed-point steps."""
    yaw, pitch, roll, scale, dx, dy = (_col(pose[:, i]) for i in range(6))
    rows, cols = rows or slice(0, size), cols or slice(0, size)
    px = SCALE * size * scale
    x = (np.arange(cols.start, cols.stop, dtype=np.float32)[None, None, :] + 0.5 - size / 2 - dx * size) / px
    y = (np.arange(rows.start, rows.stop, dtype=np.float32)[None, :, None] + 0.5 - size / 2 - dy * size) / px
    xr = x * np.cos(roll) + y * np.sin(roll)
    yr = -x * np.sin(roll) + y * np.cos(roll)
    u, v = xr / np.cos(yaw), yr / np.cos(pitch)
    for _ in range(2):
        z = _depth(u, v)
        u = (xr - z * np.sin(yaw)) / np.cos(yaw)
        v = (yr + z * np.sin(pitch)) / np.cos(pitch)
    return u.astype(np.float32), v.astype(np.float32)


# -- rendering -------------------------------------------------------------------------------------


def _soft(d, edge):
    """1 inside (d < 0), 0 outside, a linear ramp `edge` wide."""
    return np.clip(0.5 - d / edge, 0, 1)


def _sample(tex: np.ndarray, u, v):
    r = tex.shape[0]
    iu = np.clip(((u + 1.1) / 2.2 * r).astype(np.int32), 0, r - 1)
    iv = np.clip(((v + 1.1) / 2.2 * r).astype(np.int32), 0, r - 1)
    return tex[iv, iu]


def _over(img, alpha, rgb, factor=None):
    """Alpha-composite colour `rgb` [3] (times `factor` [T, S, S] where given) over img in place.

    Only the rows where `alpha` is non-zero are touched: most layers (eyes, mouth, brows) cover a
    band of the picture, and compositing is the renderer's main cost.
    """
    rows = np.flatnonzero(alpha.any(axis=(0, 2)))
    if rows.size == 0:
        return
    band = slice(rows[0], rows[-1] + 1)
    a = alpha[:, band, :, None]
    colour = np.asarray(rgb, np.float32) if factor is None else factor[:, band, :, None] * np.asarray(rgb, np.float32)
    img[:, band] += a * (colour - img[:, band])


def render(ident: Identity, s: dict, pose: np.ndarray, size: int, light: dict, background: np.ndarray) -> np.ndarray:
    """Frames [T, S, S, 3] float32 0..255 (before blur, noise and encoding)."""
    g = ident.geometry
    a = {k: _col(v) for k, v in s["a"].items()}
    c = {k: _col(v) for k, v in s.items() if k != "a"}
    # Draw only the window that the head and neck can reach in some frame; the rest is background.
    reach = g["face_w"] + ident.side_hair + 0.1
    corners = np.array([[[x, y] for x in (-reach, reach) for y in (g["top"] - 0.25, 1.3)]] * len(pose), np.float32)
    box = project(corners, pose, size)
    col0, row0 = np.floor(box.min(axis=(0, 1))).astype(int).clip(0, size)
    col1, row1 = np.ceil(box.max(axis=(0, 1))).astype(int).clip(0, size)
    rows, cols = slice(row0, size), slice(col0, col1)  # the neck runs to the bottom edge
    u, v = unproject_grid(pose, size, rows, cols)
    au_ = np.abs(u)  # the face is symmetric in canonical space
    edge = 1.2 / (SCALE * size * float(pose[:, 3].mean()))  # about one pixel

    # outline, neck, head
    half = face_half_width(g, c["chin_y"], v)
    face = _soft(au_ - half, edge) * (v > g["top"] - 0.2)
    neck = _soft(au_ - 0.33, edge) * (v > 0.5) * (1 - face)
    # shading from an ellipsoid's normals and the clip's light
    nx, ny = u / (g["face_w"] * 1.15), (v - 0.05) / 1.1
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0.04, 1))
    lx, ly, lz = (np.float32(x) for x in light["direction"])
    shade = light["ambient"] + light["diffuse"] * np.clip(nx * lx + ny * ly + nz * lz, 0, 1)

    # darkening of the skin: wrinkles, folds and creases, each where its muscles act
    wr = ident.wrinkles
    dark = np.zeros_like(u)
    _, _, inner, outer = brow_center(g, c, np.float32(0))
    _, brow_y, _, _ = brow_center(g, c, np.clip((au_ - inner) / (outer - inner), 0, 1))
    forehead = (v < g["eye_y"] - g["brow_gap"] - 0.08) * (v > ident.hairline)
    lines = np.clip(np.sin((v - g["eye_y"]) * (2 * np.pi / 0.085)), 0, 1)
    lines = lines * lines * lines  # sharp crests
    dark += forehead * lines * wr * (0.35 * a["AU1"] * np.exp(-((u / 0.2) ** 2))
                                     + 0.3 * a["AU2"] * np.exp(-(((au_ - 0.36) / 0.14) ** 2)))  # fmt: skip
    glabella = (v > g["eye_y"] - g["brow_gap"] - 0.06) * (v < g["eye_y"] - 0.03)
    dark += 0.35 * wr * a["AU4"] * glabella * np.exp(-(((au_ - 0.04) / 0.014) ** 2))
    t_eye = (au_ - g["eye_x"]) / g["eye_w"]
    upper_lid, lower_lid = lid_curves(g, c, t_eye)
    under = np.exp(-(((v - lower_lid - 0.04) / 0.012) ** 2)) * (np.abs(t_eye) < 1.1)
    dark += under * (0.08 * wr + 0.3 * a["AU6"] + 0.18 * a["AU7"])
    corner_x = g["eye_x"] + g["eye_w"]
    crow = (au_ > corner_x + 0.02) * (au_ < corner_x + 0.13) * (np.abs(v - g["eye_y"]) < 0.08)
    theta = np.arctan2(v - g["eye_y"], au_ - corner_x)
    dark += 0.3 * wr * a["AU6"] * crow * np.square(np.clip(np.sin(theta * 14), 0, 1))
    bridge = (au_ < 0.075) * (v > g["eye_y"]) * (v < g["eye_y"] + 0.16)
    dark += 0.55 * a["AU9"] * bridge * np.square(np.clip(np.sin((v - g["eye_y"]) * (2 * np.pi / 0.05)), 0, 1))
    # nasolabial fold: from the nose wing to just outside the lip corner
    top_y, top_x = g["nose_y"] + c["wing_dy"], g["nose_w"] * 1.15
    bottom_y, bottom_x = c["mouth_y"] + c["corner_dy"] + 0.05, c["corner_w"] + 0.06
    f = np.clip((v - top_y) / (bottom_y - top_y), 0, 1)
    fold_x = top_x + (bottom_x - top_x) * f + 0.04 * np.sin(np.pi * f)
    dark += c["fold"] * 0.35 * np.exp(-(((au_ - fold_x) / 0.016) ** 2)) * (v > top_y) * (v < bottom_y)
    # chin: dimpling (17) and the furrow under the lower lip; dimples beside the corners (14)
    t_mouth = au_ / c["corner_w"]
    upper_out, upper_in, lower_in, lower_out = lip_curves(c, t_mouth)
    chin_box = (au_ < 0.16) * (v > lower_out + 0.06) * (v < c["chin_y"] - 0.04)
    dark += 0.22 * a["AU17"] * chin_box * np.clip(np.sin(u * 75) * np.sin(v * 75 + 1.3), 0, 1)  # orange-peel skin
    dark += (0.1 + 0.35 * a["AU17"]) * np.exp(-(((v - lower_out - 0.045) / 0.015) ** 2)) * (au_ < 0.12)
    dimple = np.exp(-(((au_ - c["corner_w"] - 0.04) ** 2 + (v - c["mouth_y"] - c["corner_dy"]) ** 2) / 0.0012))
    dark += 0.5 * a["AU14"] * dimple
    # cheeks: raised by 6 (a highlight on the cheek ball)
    cheek = np.exp(-(((au_ - g["eye_x"]) ** 2 + (v - g["eye_y"] - 0.2 + 0.04 * a["AU6"]) ** 2) / 0.012))
    light_skin = shade * (1 + _sample(ident.texture, u, v)) * (1 - dark) * (1 + 0.12 * a["AU6"] * cheek)

    frames = np.broadcast_to(background, (len(u), size, size, 3)).astype(np.float32)
    img = frames[:, rows, cols]  # a view: layers composite straight into the frames
    _over(img, neck, ident.skin * 0.72 * light["colour"])
    _over(img, face, ident.skin * light["colour"], light_skin)

    # brows
    in_brow = (au_ > inner) * (au_ < outer)
    thick = g["brow_thick"] * (1 - 0.45 * np.clip((au_ - inner) / (outer - inner), 0, 1))
    _over(img, _soft(np.abs(v - brow_y) - thick, edge) * in_brow * face, ident.brows, shade)
    # eyes: sclera, iris, lash line
    opening = np.abs(t_eye) < 1
    eye = _soft(np.maximum(upper_lid - v, v - lower_lid), edge) * opening
    _over(img, eye, np.array([232, 226, 220], np.float32) * light["colour"])
    iris = _soft(np.sqrt((au_ - g["eye_x"]) ** 2 + (v - g["eye_y"]) ** 2) - 0.042, edge) * eye
    _over(img, iris, ident.iris)
    lash = _soft(np.abs(v - upper_lid) - 0.008, edge) * opening
    _over(img, lash, np.array([30, 25, 25], np.float32))
    # nostrils
    nostril = ((au_ - g["nose_w"] * 0.5) / 0.032) ** 2 + ((v - g["nose_y"] - 0.035 - c["wing_dy"]) / 0.014) ** 2
    _over(img, _soft(nostril - 1, 0.5) * 0.8, ident.skin * 0.35)
    # mouth: interior (dark, upper teeth), then lips
    in_mouth = t_mouth < 1
    interior = _soft(np.maximum(upper_in - v, v - lower_in), edge) * in_mouth
    _over(img, interior, np.array([60, 22, 25], np.float32))
    teeth = interior * (v < upper_in + 0.035) * (au_ < c["corner_w"] * 0.75)
    _over(img, teeth * 0.9, np.array([228, 222, 205], np.float32) * light["colour"])
    lips = np.maximum(_soft(np.maximum(upper_out - v, v - upper_in), edge),
                      _soft(np.maximum(lower_in - v, v - lower_out), edge)) * in_mouth  # fmt: skip
    _over(img, lips, ident.lips * light["colour"], shade)
    # hair: above the hairline with a fringe, and at the temples
    hairline = ident.hairline + ident.fringe * np.exp(-((u / 0.35) ** 2)) * 0.5 + 0.12 * (u / g["face_w"]) ** 2
    # the skull: an ellipse a little larger than the face's upper half, with the hair's volume
    cap = np.sqrt((u / (g["face_w"] + ident.side_hair)) ** 2 + ((v - g["cheek_y"]) / (g["cheek_y"] - g["top"] + 0.08)) ** 2)
    head = _soft(cap - 1, edge / 0.7) * (v < g["cheek_y"])
    hair = head * np.maximum(_soft(v - hairline, edge), (au_ > half - 0.01) * (v < g["eye_y"]))
    _over(img, hair, ident.hair, shade * (1 + _sample(ident.hair_texture, u, v)))
    # glasses: a rim round each eye and a bridge
    if ident.glasses is not None:
        rim = ((au_ - g["eye_x"]) / (g["eye_w"] + 0.075)) ** 2 + ((v - g["eye_y"] - 0.01) / (g["eye_h"] + 0.07)) ** 2
        frame = _soft(np.abs(np.sqrt(rim) - 1) - 0.06, 0.05)
        frame = np.maximum(frame, (au_ < g["eye_x"] - g["eye_w"] - 0.07) * _soft(np.abs(v - g["eye_y"] + 0.03) - 0.012, edge))
        _over(img, frame * face, ident.glasses)
    return frames
