"""Offline face generator of the `default` profile: the stand-in for StyleGAN2-ADA.

A latent z ~ N(0, I) of LATENT_DIM floats is decoded into face parameters (`identity`) and
drawn with anti-aliased signed-distance shapes on a pixel grid (`render_face`, pure numpy,
~2-3 ms for 64x64). Around it sit the pieces of the paper's face pipeline (CLEAR, App. B):

- `quality_score`: the discriminator stand-in; it scores from the pixels alone how clean and
  face-like a canonical render is (noise, sharpness, symmetry, eyes, skin colour);
- `sample_face_pool`: draw 32 latents (a quarter rendered as generator failures), keep the
  best 8 by quality, repeat up to N faces;
- `edit_latent` / `age_shift`: latent-direction edits, age +5 then glasses -10 (paper units);
- `face_attributes`: age / gender / ethnicity / glasses, exact from a latent, or measured
  from a canonical render by linear heads fitted on labelled renders (the paper scores its
  faces with pre-trained CNNs);
- `render_identity_images`: one identity under random pose, lighting and background.

Latent layout. Dims 0-27 carry identity; 28-31 are nuisance (canonical background, clothes,
expression), like the parts of a GAN latent that do not change who the person is:

     0 age (saturating, `age_years`)   1 gender (> 0 male)     2-4 ethnicity (largest |z|)
     5 skin shade       6 face width      7 face length          8 jaw width
     9 eye spacing     10 eye size       11 eye colour          12 brow thickness
    13 brow height     14 nose length    15 nose width          16 mouth width
    17 lip fullness    18 hair style     19 hair colour         20 hair volume
    21 hair parting    22 glasses (> 1)  23 glasses frame       24 beard (males, > 0)
    25 ear size        26 mole (> 0.5)   27 chin taper
    28 background hue  29 background brightness  30 clothes colour  31 expression

Categorical traits read their dim through the normal CDF (a uniform number), so every
category has a fixed share of the N(0, I) population; ethnicity is the signed axis of the
largest of dims 2-4, six equally likely groups.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

LATENT_DIM = 32
IDENTITY_DIMS = np.arange(0, 28)
NUISANCE_DIMS = np.arange(28, 32)
AGE, GENDER, GLASSES = 0, 1, 22

# Names as the common face-attribute CNNs (e.g. DeepFace) report them.
ETHNICITIES = ("asian", "indian", "black", "white", "middle eastern", "latino hispanic")
DEFECTS = ("blur", "noise", "occlusion", "color_shift", "melted", "missing_eyes")
DEFECT_RATE = 0.25  # share of generator draws that fail


def _axis(i):
    e = np.zeros(LATENT_DIM)
    e[i] = 1.0
    return e


# The age direction is entangled with glasses, as the paper found for the real GAN ("this
# edit often adds glasses"); that is why `age_shift` removes glasses afterwards.
AGE_DIRECTION = (_axis(AGE) + 0.35 * _axis(GLASSES)) / math.hypot(1.0, 0.35)
GLASSES_DIRECTION = _axis(GLASSES)
GENDER_DIRECTION = _axis(GENDER)

# The paper edits with strength 5 (age) and -10 (glasses) in its editor's units. One paper
# unit moves our latent by 0.3 along the unit direction: age +5 -> 1.5 (1.42 on the age dim),
# which takes a median 36-year-old face to about 58 (see `age_years`); glasses -10 -> -3 on
# dim 22, which puts every face far below the glasses threshold (dim 22 > 1).
PAPER_STRENGTH_SCALE = 0.3


def age_years(z_age):
    """Age in years from the age latent: saturating, 18 (z -> -inf) .. 90 (z -> +inf)."""
    return 18.0 + 72.0 / (1.0 + np.exp(-(0.9 * np.asarray(z_age) - 1.0)))


# ----------------------------------------------------------------------------- identity

Look = namedtuple("Look", "skin hair eyes eye_height")
_LOOKS = {  # per ethnicity: mean skin rgb, hair and eye colour palettes, eye opening
    "asian": Look(
        (0.91, 0.76, 0.58),
        [(0.07, 0.06, 0.06), (0.16, 0.11, 0.08), (0.36, 0.2, 0.1)],
        [(0.22, 0.13, 0.07)],
        0.72,
    ),
    "indian": Look(
        (0.62, 0.42, 0.28),
        [(0.06, 0.05, 0.05), (0.16, 0.1, 0.07), (0.3, 0.16, 0.09)],
        [(0.2, 0.12, 0.06)],
        1.0,
    ),
    "black": Look(
        (0.36, 0.23, 0.16),
        [(0.05, 0.04, 0.04), (0.14, 0.09, 0.06), (0.42, 0.25, 0.12)],
        [(0.15, 0.09, 0.05)],
        1.0,
    ),
    "white": Look(
        (0.95, 0.8, 0.72),
        [(0.86, 0.72, 0.42), (0.55, 0.37, 0.2), (0.3, 0.19, 0.11), (0.66, 0.3, 0.14)],
        [(0.25, 0.45, 0.75), (0.3, 0.52, 0.32), (0.4, 0.25, 0.12)],
        1.0,
    ),
    "middle eastern": Look(
        (0.8, 0.62, 0.47),
        [(0.1, 0.07, 0.05), (0.22, 0.14, 0.09), (0.4, 0.26, 0.14)],
        [(0.3, 0.18, 0.08), (0.35, 0.35, 0.2)],
        0.95,
    ),
    "latino hispanic": Look(
        (0.76, 0.55, 0.38),
        [(0.08, 0.06, 0.05), (0.2, 0.12, 0.08), (0.45, 0.28, 0.14)],
        [(0.3, 0.17, 0.07)],
        0.95,
    ),
}
_MALE_HAIR = (("short", 0.3), ("crop", 0.2), ("medium", 0.12), ("curly", 0.16),
              ("receding", 0.14), ("bald", 0.08))  # fmt: skip
_FEMALE_HAIR = (("long", 0.4), ("medium", 0.24), ("bun", 0.14), ("curly", 0.14), ("short", 0.08))
_BEARDS = ("stubble", "goatee", "full", "moustache")
_FRAMES = ((0.06, 0.06, 0.06), (0.35, 0.2, 0.1), (0.75, 0.6, 0.25), (0.15, 0.2, 0.45))


def _choose(options, u):
    """The option a uniform number u in [0, 1) falls on (equal shares)."""
    return options[min(int(u * len(options)), len(options) - 1)]


def _pick(table, u):
    """The item of [(item, share), ...] a uniform number u in [0, 1) falls on."""
    edges = np.cumsum([share for _, share in table])
    return table[min(int(np.searchsorted(edges / edges[-1], u, side="right")), len(table) - 1)][0]


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class Face:
    """Face parameters decoded from a latent (head units: x right, y down, face ~[-0.4, 0.4])."""

    age: float
    male: bool
    masc: float  # -1 (feminine) .. 1 (masculine): jaw, brows, lips, face width
    ethnicity: str
    skin: tuple
    face_w: float
    face_h: float
    jaw: float  # width at the chin relative to the cheeks
    chin_p: float  # how late the jaw narrows
    eye_dx: float
    eye_rx: float
    eye_ry: float
    eye_color: tuple
    brow_w: float
    brow_dy: float
    nose_len: float
    nose_w: float
    mouth_w: float
    lip_t: float
    lip_color: tuple
    hair_style: str
    hair_color: tuple
    hair_volume: float
    hair_part: float
    glasses: float  # frame opacity: 0 (none) .. 1
    frame_color: tuple
    beard: str
    ear_ry: float
    mole: tuple | None
    background: tuple
    clothes: tuple
    smile: float


def identity(z) -> Face:
    """Decode a latent into face parameters (deterministic)."""
    z = np.asarray(z, dtype=np.float64)
    t = np.tanh(z)  # bounded views of the dims, for continuous traits
    u = ndtr(z)  # uniform views of the dims, for categorical traits
    age = float(age_years(z[AGE]))
    male = bool(z[GENDER] > 0)
    masc = float(np.tanh(2.5 * z[GENDER]))
    axis = int(np.argmax(np.abs(z[2:5])))
    ethnicity = ETHNICITIES[2 * axis + int(z[2 + axis] < 0)]
    look = _LOOKS[ethnicity]
    # skin: its own shade, a little paler and greyer with age
    skin = np.clip(np.array(look.skin) * (1 + 0.06 * t[5] - 0.04 * _smoothstep(age, 40, 85)), 0, 1)
    skin = skin + 0.15 * _smoothstep(age, 50, 90) * (skin.mean() - skin)
    lip = skin * (0.86, 0.62, 0.62)
    if not male:  # red-tinted lips
        lip = 0.55 * lip + 0.45 * np.array([0.72, 0.22, 0.28])
    beard = _choose(_BEARDS, 2 * u[24] - 1) if male and u[24] > 0.5 else "none"
    mole = (0.18 * math.copysign(0.6 + 0.4 * u[25], z[27]), 0.08 + 0.12 * u[21])
    return Face(
        age=age,
        male=male,
        masc=masc,
        ethnicity=ethnicity,
        skin=tuple(skin.tolist()),
        face_w=0.39 * (1 + 0.1 * t[6]) + 0.02 * masc,
        face_h=0.5 * (1 + 0.08 * t[7]),
        jaw=0.72 + 0.1 * t[8] + 0.06 * masc,
        chin_p=1.6 + 0.5 * t[27],
        eye_dx=0.165 + 0.025 * t[9],
        eye_rx=0.085 * (1 + 0.2 * t[10]),
        eye_ry=0.05 * (1 + 0.2 * t[10]) * look.eye_height,
        eye_color=_choose(look.eyes, u[11]),
        brow_w=0.022 + 0.009 * t[12] + 0.006 * masc,
        brow_dy=0.1 + 0.025 * t[13],
        nose_len=0.21 + 0.045 * t[14],
        nose_w=0.07 + 0.022 * t[15],
        mouth_w=0.14 + 0.035 * t[16] - 0.01 * masc,
        lip_t=0.024 + 0.01 * t[17] - 0.004 * masc,
        lip_color=tuple(lip.tolist()),
        hair_style=_pick(_MALE_HAIR if male else _FEMALE_HAIR, u[18]),
        hair_color=_choose(look.hair, u[19]),
        hair_volume=0.06 + 0.035 * t[20],
        hair_part=float(t[21]),
        glasses=float(np.clip((z[GLASSES] - 0.85) / 0.3, 0, 1)),
        frame_color=_choose(_FRAMES, u[23]),
        beard=beard,
        ear_ry=0.1 * (1 + 0.15 * t[25]),
        mole=mole if z[26] > 0.5 else None,
        background=_hsv_to_rgb(u[28], 0.35, 0.45 + 0.4 * u[29]),
        clothes=_hsv_to_rgb(u[30], 0.55, 0.55),
        smile=float(0.3 * t[31]),
    )


def _hsv_to_rgb(h, s, v):
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0
    return tuple(float(c) for c in v - v * s * np.clip(np.minimum(k, 4.0 - k), 0, 1))


# ---------------------------------------------------------------------- shape primitives

# A shape is a signed-distance function of head coordinates plus a bounding circle
# (cx, cy, r): the canvas evaluates it only on the pixels of that circle's box, which keeps a
# render fast although it paints some 40 shapes.
Shape = namedtuple("Shape", "sd bound")


def _sd_ellipse(x, y, cx, cy, rx, ry):
    """Approximate signed distance to an ellipse (Quilez's k0 * (k0 - 1) / k1)."""
    px, py = (x - cx) / rx, (y - cy) / ry
    k0 = np.sqrt(px * px + py * py)
    k1 = np.sqrt((px / rx) ** 2 + (py / ry) ** 2) + 1e-9
    return k0 * (k0 - 1.0) / k1


def ellipse(cx, cy, rx, ry):
    return Shape(lambda x, y: _sd_ellipse(x, y, cx, cy, rx, ry), (cx, cy, max(rx, ry)))


def capsule(ax, ay, bx, by, r):
    """The segment a-b thickened to radius r."""
    dx, dy = bx - ax, by - ay

    def sd(x, y):
        h = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
        return np.hypot(x - ax - h * dx, y - ay - h * dy) - r

    return Shape(sd, ((ax + bx) / 2, (ay + by) / 2, math.hypot(dx, dy) / 2 + r))


def arc(cx, cy, half_w, bend, r):
    """A thick parabola through (cx +- half_w, cy), bulging up by `bend` at cx (down if < 0)."""

    def sd(x, y):
        dx = (x - cx) / half_w
        curve = cy - bend * (1 - dx * dx)
        return np.maximum(np.abs(y - curve) - r, (np.abs(dx) - 1) * half_w)

    return Shape(sd, (cx, cy - bend / 2, half_w + abs(bend) + r))


def intersect(a: Shape, b: Shape):
    """Where both shapes are (bounded by the first)."""
    return Shape(lambda x, y: np.maximum(a.sd(x, y), b.sd(x, y)), a.bound)


def ring(a: Shape, half_width):
    """The outline of a shape."""
    return Shape(lambda x, y: np.abs(a.sd(x, y)) - half_width, a.bound)


def halfplane(fn, bound):
    """The region fn(x, y) <= 0 (fn: a signed distance-like function)."""
    return Shape(fn, bound)


class _Canvas:
    """A float rgb image painted back to front with anti-aliased shapes in head coordinates.

    Head coordinates are image coordinates undone by the pose: shift, scale and in-plane tilt
    (and, for the "melted" failure, a smooth warp). `shade` is the per-pixel head lighting.
    """

    HEAD_SCALE = 1.12  # canonical head size in the frame

    def __init__(self, size, pose, melt_rng=None):
        self.size = size
        self.img = np.zeros((size, size, 3))
        self.shade = np.ones((size, size, 1))
        self.scale = pose["scale"] * self.HEAD_SCALE
        self.shift = pose["shift"]
        self.cos, self.sin = math.cos(pose["tilt"]), math.sin(pose["tilt"])
        self.px = 2.0 / size / self.scale  # one pixel in head units: the anti-aliasing width
        x, y = _grid(size)
        x, y = (x - self.shift[0]) / self.scale, (y - self.shift[1]) / self.scale
        self.x, self.y = self.cos * x + self.sin * y, -self.sin * x + self.cos * y
        self.margin = 0.0
        if melt_rng is not None:  # a GAN failure: the head smeared by a strong smooth warp
            amp, freq, ph = (melt_rng.uniform(a, b, 2) for a, b in ((0.1, 0.18), (3, 6), (0, 6)))
            self.x = self.x + amp[0] * np.sin(freq[0] * self.y + ph[0])
            self.y = self.y + amp[1] * np.sin(freq[1] * self.x + ph[1])
            self.margin = 0.2

    def box(self, bound):
        """The pixel slice that covers a head-space bounding circle (None if off-canvas)."""
        cx, cy, r = bound
        px = self.shift[0] + self.scale * (self.cos * cx - self.sin * cy)
        py = self.shift[1] + self.scale * (self.sin * cx + self.cos * cy)
        col, row = (px + 1) / 2 * self.size - 0.5, (py + 1) / 2 * self.size - 0.5
        half = (r + self.margin) * self.scale * self.size / 2 + 1.5
        c0, c1 = max(int(col - half), 0), min(int(col + half) + 2, self.size)
        r0, r1 = max(int(row - half), 0), min(int(row + half) + 2, self.size)
        return np.s_[r0:r1, c0:c1] if c0 < c1 and r0 < r1 else None

    def paint(self, shape: Shape, color, opacity=1.0):
        """Blend a lit shape in (color: rgb or a per-pixel array). Returns its coverage."""
        cover = np.zeros((self.size, self.size))
        box = self.box(shape.bound)
        if box is None:
            return cover
        a = np.clip(0.5 - shape.sd(self.x[box], self.y[box]) / self.px, 0.0, 1.0)
        a = a * (opacity[box] if np.ndim(opacity) == 2 else opacity)
        color = np.asarray(color)
        color = (color[box] if color.ndim == 3 else color) * self.shade[box]
        cover[box] = a
        self.img[box] = self.img[box] * (1 - a[..., None]) + a[..., None] * color
        return cover


@functools.lru_cache(maxsize=8)
def _grid(size):
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c)  # x (columns), y (rows), pixel centres in [-1, 1]


# ------------------------------------------------------------------------------ nuisance

# Frontal, centred, lit from above the camera. None: taken from the latent's nuisance dims.
CANONICAL_POSE = dict(
    yaw=0.0, pitch=0.0, tilt=0.0, scale=1.0, shift=(0.0, 0.0),
    light=(0.0, -0.6, 1.0), light_gain=1.0, ambient=0.6, tint=(1.0, 1.0, 1.0),
    smile=None, background=None, bg_texture="gradient", bg_phase=0.0, clothes=None,
)  # fmt: skip


def sample_nuisance(rng) -> dict:
    """A random pose, lighting, expression, background and clothes (keys of CANONICAL_POSE)."""
    angle, elev = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 1.0)
    return dict(
        yaw=rng.uniform(-0.6, 0.6),
        pitch=rng.uniform(-0.4, 0.4),
        tilt=rng.uniform(-0.2, 0.2),
        scale=rng.uniform(0.9, 1.1),
        shift=(rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06)),
        light=(math.cos(angle) * (1 - elev), math.sin(angle) * (1 - elev), elev),
        light_gain=rng.uniform(0.85, 1.1),
        ambient=rng.uniform(0.5, 0.75),
        tint=tuple(1 + rng.uniform(-0.04, 0.04, 3)),
        smile=rng.uniform(-0.4, 0.9),
        background=_hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.7), rng.uniform(0.25, 0.95)),
        bg_texture=str(rng.choice(["flat", "gradient", "stripes", "blobs", "checker"])),
        bg_phase=rng.uniform(0, 2 * np.pi),
        clothes=_hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.8), rng.uniform(0.2, 0.9)),
    )


def _background(size, color, texture, phase):
    x, y = _grid(size)
    if texture == "flat":
        f = np.ones_like(x)
    elif texture == "gradient":
        f = 1.0 + 0.18 * (y * math.cos(phase) + x * math.sin(phase))
    elif texture == "stripes":
        f = 1.0 + 0.12 * np.sin(9 * (x * math.cos(phase) + y * math.sin(phase)))
    elif texture == "checker":
        f = 1.0 + 0.08 * np.sign(np.sin(6 * x + phase) * np.sin(6 * y + phase))
    else:  # soft blobs
        f = 1.0 + 0.2 * np.sin(2.5 * x + phase) * np.cos(3.1 * y - 0.7 * phase)
    return np.clip(f[..., None] * np.asarray(color), 0, 1)


# ------------------------------------------------------------------------------- render


def render_face(z, size=64, pose=None, rng=None, defect=None) -> np.ndarray:
    """Render latent z as a (size, size, 3) uint8 image.

    pose: None for the canonical frontal pose, else a dict as from `sample_nuisance` (missing
    keys are canonical). defect: None or one of DEFECTS, a simulated generator failure whose
    random layout comes from rng (default: seeded from z).
    """
    face = identity(z)
    p = dict(CANONICAL_POSE, **(pose or {}))
    if defect is not None and rng is None:
        rng = np.random.default_rng(list(np.asarray(z, np.float64).view(np.uint32)))
    cv = _Canvas(size, p, melt_rng=rng if defect == "melted" else None)
    background = p["background"] or face.background
    cv.img[:] = _background(size, background, p["bg_texture"], p["bg_phase"])
    _draw_head(cv, face, p, draw_eyes=defect != "missing_eyes")
    img = cv.img * np.asarray(p["tint"])
    if defect in ("blur", "noise", "occlusion", "color_shift"):
        img = _apply_defect(img, defect, rng)
    elif defect not in (None, "melted", "missing_eyes"):
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECTS}")
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _lighting(cv, p):
    """Ambient plus diffuse shading of a head-sized ellipsoid under the pose's light."""
    light = np.asarray(p["light"], dtype=np.float64)
    light = light / np.linalg.norm(light)
    nx, ny = cv.x / 0.55, (cv.y + 0.05) / 0.65
    nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0.05, 1))
    cosine = (nx * light[0] + ny * light[1] + nz * light[2]) / np.sqrt(nx**2 + ny**2 + nz**2)
    diffuse = np.clip(cosine, 0, 1)
    return (p["ambient"] + (1 - p["ambient"]) * diffuse)[..., None] * p["light_gain"] * 1.05


def _draw_head(cv, f: Face, p, draw_eyes=True):
    yaw, pitch = p["yaw"], p["pitch"]

    def at(fx, fy, depth):
        """Where a feature lands when the head turns: deeper features (nose) move most."""
        return fx * (1 - 0.15 * abs(yaw)) + 0.22 * yaw * depth, fy + 0.16 * pitch * depth

    cv.shade = _lighting(cv, p)
    hair = _hair_texture(cv.x, cv.y, f)
    skin = np.asarray(f.skin)
    cx, cy = at(0.0, 0.0, 0.3)  # the face outline turns a little
    cv.paint(ellipse(0.0, 1.05, 1.1, 0.55), np.asarray(p["clothes"] or f.clothes) * 0.95)
    _draw_back_hair(cv, f, cx, cy, hair)
    neck = capsule(cx * 0.5, 0.3, 0.0, 0.9, 0.15 + 0.02 * f.masc)
    collar = halfplane(lambda x, y: y - 0.6 - 0.9 * np.abs(x), neck.bound)  # a V-neck
    cv.paint(intersect(neck, collar), skin * 0.78)
    for side in (-1, 1):  # ears; the far one slides behind the face when the head turns
        cv.paint(ellipse(*at(side * (f.face_w + 0.005), -0.04, 0.0), 0.055, f.ear_ry), skin * 0.9)
    outline = _face_shape(f, cx, cy, yaw)
    face_cover = cv.paint(outline, skin)
    _draw_age_marks(cv, f, at, face_cover, skin)
    if f.mole is not None:
        cv.paint(ellipse(*at(*f.mole, 0.8), 0.02, 0.02), skin * 0.4, face_cover)
    _draw_beard(cv, f, at, outline, hair)
    if draw_eyes:
        _draw_eyes(cv, f, at)
    for side in (-1, 1):  # brows
        bx, by = at(side * f.eye_dx, -0.08 - f.brow_dy, 0.8)
        cv.paint(arc(bx, by, 0.09, 0.025, f.brow_w * 0.5), hair * 0.8)
    _draw_nose(cv, f, at, skin, p["light"])
    _draw_mouth(cv, f, at, f.smile if p["smile"] is None else p["smile"], yaw)
    _draw_front_hair(cv, f, cx, cy, hair)
    if f.glasses > 0:
        _draw_glasses(cv, f, at)


def _face_shape(f: Face, cx, cy, yaw):
    """An ellipse whose lower half narrows towards the jaw."""
    w = f.face_w * (1 - 0.08 * abs(yaw))

    def sd(x, y):
        width = 1 - (1 - f.jaw) * np.clip((y - cy) / f.face_h, 0, 1) ** f.chin_p
        return _sd_ellipse((x - cx) / width + cx, y, cx, cy, w, f.face_h) * np.minimum(width, 1)

    return Shape(sd, (cx, cy, max(w, f.face_h)))


def _hair_texture(x, y, f: Face):
    """Hair colour with strands (mirror-symmetric); it turns grey from about 30 on."""
    wave = np.sin(6 * y)
    strands = np.sin(30 * np.abs(x) + 6 * wave + 3 * f.hair_part)
    base = np.asarray(f.hair_color) * (1 + 0.16 * strands)[..., None]
    grey = 0.3 * _smoothstep(f.age, 28, 60) + 0.7 * _smoothstep(f.age, 45, 80)
    if grey == 0:
        return base
    grey_share = np.clip(grey * (1 + 0.25 * np.sin(17 * np.abs(x) + 4 * wave + 1.7)), 0, 1)
    grey_rgb = 0.8 * (1 + 0.08 * strands)[..., None]
    return base + (grey_rgb - base) * grey_share[..., None]


def _draw_back_hair(cv, f: Face, cx, cy, hair):
    """Hair behind the face: falling hair, curls around the head, or a bun on top."""
    v, top = f.hair_volume, cy - f.face_h
    if f.hair_style in ("long", "medium"):
        bottom = 0.7 if f.hair_style == "long" else 0.25
        cv.paint(capsule(cx, top + 0.35, cx, bottom, f.face_w + v + 0.03), hair)
    elif f.hair_style == "curly":
        cap = ellipse(cx, cy - 0.12, f.face_w + v + 0.09, f.face_h + 0.04 + v)

        def curls(x, y):
            return cap.sd(x, y) + 0.02 * np.cos(14 * np.arctan2(y - cy, x - cx))

        cv.paint(Shape(curls, cap.bound), hair)
    elif f.hair_style == "bun":
        cv.paint(ellipse(cx, top - 0.16, 0.15, 0.11), hair)


_HAIRLINE = {"receding": -0.38, "crop": -0.36, "long": -0.31, "medium": -0.31}


def _draw_front_hair(cv, f: Face, cx, cy, hair):
    """The hair over the top of the head, down to a hairline that dips at the temples."""
    v = f.hair_volume * (0.3 if f.hair_style == "crop" else 1.0)
    cap = ellipse(cx, cy - 0.07, f.face_w + 0.02 + 0.5 * v, f.face_h + 0.03 + v)
    if f.hair_style == "bald":

        def over_the_ears(x, y):
            return np.maximum(cy - 0.22 - y, 0.8 * f.face_w - np.abs(x - cx))

        cv.paint(intersect(cap, halfplane(over_the_ears, cap.bound)), hair, 0.85)
        return
    line_y = cy + _HAIRLINE.get(f.hair_style, -0.34)
    bare_crown = 0.12 if f.hair_style == "receding" else 0.0

    def below_hairline(x, y):
        rel = np.abs(x - cx) / f.face_w
        line = line_y + 0.06 * f.hair_part * (x - cx) + 0.3 * rel**2.5
        return y - (line - bare_crown * np.clip(1 - rel / 0.55, 0, 1))

    cv.paint(intersect(cap, halfplane(below_hairline, cap.bound)), hair)


def _draw_age_marks(cv, f: Face, at, face_cover, skin):
    """A youthful flush fades, nasolabial folds deepen, then eye bags and wrinkles come."""
    flush = 0.3 * (1 - _smoothstep(f.age, 18, 45))
    folds = 0.65 * np.clip((f.age - 18) / 50, 0, 1)
    bags = 0.7 * np.clip((f.age - 25) / 45, 0, 1)
    wrinkles = _smoothstep(f.age, 32, 80)
    dark = skin * 0.55
    for side in (-1, 1):
        cheek = ellipse(*at(side * 0.22, 0.07, 0.7), 0.08, 0.05)
        cv.paint(cheek, skin * (1.05, 0.8, 0.8), flush * face_cover)
        nx, ny = at(side * (f.nose_w + 0.03), -0.1 + f.nose_len, 0.85)
        mx, my = at(side * (f.mouth_w + 0.03), 0.06 + f.nose_len, 0.85)
        cv.paint(capsule(nx, ny, mx, my, 0.008), dark, folds * face_cover)
        bx, by = at(side * f.eye_dx, -0.05 + f.eye_ry, 0.7)
        cv.paint(arc(bx, by, f.eye_rx * 0.9, -0.015, 0.006), dark, bags * face_cover)
        ex, ey = at(side * (f.eye_dx + f.eye_rx + 0.03), -0.08, 0.6)
        for k in (-1, 0, 1) if wrinkles > 0 else ():  # crow's feet
            crow = capsule(ex, ey + 0.02 * k, ex + side * 0.05, ey + 0.035 * k, 0.005)
            cv.paint(crow, dark, 0.8 * wrinkles * face_cover)
    for k in range(3) if wrinkles > 0 else ():  # forehead lines
        line = arc(*at(0.0, -0.25 - 0.045 * k, 0.5), 0.18, 0.015, 0.006)
        cv.paint(line, dark, 0.9 * wrinkles * face_cover)


def _draw_beard(cv, f: Face, at, outline, hair):
    if f.beard == "none":
        return
    _, nose_y = at(0.0, -0.08 + f.nose_len, 0.8)
    mx, my = at(0.0, 0.05 + f.nose_len, 0.85)
    if f.beard in ("moustache", "goatee"):
        cv.paint(arc(mx, my - 0.045, f.mouth_w + 0.02, 0.02, 0.02), hair)
    if f.beard == "goatee":
        cv.paint(intersect(ellipse(mx, my + 0.1, f.mouth_w * 0.7, 0.12), outline), hair)
    if f.beard in ("stubble", "full"):
        below_nose = halfplane(lambda x, y: nose_y + 0.02 - y, outline.bound)
        cv.paint(intersect(outline, below_nose), hair, 0.35 if f.beard == "stubble" else 0.95)


def _draw_eyes(cv, f: Face, at):
    for side in (-1, 1):
        ex, ey = at(side * f.eye_dx, -0.08, 0.7)
        sclera = ellipse(ex, ey, f.eye_rx, f.eye_ry)
        cv.paint(sclera, (0.95, 0.95, 0.93))
        ix = ex + 0.012 * (ex - side * f.eye_dx)  # the gaze follows the head turn a bit
        cv.paint(intersect(ellipse(ix, ey, f.eye_ry * 0.95, f.eye_ry * 0.95), sclera), f.eye_color)
        pupil = intersect(ellipse(ix, ey, f.eye_ry * 0.55, f.eye_ry * 0.55), sclera)
        cv.paint(pupil, (0.03, 0.03, 0.03))
        lid = 0.012 if f.male else 0.018  # lashes make the feminine lid line thicker
        cv.paint(arc(ex, ey, f.eye_rx * 1.05, f.eye_ry, lid * 0.5), (0.1, 0.07, 0.06))


def _draw_nose(cv, f: Face, at, skin, light):
    tx, ty = at(0.0, -0.08 + f.nose_len, 1.0)
    rx, ry = at(0.0, -0.06, 0.9)
    side = 1.0 if light[0] <= 0 else -1.0  # the shadow falls away from the light
    ridge = capsule(rx + side * 0.03, ry, tx + side * f.nose_w * 0.8, ty - 0.03, 0.012)
    cv.paint(ridge, skin * 0.82)
    cv.paint(ellipse(tx, ty - 0.01, f.nose_w * 0.6, 0.035), skin * 1.06)
    for s in (-1, 1):  # nostrils
        cv.paint(ellipse(tx + s * f.nose_w * 0.5, ty + 0.008, 0.018, 0.011), skin * 0.45)


def _draw_mouth(cv, f: Face, at, smile, yaw):
    mx, my = at(0.0, 0.05 + f.nose_len, 0.85)
    w, t, lip = f.mouth_w * (1 - 0.25 * abs(yaw)), f.lip_t, np.asarray(f.lip_color)
    cv.paint(arc(mx, my - 0.006, w, -0.03 * smile, t * 0.55), lip * 0.9)  # upper lip
    cv.paint(arc(mx, my + t * 0.55, w * 0.9, -0.035 * smile, t * 0.65), lip)  # lower lip
    cv.paint(arc(mx, my + 0.004, w * 0.95, -0.03 * smile, 0.006), lip * 0.45)  # the line


def _draw_glasses(cv, f: Face, at):
    for side in (-1, 1):
        ex, ey = at(side * f.eye_dx, -0.07, 0.75)
        lens = ellipse(ex, ey, f.eye_rx + 0.045, f.eye_ry + 0.045)
        cv.paint(lens, (0.85, 0.9, 0.95), 0.08 * f.glasses)  # a faint reflection
        cv.paint(ring(lens, 0.011), f.frame_color, f.glasses)
        ox, oy = at(side * (f.eye_dx + f.eye_rx + 0.045), -0.08, 0.6)
        hx, hy = at(side * (f.face_w + 0.01), -0.06, 0.0)
        cv.paint(capsule(ox, oy, hx, hy, 0.01), f.frame_color, f.glasses)  # temple
    bridge = capsule(*at(-0.05, -0.09, 0.9), *at(0.05, -0.09, 0.9), 0.01)
    cv.paint(bridge, f.frame_color, f.glasses)


def _apply_defect(img, defect, rng):
    """Image-level generator failures (the geometric ones are drawn by `render_face`)."""
    size = img.shape[0]
    if defect == "blur":
        sigma = rng.uniform(1.2, 2.2) * size / 64
        return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))
    if defect == "noise":
        return img + rng.normal(0, rng.uniform(0.08, 0.16), img.shape)
    if defect == "occlusion":  # a big blob of a random colour over the face
        x, y = _grid(size)
        cx, cy = rng.uniform(-0.25, 0.25, 2)
        wobble = 1 + 0.15 * np.sin(5 * np.arctan2(y - cy, x - cx) + rng.uniform(0, 6))
        inside = rng.uniform(0.25, 0.4) * wobble - np.hypot(x - cx, y - cy)
        a = np.clip(inside * size / 3, 0, 1)[..., None]
        return img * (1 - a) + a * rng.uniform(0, 1, 3)
    # color_shift: hue turned far away from any skin colour, oversaturated
    return _rotate_hue(img, rng.uniform(1.2, 2 * np.pi - 1.2), saturation=rng.uniform(1.5, 2.5))


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(img, angle, saturation=1.0):
    yiq = img @ _YIQ.T
    c, s = math.cos(angle) * saturation, math.sin(angle) * saturation
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = c * i - s * q, s * i + c * q
    return yiq @ np.linalg.inv(_YIQ).T


# ------------------------------------------------------------------------------ quality

_LUMA = np.array([0.299, 0.587, 0.114])
_NOISE_KERNEL = np.array([[1.0, -2, 1], [-2, 4, -2], [1, -2, 1]])


def _region(img, rows, cols):
    """A box of the image given as fractions of its height and width."""
    n, m = img.shape[:2]
    return img[int(rows[0] * n) : int(rows[1] * n), int(cols[0] * m) : int(cols[1] * m)]


def quality_features(img) -> dict:
    """What a clean canonical (frontal, centred) render shows, measured from its pixels.

    Tuned on 64 px renders; larger sizes separate as well, at 32 px the eyes get too small.

    noise: noise sigma (Immerkaer's Laplacian estimator; the median ignores the edges);
    sharpness: 99th percentile of the luminance gradient per 1/64 of the width (blur flattens);
    asymmetry: mean |face box - its mirror image| (warps and blobs break the symmetry);
    eyes: in each half of the eye band, a bright unsaturated pixel (sclera) next to a dark one
      (pupil, lid); the weaker eye counts;
    skin: how far the cheeks' chromaticity lies outside the range of human skin tones.
    """
    im = np.asarray(img, dtype=np.float64) / 255.0
    size = im.shape[1]
    luma = im @ _LUMA
    noise = np.median(np.abs(ndimage.convolve(luma, _NOISE_KERNEL)[1:-1, 1:-1])) / (0.674 * 6)
    gy, gx = np.gradient(luma)
    box = _region(im, (0.3, 0.8), (0.25, 0.75))
    top, low = im.max(-1), im.min(-1)
    whiteness = luma * (1 - (top - low) / (top + 1e-6))
    window = max(3, round(3 * size / 64))
    sclera_pupil = np.minimum(
        ndimage.maximum_filter(whiteness, window), ndimage.maximum_filter(1 - luma, window)
    )
    eyes = min(_region(sclera_pupil, (0.36, 0.54), c).max() for c in ((0.28, 0.5), (0.5, 0.72)))
    cheeks = [_region(im, (0.53, 0.59), c).reshape(-1, 3) for c in ((0.32, 0.38), (0.62, 0.68))]
    return dict(
        noise=float(noise),
        sharpness=float(np.percentile(np.hypot(gx, gy), 99) * size / 64),
        asymmetry=float(np.abs(box - box[:, ::-1]).mean()),
        eyes=float(eyes),
        skin=max(_skin_distance(np.median(c, 0)) for c in cheeks),
    )


def _skin_distance(rgb):
    """Distance of a colour's chromaticity (r, g) from the box that holds human skin tones."""
    r, g, _ = rgb / (rgb.sum() + 1e-6)
    return float(math.hypot(max(0.36 - r, r - 0.53, 0), max(0.29 - g, g - 0.37, 0)))


def quality_score(img) -> float:
    """Discriminator stand-in: about 0 for a clean face, far below 0 for a defective one.

    Each of `quality_features` is compared with what clean canonical renders show, in units of
    a tolerance set from their spread, and the squared excesses are summed: one gross flaw
    (noise, blur, a warp, a blob, no eyes, green skin) outweighs the variation between faces.
    """
    f = quality_features(img)
    excess = (
        f["noise"] / 0.01,
        max(0.0, 0.25 - f["sharpness"]) / 0.05,
        f["asymmetry"] / 0.03,
        max(0.0, 0.85 - f["eyes"]) / 0.1,
        f["skin"] / 0.02,
    )
    return -float(sum(e * e for e in excess))


# --------------------------------------------------------------------------------- pool


def sample_face_pool(
    n, seed, batch=32, keep=8, size=64, defect_rate=DEFECT_RATE, return_info=False
):
    """Draw `batch` latents, render them canonically, keep the `keep` best by quality; repeat.

    A share `defect_rate` of the draws is rendered with a random defect, standing in for the
    GAN's failed samples (the defect belongs to the draw, not to z: re-rendering a kept latent
    gives its clean face). Deterministic in `seed`. Returns latents (n, LATENT_DIM) and scores
    (n,); with return_info also a dict: `defects` (the defect of each kept face or None),
    `images` (the kept renders), `drawn` and `drawn_defective` (counts over all draws).
    """
    rng = np.random.default_rng(seed)
    latents, scores, defects, images = [], [], [], []
    drawn = drawn_defective = 0
    while len(latents) < n:
        z = rng.standard_normal((batch, LATENT_DIM))
        kinds, rngs = _draw_defects(rng, batch, defect_rate)
        renders = [
            render_face(zi, size, rng=r, defect=k) for zi, k, r in zip(z, kinds, rngs, strict=True)
        ]
        quality = np.array([quality_score(im) for im in renders])
        for i in np.argsort(-quality, kind="stable")[:keep]:
            latents.append(z[i])
            scores.append(quality[i])
            defects.append(kinds[i])
            images.append(renders[i])
        drawn += batch
        drawn_defective += sum(k is not None for k in kinds)
    latents, scores = np.stack(latents[:n]), np.array(scores[:n])
    if not return_info:
        return latents, scores
    info = dict(
        defects=defects[:n], images=images[:n], drawn=drawn, drawn_defective=drawn_defective
    )
    return latents, scores, info


def _draw_defects(rng, count, rate):
    """Per draw: the defect (None if clean) and the random generator that lays it out."""
    hit = rng.random(count) < rate
    kind = rng.integers(len(DEFECTS), size=count)
    seeds = rng.integers(2**63, size=count)
    kinds = [DEFECTS[k] if h else None for h, k in zip(hit, kind, strict=True)]
    return kinds, [np.random.default_rng(s) for s in seeds]


# -------------------------------------------------------------------------------- edits


def edit_latent(z, direction, strength):
    """z moved along a unit direction by `strength` paper units (x PAPER_STRENGTH_SCALE)."""
    return np.asarray(z, dtype=np.float64) + strength * PAPER_STRENGTH_SCALE * np.asarray(direction)


def age_shift(
    latents,
    seed,
    age_strength=5.0,
    glasses_strength=-10.0,
    batch=32,
    keep=8,
    size=64,
    defect_rate=DEFECT_RATE,
    return_info=False,
):
    """Make faces older (age edit), then remove the glasses the age edit tends to add.

    The paper edits a batch of 32 faces and keeps the 8 the discriminator scores best. Here
    every input face must come back as the same person, so "best 8 of 32" runs per face:
    `batch` edit candidates (both edit strengths jittered by 10%, the nuisance dims 28-31
    jittered, a share `defect_rate` rendered with a defect as editing failures), the `keep`
    best by quality survive, and of those the one whose strengths are closest to the requested
    ones is the result. Identity dims other than the edited ones never change.
    Deterministic in `seed`. Returns the edited latents and their scores (plus, with
    return_info, a dict with the `defects` of the chosen candidates).
    """
    latents = np.atleast_2d(np.asarray(latents, dtype=np.float64))
    edited, scores, defects = [], [], []
    for i, z in enumerate(latents):
        rng = np.random.default_rng([seed, i])
        jitter = rng.normal(0, 0.1, (batch, 2))
        candidates = []
        for j_age, j_glasses in jitter:
            zc = edit_latent(z, AGE_DIRECTION, age_strength * (1 + j_age))
            zc = edit_latent(zc, GLASSES_DIRECTION, glasses_strength * (1 + j_glasses))
            zc[NUISANCE_DIMS] += rng.normal(0, 0.3, len(NUISANCE_DIMS))
            candidates.append(zc)
        kinds, rngs = _draw_defects(rng, batch, defect_rate)
        renders = [
            render_face(c, size, rng=r, defect=k)
            for c, k, r in zip(candidates, kinds, rngs, strict=True)
        ]
        quality = np.array([quality_score(im) for im in renders])
        best = np.argsort(-quality, kind="stable")[:keep]
        pick = best[np.argmin(np.abs(jitter[best]).sum(1))]
        edited.append(candidates[pick])
        scores.append(quality[pick])
        defects.append(kinds[pick])
    edited, scores = np.stack(edited), np.array(scores)
    return (edited, scores, dict(defects=defects)) if return_info else (edited, scores)


def render_identity_images(z, n, seed, size=64) -> list:
    """n renders of one identity, each under its own random pose, light and background."""
    rng = np.random.default_rng(seed)
    return [render_face(z, size, pose=sample_nuisance(rng)) for _ in range(n)]


# --------------------------------------------------------------------------- attributes

# Patches of a canonical render (row and column fractions; each is averaged with its mirror
# image) that carry the attribute cues: hair colour, length and greyness, wrinkles, folds and
# the flush of youth, beard, lip colour, skin tone, the glasses' bridge and rims.
_PATCHES = {
    "hair_top": ((0.16, 0.21), (0.42, 0.58)),
    "hair_side": ((0.62, 0.70), (0.24, 0.29)),
    "forehead": ((0.33, 0.38), (0.42, 0.58)),
    "brow": ((0.38, 0.42), (0.36, 0.44)),
    "eye": ((0.43, 0.48), (0.37, 0.45)),
    "crow": ((0.43, 0.48), (0.30, 0.35)),
    "under_eye": ((0.49, 0.53), (0.37, 0.45)),
    "cheek": ((0.53, 0.59), (0.32, 0.38)),
    "bridge": ((0.43, 0.47), (0.47, 0.53)),
    "fold": ((0.57, 0.64), (0.37, 0.42)),
    "mouth": ((0.63, 0.68), (0.43, 0.57)),
    "chin": ((0.70, 0.76), (0.44, 0.56)),
    "jaw": ((0.62, 0.68), (0.32, 0.37)),
    "corner": ((0.03, 0.12), (0.03, 0.12)),
}


def attribute_features(img) -> np.ndarray:
    """Per patch: mean rgb, saturation and edge energy (mean |Laplacian|)."""
    im = np.asarray(img, dtype=np.float64) / 255.0
    edges = np.abs(ndimage.laplace(im @ _LUMA))
    feats = []
    for rows, cols in _PATCHES.values():
        mirror = (1 - cols[1], 1 - cols[0])
        rgb = (_region(im, rows, cols).mean((0, 1)) + _region(im, rows, mirror).mean((0, 1))) / 2
        energy = (_region(edges, rows, cols).mean() + _region(edges, rows, mirror).mean()) / 2
        feats += [*rgb, 1 - rgb.min() / (rgb.max() + 1e-6), energy]
    return np.array(feats)


def face_attributes(img_or_z) -> dict:
    """age (years), gender ('male'/'female'), ethnicity (one of ETHNICITIES), glasses (bool).

    A latent (1-D, LATENT_DIM) gives the exact values the renderer used. An image (a canonical
    render, HxWx3) is scored as the paper scores faces with pre-trained CNNs: by linear heads
    on `attribute_features`, fitted once per image size on labelled renders.
    """
    x = np.asarray(img_or_z)
    if x.ndim == 1:
        f = identity(x)
        gender = "male" if f.male else "female"
        glasses = bool(x[GLASSES] > 1.0)  # where the frame is half opaque
        return dict(age=f.age, gender=gender, ethnicity=f.ethnicity, glasses=glasses)
    if x.ndim != 3:
        raise ValueError(f"expected a latent ({LATENT_DIM},) or an image (H, W, 3), got {x.shape}")
    heads = _attribute_heads(x.shape[0])
    feats = _expand((attribute_features(x)[None] - heads["mean"]) / heads["std"])[0]
    return dict(
        age=float(age_years(feats @ heads["age"])),
        gender=("female", "male")[int(np.argmax(feats @ heads["gender"]))],
        ethnicity=ETHNICITIES[int(np.argmax(feats @ heads["ethnicity"]))],
        glasses=bool(np.argmax(feats @ heads["glasses"])),
    )


def _expand(x):
    """Standardised features -> [squares, features, 1]: the cues saturate, squares help."""
    return np.hstack([x**2, x, np.ones((len(x), 1))])


@functools.lru_cache(maxsize=4)
def _attribute_heads(size, n=1500, seed=20240601):
    """Fit the attribute heads on n canonical renders of random latents (~5 s, cached).

    Age: ridge regression of the age latent (mapped to years by `age_years`); gender,
    ethnicity and glasses: linear discriminant analysis. Both on `_expand`ed features.
    """
    z = np.random.default_rng(seed).standard_normal((n, LATENT_DIM))
    x = np.stack([attribute_features(render_face(zi, size)) for zi in z])
    mean, std = x.mean(0), x.std(0) + 1e-9
    x = _expand((x - mean) / std)
    age = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ z[:, AGE])
    labels = [face_attributes(zi) for zi in z]
    male = np.array([a["gender"] == "male" for a in labels], dtype=int)
    ethnicity = np.array([ETHNICITIES.index(a["ethnicity"]) for a in labels])
    glasses = np.array([a["glasses"] for a in labels], dtype=int)
    return dict(
        mean=mean,
        std=std,
        age=age,
        gender=_lda(x, male, 2),
        ethnicity=_lda(x, ethnicity, len(ETHNICITIES)),
        glasses=_lda(x, glasses, 2),
    )


def _lda(x, y, k, shrink=0.01):
    """Linear discriminant analysis: (features + bias, k) weights of the class scores.

    x ends with a constant column (dropped for the covariance); the covariance is shrunk a
    little towards a multiple of the identity to stay well conditioned.
    """
    feats = x[:, :-1]
    means = np.stack([feats[y == c].mean(0) if np.any(y == c) else feats.mean(0) for c in range(k)])
    resid = feats - means[y]
    cov = resid.T @ resid / len(y)
    cov = (1 - shrink) * cov + shrink * np.eye(len(cov)) * np.trace(cov) / len(cov)
    w = np.linalg.solve(cov, means.T)
    bias = -0.5 * np.sum(means.T * w, 0) + np.log(np.bincount(y, minlength=k) + 1.0)
    return np.vstack([w, bias])


# -------------------------------------------------------------------------- contact sheet


def contact_sheet(images, labels, path, ncols=8, scale=2):
    """Save images as a grid PNG with a label under each (PIL, nearest-neighbour upscaling)."""
    from PIL import Image, ImageDraw

    h, w = images[0].shape[:2]
    cell_w, cell_h = w * scale, h * scale + 12
    nrows = max(1, math.ceil(len(images) / ncols))
    sheet = Image.new("RGB", (ncols * cell_w, nrows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        r, c = divmod(i, ncols)
        tile = Image.fromarray(np.asarray(im, dtype=np.uint8))
        sheet.paste(tile.resize((cell_w, h * scale), Image.NEAREST), (c * cell_w, r * cell_h))
        draw.text((c * cell_w + 2, r * cell_h + h * scale), str(label)[: cell_w // 6], fill="black")
    sheet.save(path)
    return path
