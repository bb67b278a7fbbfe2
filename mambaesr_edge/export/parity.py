"""Parity report: the exported graphs, run in ONNX Runtime (CPU), against the PyTorch model they came from.

Why: Mamba exports that "succeed" can still be wrong (washed-out images elsewhere); ours prove themselves at
export time. The PyTorch reference is the fp32 model with the chunked scan (the function that was traced;
tests/test_scan.py holds it to the sequential definition).

Cases (each on a batch of the export's shape):
- ``random``: uniform noise in [0, 1] (every code path, no image prior);
- ``image``: tiles of the shipped sample image, bicubic-downscaled by the model's scale (MATLAB-exact), each batch
  item flipped/rotated differently, so a graph that mixes up batch items fails; also reports PSNR (Y, border =
  scale) of each output against the HR tile, and the fp16 drop in dB;
- ``random-other-size`` (dynamic exports only): a size and batch different from the traced ones.

Thresholds (`ParityThresholds`), on unclamped float outputs with PSNR peak 1.0:
- fp32 graph vs PyTorch: max abs error <= 1e-4 and PSNR >= 60 dB (measured: ~1e-6 / >100 dB; fp32 reordering only);
- fp16 graph vs PyTorch fp32: PSNR >= 40 dB (fp16 weights/activations carry ~3 decimal digits: an error of
  1/100 of a grey level is ~50 dB; 40 dB is the point where a visible difference may start), no NaN/inf.
Any non-finite output fails its case.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DependencyMissingError, MambaESRError
from ..model import MambaSR

log = logging.getLogger(__name__)


class ParityError(MambaESRError):
    """The exported graph does not reproduce the PyTorch model; the export is refused (exit code 1)."""

    def __init__(self, message: str, hint: str = "", report: "ParityReport | None" = None) -> None:
        super().__init__(message, hint)
        self.report = report


@dataclass(frozen=True)
class ParityThresholds:
    fp32_max_abs: float = 1e-4
    fp32_min_psnr_db: float = 60.0
    fp16_min_psnr_db: float = 40.0


@dataclass(frozen=True)
class ParityCase:
    name: str  # "random", "image", "random-other-size"
    variant: str  # "fp32" or "fp16": which graph ran in ONNX Runtime
    shape: tuple[int, ...]  # input shape
    max_abs: float
    psnr_db: float  # vs the PyTorch fp32 output, peak 1.0; inf when identical
    finite: bool
    passed: bool
    reason: str  # "" when passed
    psnr_vs_hr_db: float | None = None  # image case: ONNX output vs the HR tile (Y channel, border = scale)
    torch_psnr_vs_hr_db: float | None = None  # image case: PyTorch output vs the HR tile

    def to_dict(self) -> dict[str, object]:
        raw = asdict(self)
        raw["shape"] = list(self.shape)
        for key in ("max_abs", "psnr_db", "psnr_vs_hr_db", "torch_psnr_vs_hr_db"):
            if raw[key] is not None and not math.isfinite(raw[key]):
                raw[key] = None  # JSON has no inf: null means identical (PSNR) or non-finite outputs (see finite)
        return raw


@dataclass(frozen=True)
class ParityReport:
    cases: tuple[ParityCase, ...]
    thresholds: ParityThresholds
    reference: str  # what the ONNX outputs were compared with

    @property
    def passed(self) -> bool:
        return all(case.passed for case in self.cases)

    def failures(self) -> list[str]:
        return [f"{c.variant} {c.name} {list(c.shape)}: {c.reason}" for c in self.cases if not c.passed]

    def fp16_drop_db(self) -> float | None:
        """PSNR-vs-HR drop of the fp16 graph against the fp32 graph on the real image tile (dB), when both ran."""
        by_variant = {c.variant: c for c in self.cases if c.name == "image" and c.psnr_vs_hr_db is not None}
        if "fp32" in by_variant and "fp16" in by_variant:
            return by_variant["fp32"].psnr_vs_hr_db - by_variant["fp16"].psnr_vs_hr_db
        return None

    def to_dict(self) -> dict[str, object]:
        drop = self.fp16_drop_db()
        return {
            "passed": self.passed,
            "reference": self.reference,
            "thresholds": asdict(self.thresholds),
            "fp16_psnr_drop_vs_hr_db": drop,
            "cases": [case.to_dict() for case in self.cases],
            "failures": self.failures(),
        }


def ort_session(path: str | Path):
    """An ONNX Runtime CPU session (default graph optimisations, as the runtime uses)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyMissingError(
            "the parity check needs onnxruntime, which is not installed", hint="pip install 'mambaesr-edge[export]'"
        ) from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_batch(shape: tuple[int, int, int, int], seed: int = 1234) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def image_batch(shape: tuple[int, int, int, int], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR batch float32 (N,3,h,w) in [0,1], HR batch uint8 (N, s*h, s*w, 3)) from the shipped sample image.

    The LR image is the MATLAB-bicubic downscale of the sample; a centre tile is taken (the image is extended by
    symmetric padding when the tile is larger); batch item i is flipped/rotated by the i-th of 4 transforms.
    """
    from ..images import load_image
    from ..metrics import bicubic_downscale_uint8
    from ..resources import sample_image_path

    n, _, h, w = shape
    hr = load_image(sample_image_path())
    hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
    lr = bicubic_downscale_uint8(hr, scale)
    lr_tile, hr_tile = _centre_tile(lr, h, w), _centre_tile(hr, h * scale, w * scale)
    lrs, hrs = [], []
    for i in range(n):
        lrs.append(_transform(lr_tile, i % 4))
        hrs.append(_transform(hr_tile, i % 4))
    lr_batch = np.stack(lrs).astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (N, 3, h, w)
    return np.ascontiguousarray(lr_batch), np.stack(hrs)


def _centre_tile(img: np.ndarray, th: int, tw: int) -> np.ndarray:
    h, w = img.shape[:2]
    if th > h or tw > w:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="symmetric")
        h, w = img.shape[:2]
    top, left = (h - th) // 2, (w - tw) // 2
    return img[top : top + th, left : left + tw]


def _transform(img: np.ndarray, k: int) -> np.ndarray:
    """0: identity, 1: left-right flip, 2: up-down flip, 3: both (a 180-degree rotation); shape is kept."""
    if k in (1, 3):
        img = img[:, ::-1]
    if k in (2, 3):
        img = img[::-1]
    return np.ascontiguousarray(img)


def compare(candidate: np.ndarray, reference: np.ndarray) -> tuple[float, float, bool]:
    """(max abs error, PSNR in dB with peak 1.0, all finite) of two float arrays of one shape."""
    if candidate.shape != reference.shape:
        raise ParityError(f"output shape {candidate.shape} != PyTorch's {reference.shape}", hint="the graph is wrong: report this bug")
    finite = bool(np.isfinite(candidate).all())
    diff = candidate.astype(np.float64) - reference.astype(np.float64)
    if not finite:
        return math.inf, -math.inf, False
    mse = float(np.mean(diff**2))
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
    return float(np.max(np.abs(diff))), psnr, True


def _psnr_vs_hr(out: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Mean Y-PSNR (border = scale) of a float (N,3,H,W) output against uint8 (N,H,W,3) HR tiles."""
    from ..metrics import psnr

    sr = np.clip(np.rint(out.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
    values = [psnr(s, h, crop_border=scale) for s, h in zip(sr, hr, strict=True)]
    return float(np.mean([v for v in values if math.isfinite(v)] or [math.inf]))


def _judge(variant: str, max_abs: float, psnr_db: float, finite: bool, t: ParityThresholds) -> str:
    if not finite:
        return "non-finite outputs (NaN/inf)"
    if variant == "fp32":
        problems = []
        if max_abs > t.fp32_max_abs:
            problems.append(f"max abs error {max_abs:.3g} > {t.fp32_max_abs:g}")
        if psnr_db < t.fp32_min_psnr_db:
            problems.append(f"PSNR {psnr_db:.1f} dB < {t.fp32_min_psnr_db:g} dB")
        return "; ".join(problems)
    return "" if psnr_db >= t.fp16_min_psnr_db else f"PSNR {psnr_db:.1f} dB < {t.fp16_min_psnr_db:g} dB"


def run_parity(
    model: MambaSR,
    graphs: dict[str, Path],
    input_shape: tuple[int, int, int, int],
    *,
    other_shape: tuple[int, int, int, int] | None = None,
    thresholds: ParityThresholds = ParityThresholds(),
) -> ParityReport:
    """Run every graph ({"fp32": path, "fp16": path}) on each case and compare with the PyTorch fp32 model.

    `other_shape`: also run a random batch of that shape (for dynamic exports: a size other than the traced one).
    """
    scale = model.scale
    inputs: list[tuple[str, np.ndarray, np.ndarray | None]] = [("random", random_batch(input_shape), None)]
    lr, hr = image_batch(input_shape, scale)
    inputs.append(("image", lr, hr))
    if other_shape is not None:
        inputs.append(("random-other-size", random_batch(other_shape, seed=99), None))
    sessions = {variant: ort_session(path) for variant, path in graphs.items()}
    cases = []
    model = model.eval()
    for name, batch, hr_batch in inputs:
        with torch.no_grad():
            reference = model(torch.from_numpy(batch), scan_impl="chunked").numpy()
        torch_vs_hr = _psnr_vs_hr(reference, hr_batch, scale) if hr_batch is not None else None
        for variant, session in sessions.items():
            out = session.run(None, {session.get_inputs()[0].name: batch})[0]
            max_abs, psnr_db, finite = compare(out, reference)
            reason = _judge(variant, max_abs, psnr_db, finite, thresholds)
            vs_hr = _psnr_vs_hr(out, hr_batch, scale) if hr_batch is not None and finite else None
            cases.append(
                ParityCase(name, variant, tuple(batch.shape), max_abs, psnr_db, finite, not reason, reason, vs_hr, torch_vs_hr)
            )
            log.info("parity %s %s: max abs %.3g, PSNR %.1f dB%s", variant, name, max_abs, psnr_db, f" FAIL: {reason}" if reason else "")
    return ParityReport(tuple(cases), thresholds, "PyTorch fp32, chunked scan")
