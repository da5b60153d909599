"""Input-transformation defenses: the defended model sees a transformed input.

Each declares how white-box attacks cross it (:class:`~bastion.core.defense.AdaptivePath`),
following Athalye, Carlini & Wagner (2018, "Obfuscated Gradients Give a False Sense of Security",
arXiv:1802.00420): non-differentiable steps (rounding, the median, JPEG) by BPDA — straight-through,
or the gradient of a differentiable approximation — and randomised ones (noise) by EOT.

- ``bit-depth``: colour-depth reduction, the squeezer of feature squeezing (Xu, Evans & Qi 2018,
  arXiv:1704.01155); BPDA straight-through.
- ``median-smoothing``: a median filter over a square window (Xu et al. 2018); BPDA through the
  mean filter of the same window.
- ``spatial-smoothing``: a Gaussian blur; differentiable, its exact gradient.
- ``jpeg``: JPEG compression and decompression with Pillow (Dziugaite et al. 2016, arXiv:1608.00853;
  Guo et al. 2018, arXiv:1711.00117); BPDA straight-through.
- ``rescale``: down-sampling then up-sampling back (bilinear; Xie et al. 2018, arXiv:1711.01991 in a
  deterministic form); differentiable.
- ``inference-noise``: Gaussian noise added at inference, clipped to [0, 1]; EOT.
- ``transform-chain``: deterministic steps in order (e.g. rescale then JPEG then bit depth); BPDA
  through the composition of each step's own surrogate.

Every defense expects inputs in [0, 1]; the image filters expect (C, H, W) images, JPEG with 1 or
3 channels. Anything else is refused when the defense is put on a target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator

from bastion.core.defense import AdaptivePath, TargetDefense
from bastion.core.params import Params
from bastion.core.spec import InputSpec
from bastion.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch


# --- what the defenses check ---------------------------------------------------------------------
def require_unit_range(defense: TargetDefense, spec: InputSpec) -> None:
    lo, hi = spec.bounds_arrays()
    if float(lo.min()) < 0.0 or float(hi.max()) > 1.0:
        raise UsageError(f"defense '{defense.label}' expects inputs in [0, 1]; the target's inputs range over "
                         f"[{float(lo.min()):g}, {float(hi.max()):g}]",
                         hint="scale inputs to [0, 1] (input bounds 0 and 1) before this defense")


def require_image(defense: TargetDefense, spec: InputSpec, channels: tuple[int, ...] | None = None) -> None:
    require_unit_range(defense, spec)
    shape = tuple(spec.shape)
    ok = spec.kind == "image" and len(shape) == 3 and (channels is None or shape[0] in channels)
    if not ok:
        allowed = "any number of" if channels is None else " or ".join(map(str, channels))
        raise UsageError(f"defense '{defense.label}' transforms images laid out (channels, height, width) with "
                         f"{allowed} channels; the target's inputs are {spec.kind} of shape {shape}",
                         hint="declare the target's input as an image of shape [C, H, W] (channels first)")


def check_unit_batch(defense: TargetDefense, x: np.ndarray) -> np.ndarray:
    """``x`` as float32, refused when a value lies outside [0, 1] (the defense would be meaningless)."""
    x = np.asarray(x, np.float32)
    if x.size and (not np.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise DataError(f"defense '{defense.label}' got inputs outside [0, 1] (min {np.nanmin(x):g}, max "
                        f"{np.nanmax(x):g})", hint="scale inputs to [0, 1]")
    return x


def _torch() -> Any:
    from bastion.core.extras import missing_extra

    try:
        import torch
    except ImportError as exc:
        raise missing_extra(exc) or exc from None
    return torch


# --- bit depth -----------------------------------------------------------------------------------
class BitDepthParams(Params):
    bits: int = Field(4, ge=1, le=16, description="Bits per value kept: 2**bits levels in [0, 1].")


class BitDepthReduction(TargetDefense):
    """Colour-depth reduction to ``2**bits`` levels (feature squeezing, Xu, Evans & Qi 2018,
    arXiv:1704.01155). Rounding has no useful gradient: BPDA straight-through."""

    name = "bit-depth"
    Params = BitDepthParams

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="identity")

    def check_input(self, spec: InputSpec) -> None:
        require_unit_range(self, spec)

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        levels = 2 ** self.params.bits - 1
        return (np.round(check_unit_batch(self, x) * levels) / levels).astype(np.float32)


# --- median and Gaussian smoothing ---------------------------------------------------------------
class WindowParams(Params):
    window: int = Field(3, ge=2, le=15, description="Side of the square window (pixels).")


def _windows(x: np.ndarray, k: int) -> np.ndarray:
    """Every ``k``×``k`` window around each pixel of (N, C, H, W) images (reflect padding), as
    (N, C, H, W, k, k); the window is centred (one pixel more above and left for even ``k``)."""
    a, b = k // 2, (k - 1) // 2
    padded = np.pad(x, ((0, 0), (0, 0), (a, b), (a, b)), mode="reflect" if min(x.shape[2:]) > a else "edge")
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))


class MedianSmoothing(TargetDefense):
    """A median filter over each ``window``×``window`` neighbourhood, per channel (Xu et al. 2018,
    arXiv:1704.01155). BPDA through the mean filter of the same window (a differentiable
    approximation of the median)."""

    name = "median-smoothing"
    Params = WindowParams

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="approximation")

    def check_input(self, spec: InputSpec) -> None:
        require_image(self, spec)

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = check_unit_batch(self, x)
        return np.median(_windows(x, self.params.window), axis=(-2, -1)).astype(np.float32)

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        return _filter(x, np.full((self.params.window,) * 2, 1.0 / self.params.window ** 2))


class SmoothingParams(Params):
    sigma: float = Field(1.0, gt=0, le=10, description="Standard deviation of the Gaussian kernel (pixels).")
    window: int = Field(3, ge=2, le=15, description="Side of the square kernel (pixels).")


def gaussian_kernel(sigma: float, k: int) -> np.ndarray:
    t = np.arange(k, dtype=np.float64) - (k - 1) / 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def _filter(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Depthwise convolution of (N, C, H, W) images with ``kernel``, padded as :func:`_windows`."""
    torch = _torch()
    k = kernel.shape[0]
    a, b = k // 2, (k - 1) // 2
    mode = "reflect" if min(x.shape[2:]) > a else "replicate"
    padded = torch.nn.functional.pad(x, (a, b, a, b), mode=mode)
    c = int(x.shape[1])
    w = torch.as_tensor(kernel, dtype=x.dtype, device=x.device).expand(c, 1, k, k)
    return torch.nn.functional.conv2d(padded, w, groups=c)


class SpatialSmoothing(TargetDefense):
    """A Gaussian blur of each channel: differentiable, so attacks take its exact gradient."""

    name = "spatial-smoothing"
    Params = SmoothingParams

    def kernel(self) -> np.ndarray:
        return gaussian_kernel(self.params.sigma, self.params.window)

    def check_input(self, spec: InputSpec) -> None:
        require_image(self, spec)

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = check_unit_batch(self, x)
        out = np.einsum("nchwij,ij->nchw", _windows(x, self.params.window), self.kernel())
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def preprocess_torch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return _filter(x, self.kernel()).clamp(0.0, 1.0)


# --- JPEG ----------------------------------------------------------------------------------------
class JpegParams(Params):
    quality: int = Field(75, ge=1, le=95, description="JPEG quality (Pillow's scale, 1-95).")


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Each (C, H, W) image of ``x`` (C = 1 or 3, values in [0, 1]) JPEG-encoded at ``quality`` and
    decoded, in memory, with Pillow."""
    import io

    try:
        from PIL import Image
    except ImportError as exc:
        from bastion.core.extras import missing_extra

        raise missing_extra(exc) or exc from None
    u8 = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    out = np.empty(x.shape, np.float32)
    for i, img in enumerate(u8):
        mode = "L" if img.shape[0] == 1 else "RGB"
        buf = io.BytesIO()
        Image.fromarray(img[0] if mode == "L" else img.transpose(1, 2, 0), mode=mode).save(buf, "JPEG",
                                                                                          quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), np.float32) / 255.0
        out[i] = dec[None] if mode == "L" else dec.transpose(2, 0, 1)
    return out


class JpegCompression(TargetDefense):
    """JPEG compression at ``quality`` (Dziugaite et al. 2016, arXiv:1608.00853; Guo et al. 2018,
    arXiv:1711.00117), with Pillow (the ``images`` extra). BPDA straight-through, the rule Athalye et
    al. (2018) used to break it."""

    name = "jpeg"
    Params = JpegParams

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="identity")

    def check_input(self, spec: InputSpec) -> None:
        require_image(self, spec, channels=(1, 3))

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return jpeg(check_unit_batch(self, x), self.params.quality)


# --- rescaling -----------------------------------------------------------------------------------
class RescaleParams(Params):
    scale: float = Field(0.5, gt=0, lt=1, description="Size of the intermediate image (fraction of each side).")


class Rescale(TargetDefense):
    """Down-sampling by ``scale`` then bilinear up-sampling back to the original size (Xie et al.
    2018, arXiv:1711.01991, without the randomness): differentiable, its exact gradient."""

    name = "rescale"
    Params = RescaleParams

    def check_input(self, spec: InputSpec) -> None:
        require_image(self, spec)

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        torch = _torch()
        with torch.no_grad():
            return self.preprocess_torch(torch.from_numpy(check_unit_batch(self, x)), rng).numpy()

    def preprocess_torch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        torch = _torch()
        h, w = int(x.shape[2]), int(x.shape[3])
        small = (max(1, round(h * self.params.scale)), max(1, round(w * self.params.scale)))
        f = torch.nn.functional
        down = f.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
        return f.interpolate(down, size=(h, w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


# --- Gaussian noise ------------------------------------------------------------------------------
class NoiseParams(Params):
    sigma: float = Field(0.1, gt=0, le=1, description="Standard deviation of the noise (input units).")
    eot_samples: int = Field(16, ge=2, le=1024, description="Draws averaged per gradient by adaptive attacks (EOT).")


class InferenceNoise(TargetDefense):
    """Gaussian noise added to every input at inference, clipped to [0, 1]. Randomised: adaptive
    attacks average ``eot_samples`` draws per gradient (EOT, Athalye et al. 2018, arXiv:1707.07397)."""

    name = "inference-noise"
    Params = NoiseParams
    randomized = True

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(eot_samples=self.params.eot_samples)

    def check_input(self, spec: InputSpec) -> None:
        require_unit_range(self, spec)

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = check_unit_batch(self, x)
        return np.clip(x + self.params.sigma * rng.standard_normal(x.shape), 0.0, 1.0).astype(np.float32)

    def preprocess_torch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        torch = _torch()
        noise = torch.as_tensor(rng.standard_normal(tuple(x.shape)), dtype=x.dtype, device=x.device)
        return (x + self.params.sigma * noise).clamp(0.0, 1.0)


# --- a chain of steps ----------------------------------------------------------------------------
STEPS: dict[str, type[TargetDefense]] = {d.name: d for d in (Rescale, JpegCompression, BitDepthReduction,
                                                              MedianSmoothing, SpatialSmoothing)}


class ChainParams(Params):
    steps: list[dict[str, Any]] = Field(min_length=1, description=(
        "Steps in order, each {kind: NAME, ...its parameters}; kinds: " + ", ".join(STEPS) + "."))

    @field_validator("steps")
    @classmethod
    def _known(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, step in enumerate(v):
            kind = step.get("kind") if isinstance(step, dict) else None
            if kind not in STEPS:
                raise ValueError(f"step {i}: kind must be one of {', '.join(STEPS)}, got {kind!r}")
        return v


class TransformChain(TargetDefense):
    """Deterministic rescaling and re-encoding steps applied in order (e.g. ``rescale`` then ``jpeg``
    then ``bit-depth``). BPDA: the backward pass follows the composition of every step's own
    surrogate (its exact torch step, its approximation, or the identity for straight-through)."""

    name = "transform-chain"
    Params = ChainParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.steps: list[TargetDefense] = [STEPS[s["kind"]](**{k: v for k, v in s.items() if k != "kind"})
                                           for s in self.params.steps]

    def adaptive(self) -> AdaptivePath:
        return AdaptivePath(bpda="approximation")

    def check_input(self, spec: InputSpec) -> None:
        for step in self.steps:
            step.check_input(spec)

    def preprocess(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in self.steps:
            x = step.preprocess(x, rng)
        return x

    def approximation(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = surrogate(step, x)
        return x


def surrogate(defense: TargetDefense, x: torch.Tensor) -> torch.Tensor:
    """The differentiable function BPDA differentiates for a deterministic ``defense``: its torch
    step (exact), its approximation, or the identity (straight-through)."""
    path = defense.check_declaration()
    if path.bpda == "exact":
        return defense.preprocess_torch(x, np.random.default_rng(0)) if defense.has_torch_step() else x
    return defense.approximation(x) if path.bpda == "approximation" else x
