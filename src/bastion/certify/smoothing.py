"""Randomized smoothing: Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via
Randomized Smoothing", arXiv:1902.02918.

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, σ²I)) = c)`` of a base classifier ``f`` is
robust within the L2 radius ``σ·Φ⁻¹(p_A)`` around ``x`` where ``p_A`` bounds the top class's
probability from below. CERTIFY (the paper's Algorithm 1 and 2) picks the class from ``n0`` noisy
samples, counts it on ``n`` fresh samples, bounds its probability with the one-sided
Clopper–Pearson bound at level ``1 - α`` and abstains when the bound is below 1/2. PREDICT
abstains unless the top two counts of ``n`` samples differ significantly (two-sided binomial test
at level ``α``).

Noise: sample ``j`` of input ``i`` in phase ``p`` comes from a torch generator seeded by the run
(:class:`~bastion.core.run.RunContext`), ``i``, ``p`` and the block ``j // NOISE_BLOCK``; so the
draws, and the certificate, do not depend on the batch size nor on the other inputs (they do on
the device: CPU and CUDA generators differ). The base model runs on batches of noisy copies of
one input at a time, on its own device; by default (``jit: auto``) on the CPU as a frozen
TorchScript trace optimised for inference, checked against the model first, else as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from bastion.certify.base import ABSTAIN, Certifier
from bastion.core.params import Number, Params
from bastion.core.run import RunContext
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.errors import UsageError

if TYPE_CHECKING:
    import torch

NOISE_BLOCK = 256  # noisy samples drawn from one generator seed
log = logging.getLogger(__name__)


class SmoothingParams(Params):
    sigma: Number = Field(0.25, gt=0, description="Standard deviation σ of the Gaussian noise (input units).")
    n0: int = Field(100, ge=1, description="Samples that select the top class.")
    n: int = Field(10_000, ge=1, description="Samples that estimate its probability (>= n0).")
    alpha: Number = Field(0.001, gt=0, lt=1, description="Failure probability α: the certificate holds with "
                                                         "probability at least 1 - α.")
    batch_size: int = Field(1000, ge=1, le=1_000_000, description="Noisy samples per forward pass.")
    jit: bool | Literal["auto"] = Field(
        "auto", description="Run the base model as a frozen TorchScript trace optimised for inference (fused "
                            "kernels: several times faster on small CPU models). auto: trace a plain PyTorch "
                            "model on the CPU, and run it as it is when the trace is refused; true: trace on any "
                            "device, and stop when refused; false: never. A trace is refused when tracing warns, "
                            "the model's outputs change between identical calls, or the trace disagrees with the "
                            "model on a probe batch.")

    @field_validator("n")
    @classmethod
    def _n_covers_n0(cls, n: int, info: ValidationInfo) -> int:
        n0 = info.data.get("n0")
        if n0 is not None and n < n0:
            raise ValueError(f"must be >= n0 ({n0}): n0 samples select the class, n >= n0 estimate it")
        return n


def clopper_pearson_lower(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - α`` Clopper–Pearson lower bound on a binomial proportion from ``k`` of ``n``
    (0 when ``k = 0``): the ``α`` quantile of Beta(k, n - k + 1)."""
    from scipy.stats import beta

    k = np.asarray(k, np.float64)
    with np.errstate(invalid="ignore"):
        low = beta.ppf(alpha, k, n - k + 1)
    return np.where(k > 0, low, 0.0)


def smoothing_radius(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """The certified L2 radius ``σ·Φ⁻¹(p_lower)`` (Cohen et al., Theorem 1 with p_B = 1 - p_A)."""
    from scipy.stats import norm

    return sigma * norm.ppf(np.asarray(p_lower, np.float64))


class RandomizedSmoothing(Certifier):
    """``smoothing``: CERTIFY of Cohen et al. (2019) for a PyTorch target, L2 radii.

    >>> from bastion.certify.smoothing import RandomizedSmoothing
    >>> cert = RandomizedSmoothing(sigma=0.25, n0=100, n=10_000, alpha=0.001)
    """

    name = "smoothing"
    norm = "l2"
    Params = SmoothingParams

    def _certify(self, target: Target, x: np.ndarray, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        torch_target = _torch_target(target, self.label)
        forward = self.base_forward(torch_target, x)
        selected = self.counts(torch_target, x, ctx, "selection", p.n0, forward=forward).argmax(axis=1)
        counts = self.counts(torch_target, x, ctx, "estimation", p.n, advance=True, forward=forward)
        p_lower = clopper_pearson_lower(counts[np.arange(len(x)), selected], p.n, p.alpha)
        certified = p_lower >= 0.5
        pred = np.where(certified, selected, ABSTAIN)
        radius = np.where(certified, smoothing_radius(np.where(certified, p_lower, 0.5), p.sigma), 0.0)
        return pred, np.maximum(radius, 0.0)

    def predict(self, target: Target, x: np.ndarray, ctx: RunContext | None = None) -> np.ndarray:
        """PREDICT: the smoothed prediction per input, or -1 (abstain) when the top two counts of
        ``n`` samples are not significantly different (two-sided binomial test at level α)."""
        from scipy.stats import binomtest

        p = self.params
        x = target.input_spec.validate(x)
        torch_target = _torch_target(target, self.label)
        counts = self.counts(torch_target, x, self.run_context(ctx), "prediction", p.n, advance=True,
                             forward=self.base_forward(torch_target, x))
        order = np.argsort(-counts, axis=1, kind="stable")
        top, n_a, n_b = order[:, 0], counts[np.arange(len(x)), order[:, 0]], counts[np.arange(len(x)), order[:, 1]]
        pvalues = np.array([binomtest(int(a), int(a + b), 0.5).pvalue for a, b in zip(n_a, n_b)])
        return np.where(pvalues <= p.alpha, top, ABSTAIN)

    def base_forward(self, target: DifferentiableTarget, x: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        """The base model's scores on a batch (queries counted): the target's logits, or with ``jit`` its
        module traced for inference (:func:`traced_forward`). ``jit: auto`` traces a PyTorch model on
        the CPU (where the trace was measured faster) and falls back to the logits, with an info
        message, when the trace is refused."""
        jit = self.params.jit
        if jit is False or (jit == "auto" and str(getattr(target, "device", "")) != "cpu"):
            return target.logits
        try:
            return traced_forward(target, x[0], self.params.sigma, self.label)
        except UsageError as exc:
            if jit is True:
                raise
            log.info("%s (jit: auto runs the model as it is)", exc.message)
            return target.logits

    def counts(self, target: DifferentiableTarget, x: np.ndarray, ctx: RunContext, phase: str, num: int, *,
               advance: bool = False, forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """Class counts of the base model (``forward``, the target's logits by default) on ``num`` noisy
        copies of each input, shape (len(x), n_classes); ``advance``: report each input done to the run's
        progress."""
        import torch

        forward = forward or target.logits
        out = np.zeros((len(x), target.n_classes), np.int64)
        size = self.params.batch_size
        with torch.inference_mode():
            bounds = input_bounds(target)
            for i in range(len(x)):
                ctx.check_cancelled()
                xi = torch.from_numpy(x[i]).to(target.device)
                noise = NoiseDraws(ctx, phase, i, tuple(x.shape[1:]), self.params.sigma, target.device)
                for start in range(0, num, size):
                    stop = min(start + size, num)
                    batch = noise.draw(start, stop).add_(xi)
                    if bounds is not None:
                        batch = torch.clamp(batch, bounds[0], bounds[1])
                    labels = forward(batch).argmax(dim=1)
                    out[i] += torch.bincount(labels, minlength=target.n_classes).cpu().numpy()
                if advance:
                    ctx.advance(1)
        return out


def input_bounds(target: DifferentiableTarget) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The input bounds noisy copies are clipped to before a defended target sees them, else None.

    An input defense (bit-depth reduction, JPEG, ...) is defined on the input domain and refuses
    values outside it, which Gaussian noise produces. The base classifier of a defended target is
    therefore the defended model on the noisy copy clipped to the target's bounds: clipping is a
    fixed function of the noisy input, so Cohen et al.'s Theorem 1 holds for this base classifier
    as for any other. An undefended model sees the noisy copies as drawn (as in Cohen et al.'s code
    and ART's)."""
    import torch

    from bastion.core.defense import DefendedTarget

    if not isinstance(target, DefendedTarget):
        return None
    lo, hi = target.input_spec.bounds_arrays()
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, np.float32), device=target.device)  # noqa: E731
    return as_tensor(lo), as_tensor(hi)


class NoiseDraws:
    """The Gaussian noise ``N(0, σ²I)`` of input ``row`` in ``phase``: sample ``j`` comes from the
    generator seeded by (run, phase, row, ``j // NOISE_BLOCK``), whatever the batches it is drawn in."""

    def __init__(self, ctx: RunContext, phase: str, row: int, shape: tuple[int, ...], sigma: float, device: Any
                 ) -> None:
        import torch

        self._key, self._row, self._shape, self._sigma = ctx.key("noise", phase), row, shape, sigma
        self._gen = torch.Generator(device=device)
        self._device = device
        self._block: tuple[int, torch.Tensor] | None = None

    def _draw_block(self, b: int) -> torch.Tensor:
        import torch

        if self._block is None or self._block[0] != b:
            seed = np.random.SeedSequence(self._key, spawn_key=(self._row, b)).generate_state(1, np.uint64)[0]
            self._gen.manual_seed(int(seed) >> 1)
            block = torch.empty((NOISE_BLOCK, *self._shape), device=self._device).normal_(0.0, self._sigma,
                                                                                          generator=self._gen)
            self._block = (b, block)
        return self._block[1]

    def draw(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start`` to ``stop - 1``: a new tensor of shape (stop - start, *shape)."""
        import torch

        parts = []
        for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
            lo, hi = max(start, b * NOISE_BLOCK) - b * NOISE_BLOCK, min(stop, (b + 1) * NOISE_BLOCK) - b * NOISE_BLOCK
            parts.append(self._draw_block(b)[lo:hi])
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()


def traced_forward(target: DifferentiableTarget, x0: np.ndarray, sigma: float, name: str
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module of a PyTorch target as a frozen TorchScript trace optimised for inference
    (``torch.jit.optimize_for_inference``: batch norm folded, convolutions on oneDNN), counting queries
    like the target. Refused (UsageError) when the target is not a plain PyTorch model (or is declared
    randomised), when tracing warns (input-dependent control flow, Python numbers taken from tensors)
    or fails, or when on a probe batch of noisy copies of ``x0``, of another size than the trace's,
    the model's outputs differ between two identical calls (randomness in forward), or the trace's
    predictions differ from the model's or its scores by more than float rounding."""
    import warnings

    import torch

    from bastion.core.targets.torch_target import TorchTarget

    hint = "set jit: false (or auto) to run the model as it is"
    if not isinstance(target, TorchTarget) or target.bpda is not None or target.randomized:
        why = ("is not one" if not isinstance(target, TorchTarget) else
               "declares a BPDA substitute" if target.bpda is not None else "is declared randomised")
        raise UsageError(f"certifier '{name}': jit traces a plain PyTorch module; this {target.kind} target {why}",
                         hint=hint)
    gen = torch.Generator(device=target.device).manual_seed(0)
    xi = torch.from_numpy(x0).to(target.device)

    def probe(size: int) -> torch.Tensor:
        return torch.empty((size, *xi.shape), device=target.device).normal_(0.0, sigma, generator=gen).add_(xi)

    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("error", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.compile
            traced = torch.jit.trace(target.module, probe(8), check_trace=False)
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    except Exception as exc:
        raise UsageError(f"certifier '{name}': the model cannot be traced for jit ({type(exc).__name__}: {exc})",
                         hint=hint) from exc
    with torch.inference_mode():
        batch = probe(37)
        want, again = target.module(batch).reshape(37, -1), target.module(batch).reshape(37, -1)
        got = traced(batch).reshape(37, -1)
    if not torch.equal(want, again):
        raise UsageError(f"certifier '{name}': the model's outputs changed between two identical calls "
                         "(randomness in forward): a trace would not reproduce its draws", hint=hint)
    scale = float(want.abs().max()) + 1e-12
    if not torch.equal(want.argmax(1), got.argmax(1)) or float((want - got).abs().max()) > 1e-4 * scale:
        raise UsageError(f"certifier '{name}': the traced model disagrees with the model on a probe batch "
                         "(input-dependent behaviour or randomness in forward?)", hint=hint)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        target.count_queries(int(batch.shape[0]))
        out = traced(batch)
        return out.reshape(out.shape[0], -1)

    return forward


def _torch_target(target: Target, name: str) -> DifferentiableTarget:
    if not isinstance(target, DifferentiableTarget):
        raise UsageError(f"certifier '{name}' runs the base model on batches of noisy tensors: it needs a PyTorch "
                         f"(white-box) target, got a {target.kind} target",
                         hint="load the model as a PyTorch target (target.type: pytorch)")
    return target
