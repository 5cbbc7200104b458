"""Mouth models of the demo corpus: from timed phones to a 96x96 mouth-region video at 25 fps.

Two independently parameterised models, chosen with `--mouth-model`:

- `ellipse` (the default): 18 visemes over 6 articulation parameters (jaw opening, lip spread/rounding, lip
  closure, lower lip under the teeth, teeth and tongue visible) blended with Cohen & Massaro's dominance functions;
  lips drawn as half-ellipses on a flat, lit skin patch; small head jitter.
- `contour`: another articulation mapping (MPEG-4-like viseme classes over aperture, lip width, protrusion,
  upper-lip raise, lower-lip tuck and tongue tip), keyframes held over the middle of each phone and smoothed by a
  critically damped second-order system (a speaker-specific time constant) with lip closure enforced during
  b/p/m and the lower lip tucked during f/v, averaged over the camera's shutter; lips drawn from column-wise contours
  (Cupid's bow, thicker lower lip, teeth with gaps, tongue) with nostrils, philtrum, chin crease, skin texture,
  optional stubble and lipstick, camera blur, and slow head motion (roll, zoom and drift).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .media_constants import VIDEO_FPS as FPS


ROI_SIZE = 96
MOUTH_MODELS = ("ellipse", "contour")


# Mouth shape per phone: (jaw opening 0..1, lip spread -1 rounded .. 1 spread, lip closure 0..1, lower lip under the
# upper teeth 0..1, teeth visible 0..1, tongue visible 0..1, dominance). Phones of one viseme share a shape.
_VISEMES = {
    "rest": (0.08, 0.0, 0.3, 0.0, 0.0, 0.0, 0.6),
    "bilabial": (0.0, 0.05, 1.0, 0.0, 0.0, 0.0, 6.0),  # b p m
    "labiodental": (0.12, 0.1, 0.0, 1.0, 0.9, 0.0, 4.0),  # f v
    "dental": (0.28, 0.2, 0.0, 0.0, 0.8, 1.0, 2.5),  # th dh
    "alveolar": (0.22, 0.35, 0.0, 0.0, 0.7, 0.3, 1.2),  # t d n l
    "sibilant": (0.1, 0.55, 0.0, 0.0, 1.0, 0.0, 2.5),  # s z
    "postalveolar": (0.18, -0.45, 0.0, 0.0, 0.8, 0.0, 2.5),  # sh zh ch jh
    "velar": (0.32, 0.15, 0.0, 0.0, 0.4, 0.2, 0.8),  # k g ng hh
    "r": (0.2, -0.6, 0.0, 0.0, 0.3, 0.1, 1.8),
    "w": (0.12, -1.0, 0.0, 0.0, 0.0, 0.0, 3.0),
    "y": (0.2, 0.6, 0.0, 0.0, 0.6, 0.1, 1.2),
    "open": (0.95, 0.15, 0.0, 0.0, 0.3, 0.4, 1.0),  # aa ah ay aw
    "front_open": (0.7, 0.5, 0.0, 0.0, 0.6, 0.3, 1.0),  # ae eh ey
    "front_close": (0.3, 0.9, 0.0, 0.0, 0.9, 0.1, 1.0),  # iy ih
    "mid": (0.45, 0.1, 0.0, 0.0, 0.3, 0.2, 0.8),  # ax er
    "round_open": (0.7, -0.6, 0.0, 0.0, 0.2, 0.2, 1.2),  # ao oy
    "round_mid": (0.5, -0.8, 0.0, 0.0, 0.1, 0.1, 1.5),  # ow
    "round_close": (0.25, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0),  # uw uh
}
_PHONE_VISEME = {
    "pau": "rest",
    "b": "bilabial",
    "p": "bilabial",
    "m": "bilabial",
    "f": "labiodental",
    "v": "labiodental",
    "th": "dental",
    "dh": "dental",
    "t": "alveolar",
    "d": "alveolar",
    "n": "alveolar",
    "l": "alveolar",
    "s": "sibilant",
    "z": "sibilant",
    "sh": "postalveolar",
    "zh": "postalveolar",
    "ch": "postalveolar",
    "jh": "postalveolar",
    "k": "velar",
    "g": "velar",
    "ng": "velar",
    "hh": "velar",
    "r": "r",
    "w": "w",
    "y": "y",
    "aa": "open",
    "ah": "open",
    "ay": "open",
    "aw": "open",
    "ae": "front_open",
    "eh": "front_open",
    "ey": "front_open",
    "iy": "front_close",
    "ih": "front_close",
    "ax": "mid",
    "er": "mid",
    "ao": "round_open",
    "oy": "round_open",
    "ow": "round_mid",
    "uw": "round_close",
    "uh": "round_close",
}
# diphthongs move from their first shape to this one over their second half
_DIPHTHONG_TARGETS = {
    "ay": "front_close",
    "aw": "round_close",
    "ey": "front_close",
    "oy": "front_close",
    "ow": "round_close",
}


def mouth_trajectory(phones: list[tuple[str, float, float]], num_frames: int) -> np.ndarray:
    """Mouth parameters (num_frames, 6) at the video frames' centres, blended across phones with dominance
    functions: weight_i(t) = dominance_i * exp(-(|t - centre_i| / width_i)^1.5), width = 60% of the phone (>= 25 ms)."""
    targets, centres, widths, dominance = [], [], [], []
    for phone, start, end in phones:
        shape = _VISEMES[_PHONE_VISEME.get(phone, "mid")]
        second = _DIPHTHONG_TARGETS.get(phone)
        pieces = (
            [(shape, start, end)]
            if second is None
            else [(shape, start, (start + end) / 2), (_VISEMES[second], (start + end) / 2, end)]
        )
        for values, piece_start, piece_end in pieces:
            targets.append(values[:6])
            dominance.append(values[6])
            centres.append((piece_start + piece_end) / 2)
            widths.append(max(0.6 * (piece_end - piece_start), 0.025))
    times = (np.arange(num_frames) + 0.5) / FPS
    distance = np.abs(times[:, None] - np.asarray(centres)[None]) / np.asarray(widths)[None]
    weights = np.asarray(dominance)[None] * np.exp(-(distance**1.5)) + 1e-9
    return weights @ np.asarray(targets) / weights.sum(axis=1, keepdims=True)


def _smooth_step(x: np.ndarray) -> np.ndarray:
    """A soft 0/1 edge (anti-aliased masks): 1 inside (x < -1), 0 outside (x > 1), a linear ramp between."""
    return np.clip(0.5 - 0.5 * x, 0.0, 1.0)


def render_mouth(trajectory: np.ndarray, appearance_seed: int, clip_seed: int) -> np.ndarray:
    """Draw the 96x96 mouth region for each row of `trajectory`: RGB uint8 frames (T, 96, 96, 3).

    The face (skin and lip colours, mouth size, position and tilt, lighting) comes from `appearance_seed`, so one
    speaker keeps one face; head jitter and sensor noise come from `clip_seed`."""
    face = np.random.default_rng(appearance_seed)
    tone = face.uniform(0, 1)  # from light to dark skin, with a little hue variation
    skin = (1 - tone) * np.array([235.0, 200.0, 175.0]) + tone * np.array([100.0, 65.0, 45.0])
    skin = skin * face.uniform(0.92, 1.08, size=3)
    lip = skin * face.uniform(0.55, 0.8) + np.array([35.0, 0.0, 5.0])
    mouth_width, lip_thickness = float(face.uniform(19, 25)), float(face.uniform(3.5, 6.0))
    centre_x, centre_y = 48.0 + float(face.uniform(-5, 5)), 52.0 + float(face.uniform(-5, 5))
    tilt = float(face.uniform(-0.12, 0.12))
    light_x, light_y = (float(value) for value in face.uniform(-0.35, 0.35, size=2))
    clip = np.random.default_rng(clip_seed)
    num_frames = len(trajectory)
    jitter = np.cumsum(clip.normal(0, 0.25, size=(num_frames, 2)), axis=0).clip(-3, 3).astype(np.float32)

    trajectory = np.asarray(trajectory, dtype=np.float32)
    opening, spread, closure, tuck, teeth, tongue = (trajectory[:, k, None, None] for k in range(6))
    grid_y, grid_x = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32)
    dx = grid_x[None] - (centre_x + jitter[:, 0])[:, None, None]
    dy = grid_y[None] - (centre_y + jitter[:, 1])[:, None, None]
    u = np.float32(np.cos(tilt)) * dx + np.float32(np.sin(tilt)) * dy  # along the mouth
    v = np.float32(-np.sin(tilt)) * dx + np.float32(np.cos(tilt)) * dy  # downwards

    half_width = mouth_width * (1.0 + 0.28 * spread)
    half_open = np.maximum(18.0 * opening * (1.0 - closure), 0.0)
    protrusion = np.maximum(-spread, 0.0)  # rounded lips push out and thicken
    upper = lip_thickness * (1.0 + 0.5 * protrusion)
    lower = lip_thickness * (1.2 + 0.5 * protrusion) * (1.0 - 0.35 * tuck)
    inner_up = np.maximum(0.55 * half_open, 0.05)
    inner_down = np.maximum(half_open - 2.0 * tuck, 0.05)  # the lower lip rises under the upper teeth for f/v

    # outer lip outline and inner opening: upper and lower half-ellipses
    above = v < 0
    lips = np.sqrt((u / (half_width + 2.0)) ** 2 + (v / np.where(above, inner_up + upper, inner_down + lower)) ** 2)
    lip_mask = _smooth_step((lips - 1.0) * (half_width + 2.0))
    cavity = np.sqrt((u / (half_width - 1.0)) ** 2 + (v / np.where(above, inner_up, inner_down)) ** 2)
    cavity_mask = _smooth_step((cavity - 1.0) * np.maximum(np.minimum(inner_up, inner_down), 1.0))
    # upper teeth at the top of the opening, tongue at its bottom, a dark line where closed lips meet
    teeth_mask = (
        cavity_mask
        * _smooth_step(v + inner_up - 1.0 - 3.0 * teeth)
        * _smooth_step(np.abs(u) - 0.75 * half_width)
        * teeth
    )
    tongue_mask = cavity_mask * _smooth_step(inner_down - 1.0 - 4.0 * tongue - v) * tongue
    crease = np.exp(-(v**2) / 1.5) * _smooth_step(np.abs(u) - half_width) * (1.0 - cavity_mask) * closure

    shade = 1.0 + light_x * (grid_x / ROI_SIZE - 0.5) + light_y * (grid_y / ROI_SIZE - 0.5)
    image = np.broadcast_to(shade[None, ..., None] * skin.astype(np.float32), (num_frames, ROI_SIZE, ROI_SIZE, 3))
    image = _blend(image, lip, lip_mask)
    image = _blend(image, lip * 0.55, crease)
    image = _blend(image, (35.0, 15.0, 20.0), cavity_mask)
    image = _blend(image, (235.0, 230.0, 215.0), teeth_mask)
    image = _blend(image, (190.0, 95.0, 100.0), tongue_mask)
    image += clip.standard_normal(size=image.shape, dtype=np.float32) * 3.0
    return np.clip(image, 0, 255).astype(np.uint8)


def _blend(image: np.ndarray, colour, mask: np.ndarray) -> np.ndarray:
    """Paint `colour` over `image` with opacity `mask` (T, H, W)."""
    mask = mask[..., None]
    return image * (1.0 - mask) + np.asarray(colour, dtype=np.float32) * mask


# ---- the `contour` model ----------------------------------------------------------------------------------------
# articulation per viseme class: (aperture 0..1, lip width -1 narrow .. 1 wide, protrusion 0..1, upper-lip raise
# 0..1 (upper teeth shown), lower-lip tuck 0..1 (f/v), tongue tip 0..1)
CONTOUR_VISEMES = {
    "rest": (0.05, 0.0, 0.1, 0.05, 0.0, 0.0),
    "pbm": (0.0, 0.0, 0.15, 0.0, 0.0, 0.0),
    "fv": (0.12, 0.05, 0.0, 0.4, 1.0, 0.0),
    "th": (0.3, 0.1, 0.0, 0.5, 0.0, 1.0),
    "td": (0.22, 0.25, 0.0, 0.55, 0.0, 0.45),
    "nl": (0.27, 0.2, 0.0, 0.45, 0.0, 0.75),
    "kg": (0.38, 0.1, 0.05, 0.3, 0.0, 0.1),
    "sh": (0.15, -0.3, 0.9, 0.7, 0.0, 0.0),
    "sz": (0.08, 0.5, 0.0, 0.85, 0.0, 0.0),
    "r": (0.18, -0.35, 0.7, 0.3, 0.0, 0.1),
    "w": (0.1, -0.8, 1.0, 0.0, 0.0, 0.0),
    "aa": (1.0, 0.1, 0.0, 0.4, 0.0, 0.3),
    "e": (0.62, 0.45, 0.0, 0.6, 0.0, 0.3),
    "i": (0.25, 0.85, 0.0, 0.75, 0.0, 0.1),
    "o": (0.66, -0.45, 0.6, 0.2, 0.0, 0.1),
    "u": (0.22, -0.75, 0.95, 0.05, 0.0, 0.0),
    "schwa": (0.42, 0.0, 0.1, 0.3, 0.0, 0.2),
}
CONTOUR_PHONES = {
    "pau": "rest",
    "b": "pbm",
    "p": "pbm",
    "m": "pbm",
    "f": "fv",
    "v": "fv",
    "th": "th",
    "dh": "th",
    "t": "td",
    "d": "td",
    "n": "nl",
    "l": "nl",
    "k": "kg",
    "g": "kg",
    "ng": "kg",
    "hh": "kg",
    "sh": "sh",
    "zh": "sh",
    "ch": "sh",
    "jh": "sh",
    "s": "sz",
    "z": "sz",
    "r": "r",
    "w": "w",
    "y": "i",
    "aa": "aa",
    "ah": "aa",
    "ay": "aa",
    "aw": "aa",
    "ae": "e",
    "eh": "e",
    "ey": "e",
    "iy": "i",
    "ih": "i",
    "ao": "o",
    "oy": "o",
    "ow": "o",
    "uw": "u",
    "uh": "u",
    "ax": "schwa",
    "er": "r",
}
CONTOUR_DIPHTHONGS = {"ay": "i", "aw": "u", "ey": "i", "oy": "i", "ow": "u"}
_CONTROL_RATE = 200  # Hz, the articulators' simulation rate


def contour_trajectory(
    phones: list[tuple[str, float, float]], num_frames: int, time_constant: float = 0.035
) -> np.ndarray:
    """Articulation (num_frames, 6) of the `contour` model at the video frames: each phone's target is held over the
    middle half of the phone (diphthongs glide to a second target), linearly interpolated between, then passed
    forwards and backwards through a critically damped second-order filter with `time_constant` seconds; b/p/m
    force the aperture shut and f/v the lower lip tucked over their middle 60%; each frame averages its 20 ms
    shutter."""
    key_times, key_values, closures, tucks = [], [], [], []
    for phone, start, end in phones:
        first = CONTOUR_VISEMES[CONTOUR_PHONES.get(phone, "schwa")]
        second = CONTOUR_VISEMES[CONTOUR_DIPHTHONGS[phone]] if phone in CONTOUR_DIPHTHONGS else first
        length = end - start
        key_times += [start + 0.25 * length, end - 0.25 * length]
        key_values += [first, second]
        group = CONTOUR_PHONES.get(phone)
        if group in ("pbm", "fv"):
            (closures if group == "pbm" else tucks).append((start + 0.2 * length, end - 0.2 * length))
    duration = max(num_frames / FPS, phones[-1][2] if phones else 0.0)
    times = np.arange(int(np.ceil(duration * _CONTROL_RATE)) + 1) / _CONTROL_RATE
    key_values = np.asarray(key_values, dtype=np.float64)
    signal = np.stack([np.interp(times, key_times, key_values[:, k]) for k in range(6)], axis=1)
    signal = _critically_damped(_critically_damped(signal, time_constant)[::-1], time_constant)[::-1]
    for windows, column, value in ((closures, 0, 0.0), (tucks, 4, 1.0)):
        if windows:
            inside = np.zeros(len(times))
            for lo, hi in windows:
                inside = np.maximum(inside, ((times >= lo) & (times <= hi)).astype(float))
            inside = _critically_damped(_critically_damped(inside[:, None], 0.012)[::-1], 0.012)[::-1, 0]
            inside = np.clip(inside * 1.6, 0, 1)
            signal[:, column] = signal[:, column] * (1 - inside) + value * inside
    shutter = (np.arange(num_frames)[:, None] + np.linspace(0.25, 0.75, 5)[None]) / FPS  # 20 ms around the centre
    frames = np.stack([np.interp(shutter, times, signal[:, k]).mean(axis=1) for k in range(6)], axis=1)
    return frames.astype(np.float32)


def _critically_damped(signal: np.ndarray, time_constant: float) -> np.ndarray:
    """x'' = (target - x) / tau^2 - 2 x' / tau, integrated at the control rate (semi-implicit Euler)."""
    dt = 1.0 / _CONTROL_RATE
    out = np.empty_like(signal, dtype=np.float64)
    position, velocity = signal[0].astype(np.float64), np.zeros(signal.shape[1])
    for index, target in enumerate(signal):
        velocity += dt * ((target - position) / time_constant**2 - 2.0 * velocity / time_constant)
        position = position + dt * velocity
        out[index] = position
    return out


def contour_time_constant(appearance_seed: int) -> float:
    """The speaker's articulation time constant (s): some speakers move their lips faster than others."""
    return float(np.random.default_rng([appearance_seed, 17]).uniform(0.022, 0.045))


def _smooth_noise(rng: np.random.Generator, num_frames: int, cutoff_frames: float, size: int = 1) -> np.ndarray:
    """Slowly varying noise (num_frames, size) in about [-1, 1]: white noise low-passed over `cutoff_frames`."""
    noise = gaussian_filter(rng.standard_normal((num_frames + 20, size)), sigma=(cutoff_frames, 0), mode="wrap")
    return (noise[10 : num_frames + 10] / max(noise.std(), 1e-6)).clip(-2.5, 2.5) / 2.5


def render_contour_mouth(trajectory: np.ndarray, appearance_seed: int, clip_seed: int) -> np.ndarray:
    """Draw the `contour` model's 96x96 frames (T, 96, 96, 3) uint8 from its articulation `trajectory` (T, 6).

    The face (palette, lip shape and size, texture, stubble, lipstick, blur) comes from `appearance_seed`; head
    motion, lighting flicker and sensor noise from `clip_seed`."""
    face = np.random.default_rng([appearance_seed, 23])
    hue_mix = face.uniform(0, 1)
    skin = (1 - hue_mix) * np.array([226.0, 186.0, 160.0]) + hue_mix * np.array([122.0, 84.0, 62.0])
    skin = skin * face.uniform(0.9, 1.1) * face.uniform(0.95, 1.05, size=3)
    if face.uniform() < 0.3:  # lipstick
        lip = np.array([[185.0, 30.0, 50.0], [200.0, 90.0, 120.0], [120.0, 40.0, 70.0], [150.0, 80.0, 60.0]])[
            face.integers(4)
        ]
    else:
        lip = skin * np.array([0.82, 0.58, 0.6]) + np.array([20.0, 0.0, 0.0])
    teeth_colour = np.array([238.0, 232.0, 210.0]) * face.uniform(0.85, 1.0)
    half_width = float(face.uniform(15, 23))
    upper_thickness, lower_thickness = float(face.uniform(2.5, 5.0)), float(face.uniform(4.0, 7.5))
    bow = float(face.uniform(0.4, 1.8))
    max_aperture = float(face.uniform(13, 20))
    centre_x, centre_y = 48.0 + float(face.uniform(-6, 6)), 56.0 + float(face.uniform(-6, 6))
    blur = float(face.uniform(0.3, 1.2))
    stubble = float(face.uniform(0.2, 0.6)) if face.uniform() < 0.35 else 0.0
    texture = gaussian_filter(face.standard_normal((ROI_SIZE * 2, ROI_SIZE * 2)), 1.5) * 18.0
    dots = (face.uniform(size=(ROI_SIZE * 2, ROI_SIZE * 2)) < stubble * 0.25).astype(np.float32)
    light_angle = float(face.uniform(0, 2 * np.pi))

    clip = np.random.default_rng([clip_seed, 29])
    num_frames = len(trajectory)
    roll = 0.09 * _smooth_noise(clip, num_frames, 12)[:, 0]
    zoom = 1.0 + 0.07 * _smooth_noise(clip, num_frames, 15)[:, 0]
    drift = 4.0 * _smooth_noise(clip, num_frames, 10, size=2)
    flicker = 1.0 + 0.04 * _smooth_noise(clip, num_frames, 6)[:, 0]

    trajectory = np.asarray(trajectory, dtype=np.float32)
    aperture, width, protrusion, raise_, tuck, tongue = (trajectory[:, k, None, None] for k in range(6))
    grid_y, grid_x = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32)
    dx = grid_x[None] - (centre_x + drift[:, 0])[:, None, None]
    dy = grid_y[None] - (centre_y + drift[:, 1])[:, None, None]
    cos, sin = np.cos(roll)[:, None, None], np.sin(roll)[:, None, None]
    scale = zoom[:, None, None]
    u = ((cos * dx + sin * dy) / scale).astype(np.float32)
    v = ((-sin * dx + cos * dy) / scale).astype(np.float32)

    outer = half_width * (1.0 + 0.22 * width - 0.25 * protrusion)
    inner = outer * (0.86 - 0.12 * protrusion)
    rel_outer = np.clip(np.abs(u) / outer, 0, 1)
    rel_inner = np.clip(np.abs(u) / inner, 0, 1)
    # the opening's profile: flatter when spread, rounder when protruded
    exponent = 2.0 + 2.0 * np.maximum(width, 0) - 0.6 * protrusion
    profile = np.power(np.clip(1.0 - np.power(rel_inner, exponent), 0, 1), 0.5)
    opening = max_aperture * aperture * profile
    upper_inner = -0.4 * opening - 0.8 * raise_ * profile
    lower_inner = 0.6 * opening - 2.5 * tuck * profile
    thick = 1.0 + 0.6 * protrusion
    upper_lip = upper_thickness * thick * np.sqrt(np.clip(1 - rel_outer**2, 0, 1)) * (
        1.0 + 0.3 * np.exp(-(((rel_outer - 0.3) / 0.18) ** 2))
    ) - bow * np.exp(-((u / (0.1 * outer)) ** 2))
    lower_lip = lower_thickness * thick * (1.0 - 0.35 * tuck) * np.power(np.clip(1 - rel_outer**2, 0, 1), 0.6)
    upper_outer = upper_inner - np.maximum(upper_lip, 0.3)
    lower_outer = lower_inner + lower_lip

    def band(top, bottom, edge=1.0):
        return np.clip(0.5 + (v - top) / edge, 0, 1) * np.clip(0.5 + (bottom - v) / edge, 0, 1)

    side_outer = np.clip((outer + 0.5 - np.abs(u)), 0, 1)
    side_inner = np.clip((inner + 0.5 - np.abs(u)), 0, 1)
    lips = band(upper_outer, lower_outer) * side_outer
    cavity = band(upper_inner, lower_inner) * side_inner * np.clip(opening - 0.3, 0, 1)
    teeth_band = band(upper_inner, upper_inner + 1.5 + 3.5 * raise_ + 1.5 * tuck) * cavity
    gaps = 1.0 - 0.35 * np.clip(np.cos(u * (2 * np.pi / 3.6)) * 3 - 2, 0, 1)
    upper_teeth = teeth_band * np.clip(1.2 - np.abs(u) / (0.8 * inner), 0, 1) * gaps
    lower_teeth = (
        band(lower_inner - 1.0 - 2.0 * np.clip(0.7 - aperture, 0, 1), lower_inner)
        * cavity
        * np.clip(1.0 - np.abs(u) / (0.6 * inner), 0, 1)
        * 0.8
    )
    tongue_top = lower_inner - (0.25 + 0.7 * tongue) * (lower_inner - upper_inner)
    tongue_mask = band(tongue_top, lower_inner + 1) * cavity * np.clip(1.3 - np.abs(u) / (0.55 * inner), 0, 1)

    # skin: texture and stubble fixed to the face (they move with the head), light from one side, nostrils,
    # philtrum, chin crease and a shadow under the lower lip
    tex_y = np.clip((v + ROI_SIZE).astype(int), 0, 2 * ROI_SIZE - 1)
    tex_x = np.clip((u + ROI_SIZE).astype(int), 0, 2 * ROI_SIZE - 1)
    shade = 1.0 + 0.25 * (np.cos(light_angle) * u + np.sin(light_angle) * v) / ROI_SIZE * 2
    nostrils = sum(np.exp(-(((u - side * 0.55 * half_width) / 4.0) ** 2 + ((v + 27.0) / 2.2) ** 2)) for side in (-1, 1))
    philtrum = np.exp(-((u / 2.0) ** 2)) * np.clip((upper_outer - v) / 6.0, 0, 1) * np.clip((v + 24) / 6, 0, 1)
    chin = np.exp(-(((v - lower_outer - 10.0) / 2.5) ** 2)) * np.exp(-((u / (0.8 * half_width)) ** 2))
    under_lip = np.exp(-(((v - lower_outer - 1.5) / 1.5) ** 2)) * side_outer
    skin_value = shade * (1.0 - 0.55 * nostrils - 0.08 * philtrum - 0.12 * chin - 0.18 * under_lip)
    image = skin_value[..., None] * skin.astype(np.float32) + texture[tex_y, tex_x][..., None]
    image = image * (1.0 - 0.5 * dots[tex_y, tex_x][..., None] * (v > lower_outer + 2)[..., None])

    lip_shade = 1.0 - 0.2 * np.clip((upper_inner - v) / np.maximum(upper_outer - upper_inner, -8), 0, 1) * (
        v < upper_inner
    )
    highlight = np.exp(-(((v - (lower_inner + 0.45 * lower_lip)) / 1.2) ** 2)) * np.exp(-((u / (0.4 * outer)) ** 2))
    lip_colour = lip.astype(np.float32) * (shade * lip_shade)[..., None] + (45.0 * highlight)[..., None]
    image = image * (1 - lips[..., None]) + lip_colour * lips[..., None]
    depth = np.clip(1.0 - np.abs(u) / np.maximum(inner, 1), 0, 1)
    cavity_colour = np.array([70.0, 25.0, 25.0], dtype=np.float32) * (1.0 - 0.6 * depth)[..., None]
    image = image * (1 - cavity[..., None]) + cavity_colour * cavity[..., None]
    for mask, colour in (
        (tongue_mask, (200.0, 110.0, 115.0)),
        (lower_teeth, teeth_colour * 0.9),
        (upper_teeth, teeth_colour),
    ):
        image = image * (1 - mask[..., None]) + np.asarray(colour, dtype=np.float32) * mask[..., None]

    image = image * flicker[:, None, None, None]
    image = gaussian_filter(image, sigma=(0, blur, blur, 0))
    image += clip.standard_normal(size=image.shape).astype(np.float32) * float(clip.uniform(1.5, 5.0))
    return np.clip(image, 0, 255).astype(np.uint8)


def mouth_frames(
    model: str, phones: list[tuple[str, float, float]], num_frames: int, appearance_seed: int, clip_seed: int
) -> np.ndarray:
    """The clip's mouth video (num_frames, 96, 96, 3) uint8 drawn by mouth model `model` from its timed phones."""
    if model == "ellipse":
        return render_mouth(mouth_trajectory(phones, num_frames), appearance_seed, clip_seed=clip_seed)
    if model == "contour":
        trajectory = contour_trajectory(phones, num_frames, contour_time_constant(appearance_seed))
        return render_contour_mouth(trajectory, appearance_seed, clip_seed=clip_seed)
    raise ValueError(f"unknown mouth model {model!r}; choose from {', '.join(MOUTH_MODELS)}.")
