"""Label-only membership inference: ``label-robustness``.

A model tends to keep the records it trained on on the right side of its decision boundary, and
further from it: a member's label survives more random noise (Choquette-Choo, Tramèr, Carlini &
Papernot 2021, "Label-Only Membership Inference Attacks", ICML, arXiv:2007.14321, their noise
robustness attack; Li & Zhang 2021, arXiv:2007.15528). The attacker reads labels only: of the
record itself (Yeom et al.'s gap attack, arXiv:1709.01604) and of ``copies`` noisy copies at each
noise level. A record's *robustness* is the share of those answers that are its true label, the
unperturbed answer counting as one level.

How robust a record is depends on the record as much as on membership: an atypical or mislabelled
member that the model memorised is right without noise and wrong under it, an easy non-member is
right under any noise. So the score is calibrated per record, as LiRA calibrates scores (Carlini
et al. 2022, arXiv:2112.03570, offline): ``reference_models`` models trained through the run's
trainer on reference records (never on the records scored) answer the same noisy copies, and the
score is the target's robustness minus their mean robustness on that record. Without that step
the ranking can invert (measured: a random forest with noisy labels, AUC below the gap attack's).

Noise is Gaussian with a standard deviation of ``level`` times each feature's range (its input
bounds, or the spread of the records where a feature is unbounded), and every noisy copy is made
valid under the input spec (bounds, immutable features, integers, one-hot groups). Each record
draws its own noise (:class:`~bastion.core.run.SampleStreams`), whatever the batch.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.membership import MembershipAttackParams, MembershipInference, MembershipSplits
from bastion.attacks.privacy.shadows import query_records, shadow_outputs
from bastion.core.params import Number
from bastion.core.repeated import query_cost
from bastion.core.run import RunContext
from bastion.core.spec import InputSpec
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.trained import predict_all
from bastion.errors import UsageError

class LabelRobustnessParams(MembershipAttackParams):
    copies: int = Field(16, ge=1, le=1024, description="Noisy copies of each record at each noise level.")
    levels: list[Annotated[Number, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.4], min_length=1, max_length=32,
        description="Noise levels: Gaussian standard deviations as a fraction of each feature's range (its input "
                    "bounds, or the spread of the records where unbounded). Target queries per record: 1 + "
                    "copies x len(levels).")
    reference_models: int = Field(4, ge=1, le=256, description="Reference models trained on reference records "
                                  "that calibrate each record's robustness.")
    cache: bool = Field(default=True, description="Reuse reference models trained before (bastion's cache folder).")


class LabelRobustness(MembershipInference):
    """``label-robustness``: label-only; the target's robustness to noise on each record minus that of
    reference models (Choquette-Choo et al. 2021, calibrated per record as in Carlini et al. 2022)."""

    name = "label-robustness"
    needs_scores = False
    needs_trainer = True
    Params = LabelRobustnessParams

    def needs_reference(self) -> bool:
        return True

    def models(self) -> int:
        return int(self.params.reference_models)  # type: ignore[attr-defined]

    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        p: LabelRobustnessParams = self.params  # type: ignore[assignment]
        q = query_records(splits)
        n = q.targets.stop  # members and non-members: the records scored (the rest are reference records)
        needed = n * (1 + p.copies * len(p.levels)) * query_cost(target)
        if threat.query_budget is not None and needed > threat.query_budget:
            raise UsageError(f"label-robustness asks {needed} queries ({n} records x (1 + {p.copies} copies x "
                             f"{len(p.levels)} levels) x {query_cost(target)} repeat(s)), more than the query budget "
                             f"of {threat.query_budget}", hint="lower copies or levels, or score fewer records "
                                                               "(the membership check's max_records)")
        views = noisy_views(target.input_spec, q.x, p.copies, p.levels, ctx)
        asked = np.concatenate([v[:n] for v in views])
        labels = predict_all(target, [asked])[0].argmax(-1).reshape(len(views), n)
        robust = robustness(labels, q.y[:n], p.copies, len(p.levels))
        ref = shadow_outputs(trainer, q, n_models=p.reference_models, online=False, augment="none",
                             spec=target.input_spec, classes=target.classes, ctx=ctx, cache=p.cache, like=target,
                             inputs=views)
        ref_labels = ref.logp[:, :, :n].argmax(-1)  # (models, views, records)
        ref_robust = np.mean([robustness(r, q.y[:n], p.copies, len(p.levels)) for r in ref_labels], axis=0)
        score = robust - ref_robust
        return score[q.members], score[q.non_members]


def noisy_views(spec: InputSpec, x: np.ndarray, copies: int, levels: list[float], ctx: RunContext
                ) -> list[np.ndarray]:
    """``x`` itself, then for each level its ``copies`` noisy copies (each array shaped like ``x``):
    Gaussian noise of ``level`` times :func:`noise_scale`, made valid by the spec."""
    scale = noise_scale(spec, x)
    streams = ctx.streams(np.arange(len(x)), "noise")
    views = [x]
    for li, level in enumerate(levels):
        noise = streams.at(li).normal((copies, *x.shape[1:]))  # (records, copies, *shape)
        for k in range(copies):
            views.append(spec.enforce(x, (x + noise[:, k] * (level * scale)).astype(np.float32)))
    return views


def robustness(labels: np.ndarray, y: np.ndarray, copies: int, levels: int) -> np.ndarray:
    """Per record, from its labels under each view (views, records): (1[clean label right] + Σ_level
    share of right labels among the level's copies) / (1 + levels)."""
    right = labels == y[None, :]
    noisy = right[1:].reshape(levels, copies, -1).mean(axis=1).sum(axis=0)
    return (right[0] + noisy) / (1 + levels)


def noise_scale(spec: InputSpec, x: np.ndarray) -> np.ndarray:
    """Each feature's range, the unit of the noise levels: ``upper - lower`` where both bounds are
    finite, else the standard deviation of ``x`` in that feature; 0 for an immutable feature."""
    lo, hi = (b.astype(np.float64) for b in spec.bounds_arrays())
    spread = np.asarray(x, np.float64).std(axis=0) if len(x) else np.zeros(lo.shape)
    bounded = np.isfinite(lo) & np.isfinite(hi)
    width = np.where(bounded, hi, 0.0) - np.where(bounded, lo, 0.0)
    return np.where(bounded, width, spread) * spec.mutable_mask()

