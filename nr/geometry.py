"""Cone-beam and parallel-beam CT geometry with TIGRE's conventions.

Every convention here is TIGRE's (Python API, v2.3 - v3.1); `docs/geometry.md`
states them with the TIGRE source lines they come from. In short:

* World axes (x, y, z) in mm; the rotation axis is z. Volumes are arrays
  indexed (z, y, x); voxel (iz, iy, ix) has its centre at
  ``-s_voxel/2 + (i + 0.5) * d_voxel + off_origin`` on each axis.
* At angle 0 the source sits at (+dso, 0, 0) and the detector plane at
  x = -(dsd - dso). A view at angle a rotates source and detector by a
  counter-clockwise rotation about +z (x towards y).
* Projections are arrays indexed (angle, v, u). Before rotation, detector
  pixel (v, u) has its centre at y = (u - n_u/2 + 0.5) d_u + off_u and
  z = (v - n_v/2 + 0.5) d_v + off_v: u grows with +y, v grows with +z
  (row 0 is the bottom row; TIGRE's Siddon kernel flips the row index).
* Parallel mode: rays run along the source-to-detector direction of the cone
  geometry (-x at angle 0) through every detector pixel.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("cone", "parallel")
# Slicing axis name -> permutation of a (Z, Y, X) volume that puts that axis first.
SLICE_AXES = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (2, 0, 1)}


def largest_slice_side(shape: Sequence[int], axes: Sequence[str]) -> int:
    """Largest side (voxels) of the slices of a (Z, Y, X) `shape` cut along `axes`."""
    return max(int(shape[i]) for axis in axes for i in SLICE_AXES[axis][1:])


def _vector(name: str, value: Any, length: int, dtype: type = float) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected {length} numbers, got {value!r}") from error
    if array.ndim == 0:
        array = np.full(length, float(array))
    if array.shape != (length,):
        raise ValueError(f"{name}: expected {length} values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: values must be finite, got {array.tolist()}")
    if dtype is int:
        if not np.all(array == np.round(array)):
            raise ValueError(f"{name}: expected integers, got {array.tolist()}")
        return array.astype(np.int64)
    return array


def _complete(name: str, n: np.ndarray, d: np.ndarray | None, s: np.ndarray | None) -> tuple:
    """Fill the missing one of (d, s) from n and check n * d == s (TIGRE's check_geo)."""
    if d is None and s is None:
        raise ValueError(f"d_{name} / s_{name}: give at least one of them")
    if d is None:
        d = s / n
    if s is None:
        s = n * d
    if np.any(d <= 0):
        raise ValueError(f"d_{name}: sizes must be positive, got {d.tolist()}")
    if not np.allclose(n * d, s, rtol=1e-6, atol=0.0):
        raise ValueError(
            f"n_{name} * d_{name} must equal s_{name}: {n.tolist()} * {d.tolist()} != {s.tolist()}"
        )
    return d, s


@dataclass(eq=False)
class ConeBeamGeometry:
    """A circular CT scan in TIGRE's vocabulary (snake_case).

    Lengths are in mm (any unit works if used consistently; R2-Gaussian's
    synthetic cases use a unitless scene of side 2). Attenuation values are
    then per mm and projections are dimensionless line integrals.

    Attributes:
        n_voxel: (3,) int - voxels along (z, y, x).
        s_voxel: (3,) float - total volume size along (z, y, x), mm.
        d_voxel: (3,) float - voxel size along (z, y, x), mm. Give d_voxel or
            s_voxel (or both, then n_voxel * d_voxel must equal s_voxel).
        n_detector: (2,) int - detector pixels along (v, u).
        s_detector: (2,) float - detector size along (v, u), mm.
        d_detector: (2,) float - pixel size along (v, u), mm.
        angles: (N,) float - gantry angles in radians (rotation about +z).
        dso: distance source-origin, mm (cone mode; also the position of the
            virtual source plane in parallel mode).
        dsd: distance source-detector, mm; must exceed dso.
        off_origin: (3,) float - offset of the volume centre from the
            rotation centre along (z, y, x), mm.
        off_detector: (2,) float - offset of the detector centre along (v, u),
            mm (positive v moves the detector up, +z; positive u towards +y).
        rot_detector: (3,) float - detector roll, pitch, yaw in radians about
            its centre (TIGRE's rotDetector).
        cor: centre-of-rotation shift, mm, applied along the rotated y axis
            (TIGRE's COR).
        mode: "cone" or "parallel".
        accuracy: samples per voxel of interpolating projectors (TIGRE's
            default 0.5); kept for round trips with TIGRE/R2-Gaussian files.
    """

    n_voxel: Sequence[int]
    n_detector: Sequence[int]
    angles: Sequence[float]
    dso: float = 1000.0
    dsd: float = 1536.0
    s_voxel: Sequence[float] | None = None
    d_voxel: Sequence[float] | None = None
    s_detector: Sequence[float] | None = None
    d_detector: Sequence[float] | None = None
    off_origin: Sequence[float] = (0.0, 0.0, 0.0)
    off_detector: Sequence[float] = (0.0, 0.0)
    rot_detector: Sequence[float] = (0.0, 0.0, 0.0)
    cor: float = 0.0
    mode: str = "cone"
    accuracy: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        self.n_voxel = _vector("n_voxel", self.n_voxel, 3, int)
        self.n_detector = _vector("n_detector", self.n_detector, 2, int)
        if np.any(self.n_voxel < 1):
            raise ValueError(f"n_voxel: expected positive counts, got {self.n_voxel.tolist()}")
        if np.any(self.n_detector < 1):
            raise ValueError(
                f"n_detector: expected positive counts, got {self.n_detector.tolist()}"
            )
        d_voxel = None if self.d_voxel is None else _vector("d_voxel", self.d_voxel, 3)
        s_voxel = None if self.s_voxel is None else _vector("s_voxel", self.s_voxel, 3)
        self.d_voxel, self.s_voxel = _complete("voxel", self.n_voxel, d_voxel, s_voxel)
        d_det = None if self.d_detector is None else _vector("d_detector", self.d_detector, 2)
        s_det = None if self.s_detector is None else _vector("s_detector", self.s_detector, 2)
        self.d_detector, self.s_detector = _complete("detector", self.n_detector, d_det, s_det)
        self.off_origin = _vector("off_origin", self.off_origin, 3)
        self.off_detector = _vector("off_detector", self.off_detector, 2)
        self.rot_detector = _vector("rot_detector", self.rot_detector, 3)
        angles = np.asarray(self.angles, dtype=np.float64)
        if angles.ndim != 1 or angles.size == 0:
            raise ValueError(
                f"angles: expected a non-empty 1-D array of radians, got shape {angles.shape}"
                " (TIGRE's (N, 3) Euler angles are not supported)"
            )
        if not np.all(np.isfinite(angles)):
            raise ValueError("angles: values must be finite")
        self.angles = angles
        for name in ("dso", "dsd", "cor", "accuracy"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(
                value
            ):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.dso <= 0:
            raise ValueError(f"dso: expected a positive distance, got {self.dso}")
        if self.dsd <= self.dso:
            raise ValueError(f"dsd: must exceed dso ({self.dso}), got {self.dsd}")
        if self.accuracy <= 0:
            raise ValueError(f"accuracy: expected a positive number, got {self.accuracy}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConeBeamGeometry):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    # ------------------------------------------------------------------ sizes
    @property
    def n_views(self) -> int:
        return int(self.angles.size)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) shape of volumes on this geometry."""
        return tuple(int(n) for n in self.n_voxel)

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        """(N, V, U) shape of the projections of this geometry."""
        return (self.n_views, int(self.n_detector[0]), int(self.n_detector[1]))

    # ---------------------------------------------------------------- derived
    def with_angles(self, angles: Sequence[float]) -> ConeBeamGeometry:
        """A copy of this geometry with other view angles (radians)."""
        return dataclasses.replace(self, angles=np.asarray(angles, dtype=np.float64))

    def subset(self, view_ids: Sequence[int]) -> ConeBeamGeometry:
        """A copy restricted to the views `view_ids` (indices into `angles`)."""
        ids = np.asarray(view_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= self.n_views:
            raise ValueError(f"view_ids: expected indices in [0, {self.n_views}), got {ids}")
        return self.with_angles(self.angles[ids])

    def with_volume(
        self, n_voxel: Sequence[int], s_voxel: Sequence[float] | None = None
    ) -> ConeBeamGeometry:
        """A copy with another voxel grid over the same (or a given) physical box."""
        s = self.s_voxel if s_voxel is None else s_voxel
        return dataclasses.replace(self, n_voxel=n_voxel, s_voxel=s, d_voxel=None)

    def voxel_origin_xyz(self) -> np.ndarray:
        """(3,) world (x, y, z) centre of voxel index (0, 0, 0), mm."""
        zyx = -self.s_voxel / 2 + self.d_voxel / 2 + self.off_origin
        return zyx[::-1].copy()

    def voxel_size_xyz(self) -> np.ndarray:
        """(3,) voxel size along (x, y, z), mm."""
        return self.d_voxel[::-1].copy()

    def voxel_centres(self, axis: int) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along array axis 0 (z), 1 (y) or 2 (x)."""
        n = int(self.n_voxel[axis])
        return (
            -self.s_voxel[axis] / 2
            + (np.arange(n) + 0.5) * self.d_voxel[axis]
            + self.off_origin[axis]
        )

    def view_vectors(self) -> np.ndarray:
        """Per-view ray geometry in world coordinates (x, y, z), mm.

        Returns:
            (N, 4, 3) float64: for each view ``[src, det, du, dv]`` where
            ``det`` is the centre of detector pixel (v=0, u=0), ``du`` and
            ``dv`` the steps to the next pixel along u and v, and ``src`` the
            source position (cone) or the source-to-detector vector of length
            dsd (parallel). The ray through pixel (v, u) is, with
            ``p = det + u du + v dv``: cone, from ``src`` to ``p``; parallel,
            from ``p - src`` to ``p``.
        """
        n_v, n_u = (float(n) for n in self.n_detector)
        d_v, d_u = self.d_detector
        off_v, off_u = self.off_detector
        # Detector frame before rotation, centred on the detector (TIGRE's rollPitchYaw
        # acts there), then moved to x = -(dsd - dso) and shifted by the offsets.
        det = np.array([0.0, (0 - n_u / 2 + 0.5) * d_u, (0 - n_v / 2 + 0.5) * d_v])
        du = np.array([0.0, d_u, 0.0])
        dv = np.array([0.0, 0.0, d_v])
        roll_pitch_yaw = _roll_pitch_yaw(*self.rot_detector)
        det, du, dv = roll_pitch_yaw @ det, roll_pitch_yaw @ du, roll_pitch_yaw @ dv
        det = det + np.array([-(self.dsd - self.dso), off_u, off_v])
        src = np.array([self.dso, 0.0, 0.0])
        if self.mode == "parallel":
            src = np.array([-self.dsd, 0.0, 0.0])
        vectors = np.empty((self.n_views, 4, 3))
        for i, angle in enumerate(self.angles):
            c, s = math.cos(angle), math.sin(angle)
            rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            # TIGRE's COR moves source and detector along the rotated y axis.
            cor_shift = self.cor * np.array([-s, c, 0.0])
            vectors[i, 0] = rot @ src + (cor_shift if self.mode == "cone" else 0.0)
            vectors[i, 1] = rot @ det + cor_shift
            vectors[i, 2] = rot @ du
            vectors[i, 3] = rot @ dv
        return vectors

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists of floats); inverse of `from_dict`."""
        return {
            "mode": self.mode,
            "dso": self.dso,
            "dsd": self.dsd,
            "n_voxel": self.n_voxel.tolist(),
            "d_voxel": self.d_voxel.tolist(),
            "s_voxel": self.s_voxel.tolist(),
            "n_detector": self.n_detector.tolist(),
            "d_detector": self.d_detector.tolist(),
            "s_detector": self.s_detector.tolist(),
            "off_origin": self.off_origin.tolist(),
            "off_detector": self.off_detector.tolist(),
            "rot_detector": self.rot_detector.tolist(),
            "cor": self.cor,
            "accuracy": self.accuracy,
            "angles": self.angles.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConeBeamGeometry:
        """Build from `to_dict` output; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"data: unknown geometry keys {sorted(unknown)}")
        missing = {"n_voxel", "n_detector", "angles"} - set(data)
        if missing:
            raise ValueError(f"data: missing geometry keys {sorted(missing)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ConeBeamGeometry:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_tigre(cls, geo: Any, angles: Sequence[float] | None = None) -> ConeBeamGeometry:
        """Convert a TIGRE geometry object (or any object/dict with TIGRE's camelCase fields).

        Args:
            geo: has DSD, DSO, nVoxel, sVoxel/dVoxel, nDetector, sDetector/dDetector
                and optionally offOrigin, offDetector, rotDetector, COR, mode, accuracy
                and angles. Per-angle DSD/DSO/offsets are not supported.
            angles: (N,) radians; taken from ``geo.angles`` when omitted.
        """

        def get(name: str, default: Any = None) -> Any:
            if isinstance(geo, Mapping):
                return geo.get(name, default)
            return getattr(geo, name, default)

        for name in ("DSD", "DSO", "nVoxel", "nDetector"):
            if get(name) is None:
                raise ValueError(f"geo: TIGRE geometry lacks the field {name!r}")
        if angles is None:
            angles = get("angles")
        if angles is None:
            raise ValueError("angles: not given and the TIGRE geometry has no 'angles' field")
        for name in ("DSD", "DSO", "COR"):
            value = get(name)
            if value is not None and np.size(value) != 1:
                raise ValueError(f"geo.{name}: per-angle values are not supported")
        mode = get("mode", "cone") or "cone"
        return cls(
            mode=str(mode),
            dso=float(np.asarray(get("DSO")).reshape(())),
            dsd=float(np.asarray(get("DSD")).reshape(())),
            n_voxel=np.asarray(get("nVoxel")).reshape(-1),
            s_voxel=None if get("sVoxel") is None else np.asarray(get("sVoxel")).reshape(-1),
            d_voxel=None if get("dVoxel") is None else np.asarray(get("dVoxel")).reshape(-1),
            n_detector=np.asarray(get("nDetector")).reshape(-1),
            s_detector=None
            if get("sDetector") is None
            else np.asarray(get("sDetector")).reshape(-1),
            d_detector=None
            if get("dDetector") is None
            else np.asarray(get("dDetector")).reshape(-1),
            off_origin=np.asarray(get("offOrigin", (0, 0, 0))).reshape(-1),
            off_detector=np.asarray(get("offDetector", (0, 0))).reshape(-1),
            rot_detector=np.asarray(get("rotDetector", (0, 0, 0))).reshape(-1),
            cor=float(np.asarray(get("COR", 0.0)).reshape(())),
            accuracy=float(get("accuracy", 0.5)),
            angles=np.asarray(angles, dtype=np.float64).reshape(-1),
        )

    @classmethod
    def default(
        cls,
        n_voxel: int = 128,
        n_views: int = 50,
        n_detector: int | None = None,
        mode: str = "cone",
        total_angle: float = 2 * math.pi,
    ) -> ConeBeamGeometry:
        """The default scan: a 256 mm cube of `n_voxel`^3 voxels (see `for_volume`)."""
        return cls.for_volume(
            (n_voxel,) * 3, (256.0 / n_voxel,) * 3, n_views, n_detector, mode, total_angle
        )

    @classmethod
    def for_volume(
        cls,
        n_voxel: Sequence[int],
        d_voxel: Sequence[float],
        n_views: int,
        n_detector: int | None = None,
        mode: str = "cone",
        total_angle: float = 2 * math.pi,
    ) -> ConeBeamGeometry:
        """A circular scan of a volume, shaped like R2-Gaussian's synthetic cases.

        With L the longest side of the volume box: DSO = 1000/256 L and
        DSD = 1400/256 L (R2-Gaussian's DSO:DSD of 5:7; 1000 / 1400 mm for a
        256 mm box), a square detector of side 2 L (it covers the inscribed
        cylinder's magnified shadow) with `n_detector`^2 pixels (default: the
        largest voxel count), `n_views` angles ``linspace(0, total, n+1)[:-1]``.
        """
        n = _vector("n_voxel", n_voxel, 3, int)
        d = _vector("d_voxel", d_voxel, 3)
        if not isinstance(n_views, (int, np.integer)) or n_views < 1:
            raise ValueError(f"n_views: expected a positive int, got {n_views!r}")
        side = float(np.max(n * d))
        n_det = int(n.max()) if n_detector is None else int(n_detector)
        return cls(
            mode=mode,
            dso=side * 1000.0 / 256.0,
            dsd=side * 1400.0 / 256.0,
            n_voxel=n,
            d_voxel=d,
            n_detector=(n_det, n_det),
            s_detector=(2 * side, 2 * side),
            angles=np.linspace(0.0, total_angle, int(n_views) + 1)[:-1],
        )


def _roll_pitch_yaw(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """TIGRE's rollPitchYaw rotation (Z(roll) Y(pitch) X(yaw)) of the detector frame."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array(
        [
            [cr * cp, cr * sp * sy - sr * cy, cr * sp * cy + sr * sy],
            [sr * cp, sr * sp * sy + cr * cy, sr * sp * cy - cr * sy],
            [-sp, cp * sy, cp * cy],
        ]
    )
