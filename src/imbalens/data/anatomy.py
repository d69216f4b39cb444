"""Rendering of the chest-radiograph phantom: anatomy, the 14 findings, tone mapping.

Everything is a vectorised function of the normalised image coordinates
$(x, y) \\in [0, 1]^2$ (x to the image's right, which is the patient's left as on a PA
film; y downwards). The image is built as a *density* map $D(x, y)$ (bright = dense)

$$ D = 0.62\\,B - a\\,L (1 - H) + 0.06\\,H + S + R + C + m\\,V L (1 - H) + T + \\sum_f \\Delta_f $$

with body $B$, lungs $L$, heart $H$, spine $S$, ribs $R$, clavicles $C$, vessel markings
$V$, soft texture $T$ and one additive lesion field $\\Delta_f$ per finding $f$, then
tone-mapped $I = \\mathrm{clip}(c_0 + c_1 D, 0, 1)^{\\gamma}$ plus quantum noise and
quantised to 8 bits. Soft masks have *compact* support (a smoothstep of a signed
distance), so a lesion's support, and hence its box, is exact.

Cardiomegaly and Emphysema change the anatomy itself (a larger heart; larger, darker
lungs with flat domes); the other findings add a lesion field. Random numbers come from
``numpy.random.SeedSequence(seed, spawn_key=...)``: the patient's anatomy from
``(1, patient)``, the image's pose, exposure and textures from ``(2, index)`` and each
finding from ``(3, index, k)`` (k its position in :data:`imbalens.data.findings.FINDINGS`), so
an image rendered with and without a lesion differs only by that lesion.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imbalens.data.findings import FINDINGS

Box = tuple[int, int, int, int]
"""A box in pixel edges of the rendered image: (x0, y0, x1, y1), x1/y1 exclusive."""


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """A generator seeded from ``(seed, key)`` with :class:`numpy.random.SeedSequence`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def smooth_inside(sd: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``sd < 0`` (signed distance, negative inside).

    $$ s = \\mathrm{smoothstep}(\\mathrm{clip}(1/2 - sd/e, 0, 1)) $$ : 1 for
    $sd \\le -e/2$, 0 for $sd \\ge e/2$ (compact support), smooth in between.
    """
    t = np.clip(0.5 - sd / edge, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation, correlation length
    ``sigma`` (fraction of the side). Filtered on a coarse grid and upsampled (linear)
    for speed."""
    sigma_px = max(sigma * size, 0.5)
    k = max(1, int(sigma_px // 2))
    m = -(-size // k)
    a = ndimage.gaussian_filter(rng.standard_normal((m, m)), sigma_px / k, mode="wrap")
    if k > 1:
        a = ndimage.zoom(a, k, order=1, mode="grid-wrap", grid_mode=True)[:size, :size]
    return a / (a.std() + 1e-12)


def ridges(n: np.ndarray, width: float) -> np.ndarray:
    """Line network along the zero crossings of a smooth field: $\\max(0, 1 - |n|/w)$."""
    return np.clip(1.0 - np.abs(n) / width, 0.0, 1.0)


@dataclass(frozen=True)
class Anatomy:
    """Geometry and tissue parameters of one patient (normalised coordinates).

    Index 0 of the pairs is the image-left lung (patient's right), 1 the image-right.
    """

    lung_cx: tuple[float, float]
    lung_cy: float
    lung_ax: tuple[float, float]
    lung_ay: float
    lung_p: float
    dome_top: tuple[float, float]
    dome_k: float
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    heart_angle: float
    air: float
    markings: float
    rib_y0: float
    rib_spacing: float
    rib_width: float
    clavicle_y: float
    spine_w: float
    body_hw: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A patient's anatomy: normal ranges with per-patient jitter."""
    n = rng.normal
    half = 0.2 + n(0, 0.01)
    gap = 0.035 + n(0, 0.004)
    return Anatomy(
        lung_cx=(0.5 - gap - half * 0.85, 0.5 + gap + half * 0.85),
        lung_cy=0.47 + n(0, 0.015),
        lung_ax=(half * 0.85 * (1 + n(0, 0.03)), half * 0.85 * (1 + n(0, 0.03))),
        lung_ay=0.38 + n(0, 0.015),
        lung_p=2.6 + n(0, 0.15),
        dome_top=(0.66 + n(0, 0.015), 0.69 + n(0, 0.015)),
        dome_k=0.13 + n(0, 0.015),
        heart_cx=0.545 + n(0, 0.01),
        heart_cy=0.635 + n(0, 0.012),
        heart_rx=0.15 + n(0, 0.02),
        heart_ry=0.115 + n(0, 0.011),
        heart_angle=math.radians(22 + n(0, 5)),
        air=0.42 + n(0, 0.045),
        markings=0.07 + n(0, 0.01),
        rib_y0=0.12 + n(0, 0.01),
        rib_spacing=0.062 + n(0, 0.003),
        rib_width=0.013 + n(0, 0.001),
        clavicle_y=0.16 + n(0, 0.01),
        spine_w=0.032 + n(0, 0.003),
        body_hw=0.47 + n(0, 0.015),
    )


@dataclass
class Context:
    """The grids and anatomy fields a lesion function may read."""

    size: int
    x: np.ndarray
    y: np.ndarray
    anatomy: Anatomy
    lung: tuple[np.ndarray, np.ndarray]
    rho: tuple[np.ndarray, np.ndarray]
    heart: np.ndarray
    markings: np.ndarray
    body: np.ndarray

    @property
    def edge(self) -> float:
        """Soft-edge width: about 1.5 px, at least 0.006."""
        return max(1.5 / self.size, 0.006)

    def lung_eff(self, side: int) -> np.ndarray:
        """Aerated lung of one side (lung minus heart shadow)."""
        return self.lung[side] * (1.0 - self.heart)

    def dome(self, side: int, x: np.ndarray | float) -> np.ndarray | float:
        """Diaphragm height (y) of one side at ``x``: a parabola peaking mid-lung."""
        a = self.anatomy
        return a.dome_top[side] + a.dome_k * ((x - a.lung_cx[side]) / a.lung_ax[side]) ** 2

    def lung_point(self, side: int, x: float, y: float) -> float:
        """Soft lung membership (without heart) at one point (scalar evaluation)."""
        a = self.anatomy
        r = _rho(a, side, np.array(x), np.array(y))
        e = self.edge
        v = smooth_inside((r - 1.0) * a.lung_ax[side], e) * smooth_inside(y - self.dome(side, x), e)
        h = _heart(a, np.array(x), np.array(y), 2 * e)
        below = _under_heart(a, np.array(x), np.array(y), e)
        return float(v * (1.0 - h) * (1.0 - below))

    def sample_in_lung(
        self, rng: np.random.Generator, side: int, margin: float, y_range: tuple[float, float]
    ) -> tuple[float, float]:
        """A point at least ``margin`` inside the aerated lung of ``side`` (rejection)."""
        a = self.anatomy
        for _ in range(200):
            x = a.lung_cx[side] + rng.uniform(-1, 1) * a.lung_ax[side]
            y = rng.uniform(*y_range)
            ok = all(
                self.lung_point(side, x + dx, y + dy) > 0.99
                for dx, dy in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin))
            )
            if ok:
                return float(x), float(y)
        return float(a.lung_cx[side]), float(a.lung_cy)


def _rho(a: Anatomy, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = a.lung_p
    u = np.abs(x - a.lung_cx[side]) / a.lung_ax[side]
    v = np.abs(y - a.lung_cy) / a.lung_ay
    return (u**p + v**p) ** (1.0 / p)


def _heart(a: Anatomy, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    c, s = math.cos(a.heart_angle), math.sin(a.heart_angle)
    dx, dy = x - a.heart_cx, y - a.heart_cy
    u = (c * dx + s * dy) / a.heart_rx
    v = (-s * dx + c * dy) / a.heart_ry
    r = np.sqrt(u * u + v * v)
    return smooth_inside((r - 1.0) * min(a.heart_rx, a.heart_ry), edge)


def _under_heart(a: Anatomy, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    """Soft mask of the region below the heart's centre and within its width: the heart
    rests on the diaphragm there, so no lung shows between them."""
    sd = np.maximum(a.heart_cy - y, np.abs(x - a.heart_cx) - 0.9 * a.heart_rx)
    return smooth_inside(sd, edge)


def _band(dist: np.ndarray, width: float) -> np.ndarray:
    """Bone-like band profile: 1 at the centre line, 0 beyond ``width``."""
    t = np.clip(1.0 - (dist / width) ** 2, 0.0, 1.0)
    return np.sqrt(t)


def build_context(
    size: int, anatomy: Anatomy, pose: tuple[float, float, float], markings_noise: np.ndarray
) -> Context:
    """Grids (with the image's small rotation and shift) and the anatomy's soft masks."""
    angle, sx, sy = pose
    g = ((np.arange(size) + 0.5) / size).astype(np.float32)
    gx, gy = np.meshgrid(g, g)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    x = 0.5 + c * (gx - 0.5) - s * (gy - 0.5) - sx
    y = 0.5 + s * (gx - 0.5) + c * (gy - 0.5) - sy
    a = anatomy
    edge = max(1.5 / size, 0.006)
    rho = (_rho(a, 0, x, y), _rho(a, 1, x, y))
    under_heart = 1.0 - _under_heart(a, x, y, edge)
    lung = tuple(
        smooth_inside((rho[k] - 1.0) * a.lung_ax[k], edge)
        * smooth_inside(
            y - (a.dome_top[k] + a.dome_k * ((x - a.lung_cx[k]) / a.lung_ax[k]) ** 2), edge
        )
        * under_heart
        for k in (0, 1)
    )
    heart = _heart(a, x, y, 2 * edge)
    # body: shoulders narrowing to the neck above y = 0.12
    yy = np.clip(y / 0.12, 0.0, 1.0)
    hw = np.where(y < 0.12, 0.15 + (a.body_hw - 0.15) * np.sqrt(yy), a.body_hw + 0.03 * (y - 0.12))
    body = smooth_inside(np.abs(x - 0.5) - hw, 0.02)
    # vessels: ridges of band-passed noise, denser near the hila
    hil = np.minimum(
        np.hypot(x - a.lung_cx[0] - 0.06, y - 0.45), np.hypot(x - a.lung_cx[1] + 0.06, y - 0.45)
    )
    markings = ridges(markings_noise, 0.35) * np.clip(1.15 - 2.2 * hil, 0.25, 1.0)
    return Context(size, x, y, a, lung, rho, heart, markings, body)  # type: ignore[arg-type]


def anatomy_density(ctx: Context, texture: np.ndarray) -> np.ndarray:
    """The healthy density map D (without lesions)."""
    a, x, y = ctx.anatomy, ctx.x, ctx.y
    lung = np.maximum(ctx.lung[0], ctx.lung[1]) * (1.0 - ctx.heart)
    d = 0.62 * ctx.body - a.air * lung + 0.06 * ctx.heart
    d += a.markings * ctx.markings * lung
    # abdomen slightly brighter towards the bottom
    d += 0.05 * ctx.body * np.clip((y - 0.7) / 0.3, 0.0, 1.0)
    # aortic knob
    d += 0.05 * smooth_inside(np.hypot(x - 0.555, y - 0.30) - 0.03, 0.01)
    # spine with vertebral bodies
    vert = 0.75 + 0.25 * np.cos(2 * math.pi * (y - a.rib_y0) / a.rib_spacing)
    d += 0.11 * _band(np.abs(x - 0.5), a.spine_w) * vert * ctx.body
    # posterior ribs: arcs from the spine, up then down to the lateral wall; rib i starts
    # at y0 + s (i + 0.04 i^2), so the rib index is found in closed form (no loop)
    dx = np.abs(x - 0.5)
    lateral = np.clip((dx - 0.02) / 0.42, 0.0, 1.0)
    t = (y - (-0.05 * lateral + 0.16 * lateral**2.2) - a.rib_y0) / a.rib_spacing
    idx = (np.sqrt(np.maximum(1.0 + 0.16 * t, 0.0)) - 1.0) / 0.08
    near = np.clip(np.rint(idx), 0, 9)
    dist = np.abs(t - near - 0.04 * near**2) * a.rib_spacing
    ribs = _band(dist, a.rib_width * (1 + 0.05 * near))
    # anterior ribs: fainter, run down medially
    t = (y - a.rib_y0 - 0.09 - 0.12 * (1.0 - lateral)) / (a.rib_spacing * 1.15)
    near = np.clip(np.rint(t), 0, 5)
    ribs = np.maximum(ribs, 0.5 * _band(np.abs(t - near) * a.rib_spacing * 1.15, a.rib_width * 0.8))
    cage = smooth_inside(np.minimum(ctx.rho[0], ctx.rho[1]) - 1.12, 0.1)
    cage = cage * smooth_inside(y - max(a.dome_top) - 0.1, 0.08)
    d += 0.085 * ribs * ctx.body * cage
    # clavicles
    clav_t = np.clip((dx - 0.04) / 0.30, 0.0, 1.0)
    clav_y = a.clavicle_y + 0.02 - 0.06 * clav_t + 0.03 * clav_t**2
    d += 0.12 * _band(np.abs(y - clav_y), 0.014) * (dx > 0.04) * (dx < 0.36)
    d += 0.025 * texture * ctx.body
    return d


# --------------------------------------------------------------------------- findings
Lesion = tuple[np.ndarray, bool]
"""A lesion field (density units) and whether its support is its box."""


def _strength(rng: np.random.Generator, difficulty: float) -> float:
    """Contrast factor: $(1.5 - d) \\cdot U(0.8, 1.2)$ for difficulty $d$."""
    return (1.5 - difficulty) * rng.uniform(0.8, 1.2)


def _scale(rng: np.random.Generator, difficulty: float) -> float:
    """Size jitter: $\\exp(N(0, 0.06 + 0.25 d))$ clipped to [0.6, 1.6]."""
    return float(np.clip(math.exp(rng.normal(0.0, 0.06 + 0.25 * difficulty)), 0.6, 1.6))


def _blob(
    ctx: Context, cx: float, cy: float, r: np.ndarray | float, rx: float, ry: float
) -> np.ndarray:
    """Profile $\\sqrt{1 - \\rho^2}$ of a (lobulated) ellipse; zero outside."""
    u = (ctx.x - cx) / rx
    v = (ctx.y - cy) / ry
    rho = np.sqrt(u * u + v * v) / r
    return np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))


def _nodule(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    side = int(rng.integers(2))
    r = 0.035 * _scale(rng, d)
    cx, cy = ctx.sample_in_lung(rng, side, r, (0.2, 0.62))
    return 0.2 * _strength(rng, d) * _blob(ctx, cx, cy, 1.0, r, r), True


def _mass(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    side = int(rng.integers(2))
    s = _scale(rng, d)
    rx, ry = 0.066 * s, 0.077 * s
    cx, cy = ctx.sample_in_lung(rng, side, 0.5 * rx, (0.22, 0.6))
    theta = np.arctan2(ctx.y - cy, ctx.x - cx)
    a1, a2 = rng.uniform(0.04, 0.1, 2)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    lob = 1.0 + a1 * np.cos(3 * theta + p1) + a2 * np.cos(5 * theta + p2)
    prof = _blob(ctx, cx, cy, lob / (1 + a1 + a2), rx, ry)
    return 0.22 * _strength(rng, d) * prof**0.6, True


def _atelectasis(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    side = int(rng.integers(2))
    s = _scale(rng, d)
    length, half = 0.14 * s, 0.026 * s
    cx, cy = ctx.sample_in_lung(rng, side, 0.5 * length, (0.5, 0.64))
    ang = math.radians(rng.uniform(-35, 35))
    ux, uy = math.cos(ang), math.sin(ang)
    px, py = ctx.x - (cx - 0.5 * length * ux), ctx.y - (cy - 0.5 * length * uy)
    t = np.clip((px * ux + py * uy) / length, 0.0, 1.0)
    dist = np.hypot(px - t * length * ux, py - t * length * uy)
    lateral_end = t if (ux > 0) == (side == 1) else 1.0 - t
    thick = half * (0.5 + 1.0 * lateral_end)  # wedge: wider at the pleura
    band = smooth_inside(dist - thick, ctx.edge)
    return 0.16 * _strength(rng, d) * band * ctx.lung_eff(side), True


def _patch(
    ctx: Context,
    rng: np.random.Generator,
    d: float,
    rx: float,
    ry: float,
    y_range: tuple[float, float],
) -> tuple[int, np.ndarray]:
    side = int(rng.integers(2))
    s = _scale(rng, d)
    rx, ry = rx * s, ry * s
    cx, cy = ctx.sample_in_lung(rng, side, 0.4 * rx, y_range)
    r = np.hypot((ctx.x - cx) / rx, (ctx.y - cy) / ry)
    return side, smooth_inside((r - 1.0) * min(rx, ry), 0.25 * min(rx, ry))


def _infiltration(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    side, win = _patch(ctx, rng, d, 0.1, 0.115, (0.3, 0.62))
    blotch = np.clip(smooth_noise(rng, ctx.size, 0.025) * 0.5 + 0.5, 0.0, 1.0)
    return 0.15 * _strength(rng, d) * win * (0.25 + 0.75 * blotch) * ctx.lung_eff(side), True


def _pneumonia(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    side, win = _patch(ctx, rng, d, 0.11, 0.15, (0.3, 0.6))
    ys = ctx.y[win > 0]
    if ys.size and rng.random() < 0.5:  # a fissure gives one sharp edge
        cut = float(np.quantile(ys, rng.uniform(0.2, 0.35)))
        win = win * smooth_inside(cut - ctx.y, ctx.edge)
    bronch = ridges(smooth_noise(rng, ctx.size, 0.012), 0.3)
    dense = 1.0 - 0.45 * bronch  # air bronchograms
    return 0.18 * _strength(rng, d) * win * dense * ctx.lung_eff(side), True


def _consolidation(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    side, win = _patch(ctx, rng, d, 0.09, 0.1, (0.4, 0.64))
    return 0.18 * _strength(rng, d) * win * ctx.lung_eff(side), False


def _effusion(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    a = ctx.anatomy
    side = int(rng.integers(2))
    s = _scale(rng, d)
    width, height = 0.2 * s, 0.25 * s
    lateral = -1.0 if side == 0 else 1.0
    x_wall = a.lung_cx[side] + lateral * a.lung_ax[side]
    t = np.clip(lateral * (x_wall - ctx.x) / width, 0.0, None)  # 0 at the wall, 1 medially
    cp = float(ctx.dome(side, x_wall - lateral * 0.25 * a.lung_ax[side]))
    top = cp - height + 0.12 * s * t**1.5  # meniscus: highest at the wall
    fluid = smooth_inside(top - ctx.y, 0.03) * smooth_inside(t - 1.0, 0.3)
    return 0.24 * _strength(rng, d) * fluid * ctx.lung[side], True


def _pneumothorax(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    a = ctx.anatomy
    side = int(rng.integers(2))
    s = _scale(rng, d)
    w = 0.22 * s  # rim thickness in lung-radius units
    lateral = -1.0 if side == 0 else 1.0
    y_cut = a.lung_cy - a.lung_ay * rng.uniform(0.42, 0.55)
    win = smooth_inside(ctx.y - y_cut, 0.02) * smooth_inside(
        lateral * (a.lung_cx[side] - ctx.x) - 0.03, 0.02
    )
    rho = ctx.rho[side]
    rim = smooth_inside((1.0 - w) - rho, ctx.edge / a.lung_ax[side]) * win * ctx.lung[side]
    line = (
        np.clip(1.0 - np.abs(rho - (1.0 - w)) * a.lung_ax[side] / (0.7 * ctx.edge), 0.0, 1.0) * win
    )
    line = line * (rho < 1.0)
    k = _strength(rng, d)
    delta = -a.markings * ctx.markings * rim - 0.06 * k * rim + 0.06 * k * line
    return delta, True


def _cardiomegaly(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    return np.zeros_like(ctx.x), False  # the anatomy is changed; the box is the heart's


def _edema(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    a = ctx.anatomy
    k = _strength(rng, d)
    wing = np.zeros_like(ctx.x)
    for side, sign in ((0, -1.0), (1, 1.0)):
        cx = 0.5 + sign * 0.12
        u = np.hypot((ctx.x - cx) / 0.13, (ctx.y - a.lung_cy) / 0.17)
        wing = wing + np.clip(1.0 - u * u, 0.0, 1.0) ** 1.5 * ctx.lung[side]
    haze = 0.8 + 0.2 * smooth_noise(rng, ctx.size, 0.03)
    return 0.1 * k * wing * haze * (1.0 - ctx.heart), False


def _fibrosis(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    a = ctx.anatomy
    net = ridges(smooth_noise(rng, ctx.size, 0.008), 0.3)
    upper = smooth_inside(ctx.y - (a.lung_cy + 0.02), 0.15)
    lung = np.maximum(ctx.lung[0], ctx.lung[1]) * (1.0 - ctx.heart)
    return 0.07 * _strength(rng, d) * net * upper * lung, False


def _pleural_thickening(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    a = ctx.anatomy
    side = int(rng.integers(2))
    lateral = -1.0 if side == 0 else 1.0
    w = 0.1 * (1.0 + 0.35 * smooth_noise(rng, ctx.size, 0.04))
    y0 = rng.uniform(0.2, 0.45)
    win = smooth_inside(np.abs(ctx.y - y0 - 0.1) - 0.15, 0.06) * smooth_inside(
        lateral * (a.lung_cx[side] - ctx.x), 0.05
    )
    rim = smooth_inside((1.0 - w) - ctx.rho[side], 0.02) * ctx.lung[side] * win
    return 0.3 * _strength(rng, d) * rim, False


def _hernia(ctx: Context, rng: np.random.Generator, d: float) -> Lesion:
    a = ctx.anatomy
    r = 0.06 * _scale(rng, d)
    cx = 0.53 + rng.normal(0, 0.01)
    cy = a.dome_top[1] - 0.3 * r
    k = _strength(rng, d)
    disc = _blob(ctx, cx, cy, 1.0, r, 0.85 * r)
    gas_level = cy - 0.1 * r
    gas = smooth_inside(np.hypot(ctx.x - cx, (ctx.y - cy) / 0.85) - 0.8 * r, ctx.edge)
    gas = gas * smooth_inside(ctx.y - gas_level, ctx.edge)  # air above a flat fluid level
    return 0.08 * k * disc - 0.15 * k * gas, False


LesionFn = Callable[[Context, np.random.Generator, float], Lesion]
LESIONS: dict[str, LesionFn] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Effusion": _effusion,
    "Emphysema": lambda ctx, rng, d: (np.zeros_like(ctx.x), False),
    "Fibrosis": _fibrosis,
    "Hernia": _hernia,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pleural_Thickening": _pleural_thickening,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
}
"""Finding -> lesion field (every finding of :data:`FINDINGS` has one)."""


def _enlarge_heart(a: Anatomy, rng: np.random.Generator, d: float) -> Anatomy:
    k = (1.5 - d) * rng.uniform(0.75, 1.25)
    return dataclasses.replace(
        a,
        heart_rx=a.heart_rx * (1 + 0.48 * k),
        heart_ry=a.heart_ry * (1 + 0.3 * k),
        heart_cx=a.heart_cx + 0.025,
        heart_cy=a.heart_cy + 0.02,
    )


def _hyperinflate(a: Anatomy, rng: np.random.Generator, d: float) -> Anatomy:
    k = (1.5 - d) * rng.uniform(0.8, 1.2)
    return dataclasses.replace(
        a,
        lung_ay=a.lung_ay * (1 + 0.06 * k),
        lung_cy=a.lung_cy + 0.025 * k,
        dome_top=(a.dome_top[0] + 0.035 * k, a.dome_top[1] + 0.035 * k),
        dome_k=a.dome_k * max(0.2, 1 - 0.4 * k),
        air=a.air * (1 + 0.06 * k),
        markings=a.markings * max(0.2, 1 - 0.3 * k),
        heart_rx=a.heart_rx * 0.88,
    )


ANATOMY_CHANGES: dict[str, Callable[[Anatomy, np.random.Generator, float], Anatomy]] = {
    "Cardiomegaly": _enlarge_heart,
    "Emphysema": _hyperinflate,
}
"""Findings that change the anatomy itself rather than adding a lesion field."""


def support_box(field: np.ndarray, rel: float = 0.02) -> Box | None:
    """Pixel-edge box of ``|field| > rel * max|field|`` (None for an empty field)."""
    m = np.abs(field)
    top = float(m.max())
    if top <= 0:
        return None
    mask = m > rel * top
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def render(
    size: int,
    seed: int,
    index: int,
    patient: int,
    findings: tuple[str, ...] | list[str],
    difficulty: float = 0.5,
) -> tuple[np.ndarray, dict[str, Box]]:
    """Render one phantom radiograph.

    Args:
        size: side in pixels.
        seed, index, patient: seed the patient's anatomy ``(seed, 1, patient)``, the
            image ``(seed, 2, index)`` and its findings ``(seed, 3, index, k)``.
        findings: names from :data:`FINDINGS` present in the image (order irrelevant).
        difficulty: in [0, 1]; lesion contrast $1.5 - d$ and size jitter grow harder.

    Returns:
        ``(image, boxes)``: uint8 (size, size) grey image and, for each boxed finding
        present, its box in pixel edges (x0, y0, x1, y1) around the planted lesion,
        which is zero outside the box.
    """
    img, boxes, _ = render_with_masks(size, seed, index, patient, findings, difficulty)
    return img, boxes


def render_with_masks(
    size: int,
    seed: int,
    index: int,
    patient: int,
    findings: tuple[str, ...] | list[str],
    difficulty: float = 0.5,
) -> tuple[np.ndarray, dict[str, Box], dict[str, np.ndarray]]:
    r""":func:`render` plus each boxed lesion's exact pixel mask (bool (size, size)).

    The mask of a lesion-field finding is the support of the field as added to the
    image, :math:`\Delta_f \ne 0` after cropping to the box, so it lies inside the box
    and holds every pixel the lesion changed. Cardiomegaly's is the enlarged heart's
    silhouette (heart density > 0.05 inside the body), the set its box is drawn around.
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(
            f"unknown findings {sorted(unknown)}; use names from imbalens.data.findings.FINDINGS"
        )
    anatomy = sample_anatomy(rng_for(seed, 1, patient))
    irng = rng_for(seed, 2, index)
    pose = (math.radians(irng.normal(0, 1.5)), irng.normal(0, 0.012), irng.normal(0, 0.012))
    tone = (irng.normal(0.04, 0.015), irng.normal(1.12, 0.05), irng.normal(1.0, 0.06))
    markings_noise = smooth_noise(irng, size, 0.006)
    texture = smooth_noise(irng, size, 0.05)
    noise = irng.standard_normal((size, size)).astype(np.float64)
    present = [f for f in FINDINGS if f in set(findings)]
    frngs = {f: rng_for(seed, 3, index, FINDINGS.index(f)) for f in present}
    for f in present:
        if f in ANATOMY_CHANGES:
            anatomy = ANATOMY_CHANGES[f](anatomy, frngs[f], difficulty)
    ctx = build_context(size, anatomy, pose, markings_noise)
    d = anatomy_density(ctx, texture)
    boxes: dict[str, Box] = {}
    masks: dict[str, np.ndarray] = {}
    for f in present:
        delta, boxed = LESIONS[f](ctx, frngs[f], difficulty)
        if boxed:
            box = support_box(delta)
            if box is not None:
                x0, y0, x1, y1 = box
                cropped = np.zeros_like(delta)
                cropped[y0:y1, x0:x1] = delta[y0:y1, x0:x1]
                delta = cropped
                boxes[f] = box
                masks[f] = cropped != 0
        d += delta
    if "Cardiomegaly" in present:
        heart = np.where(ctx.heart > 0.05, ctx.heart, 0.0) * ctx.body
        box = support_box(heart)
        if box is not None:
            boxes["Cardiomegaly"] = box
            masks["Cardiomegaly"] = _inside(heart, box)
    c0, c1, gamma = tone
    img = np.clip(c0 + c1 * d, 0.0, 1.0) ** gamma
    img = img * 255.0 + (2.0 + 3.0 * difficulty) * noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes, masks


def _inside(field: np.ndarray, box: Box) -> np.ndarray:
    """``field > 0`` restricted to ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    mask = np.zeros(field.shape, dtype=bool)
    mask[y0:y1, x0:x1] = field[y0:y1, x0:x1] > 0
    return mask
