"""LiRA, the likelihood-ratio attack (Carlini et al. 2022, "Membership Inference Attacks From First
Principles", arXiv:2112.03570).

For each record, the target's logit-scaled confidence φ = log(p_y / (1 - p_y)) is compared with
its distribution over shadow models that did (IN) or did not (OUT) train on the record, each
fitted as a Gaussian:

- ``online``: score = log N(φ; μ_in, σ_in) - log N(φ; μ_out, σ_out); the shadow models train on
  random halves of the members, non-members and reference records, so each record is IN for
  half of them;
- ``offline``: only OUT models (trained on reference records), one-sided: score = log Pr[Z < φ],
  Z ~ N(μ_out, σ_out);
- ``variance``: per record, or ``global`` (one σ for every record: the pooled within-record
  spread, the paper's fixed-variance variant, better with few shadow models; ``auto`` picks it
  below 64 models). With a single offline shadow model the spread comes from the reference
  records, which neither model trained on: σ² = var(φ_target - φ_shadow) / 2.

Scores are computed for all records at once from the cached outputs; with augmentations
(``flip``: mirrored, ``shift``: moved one pixel four ways), the per-query scores are averaged, as in
the paper.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from bastion.attacks.privacy.membership import MembershipAttackParams, MembershipInference, MembershipSplits
from bastion.attacks.privacy.shadows import (
    Augment,
    augmented,
    logit_confidence,
    query_records,
    shadow_outputs,
)
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.core.threat import ThreatModel
from bastion.core.trained import predict_all
from bastion.errors import UsageError

_FLOOR = 1e-6  # smallest σ: a record every shadow model answers identically


class LiRAParams(MembershipAttackParams):
    shadow_models: int = Field(default=16, ge=1, le=1024, description="Shadow models to train.")
    mode: Literal["online", "offline"] = Field(default="online", description="IN and OUT models, or OUT only.")
    variance: Literal["auto", "per-record", "global"] = Field(
        default="auto", description="σ per record, or one for all (auto: global below 64 shadow models).")
    augment: Augment = Field(default="none", description="Extra queries per record: flip (images mirrored) or "
                            "shift (moved one pixel four ways).")
    cache: bool = Field(default=True, description="Reuse shadow models trained before (bastion's cache folder).")


class LiRA(MembershipInference):
    """LiRA (Carlini et al. 2022): Gaussian likelihood ratio of the target's confidence against
    shadow models trained with and without each record."""

    name = "lira"
    needs_trainer = True
    Params = LiRAParams

    def needs_reference(self) -> bool:
        return self.params.mode == "offline"  # type: ignore[attr-defined]

    def models(self) -> int:
        return int(self.params.shadow_models)  # type: ignore[attr-defined]

    def _score(self, target: Target, splits: MembershipSplits, threat: ThreatModel, ctx: RunContext,
               trainer: Any) -> tuple[np.ndarray, np.ndarray]:
        p: LiRAParams = self.params  # type: ignore[assignment]
        online = p.mode == "online"
        if online and p.shadow_models < 2:
            raise UsageError("online LiRA needs at least 2 shadow models (each record is IN for half of them)",
                             hint="set shadow_models >= 2, or mode: offline")
        q = query_records(splits)
        out = shadow_outputs(trainer, q, n_models=p.shadow_models, online=online, augment=p.augment,
                             spec=target.input_spec, classes=target.classes, ctx=ctx, cache=p.cache, like=target)
        single = not online and p.shadow_models == 1
        rows = slice(0, len(q.x)) if single else q.targets  # one shadow: σ from the reference records too
        t = logit_confidence(predict_all(target, [x[rows] for x in augmented(q.x, p.augment)]), q.y[rows])
        s = logit_confidence(out.logp, q.y)  # (m, n_aug, n_q)
        glob = p.variance == "global" or (p.variance == "auto" and p.shadow_models < 64)
        n_t = q.targets.stop
        if online:
            k = out.keep[:, None, :n_t]
            mu_in, sd_in = _gaussian(s[..., :n_t], k, glob)
            mu_out, sd_out = _gaussian(s[..., :n_t], ~k, glob)
            score = _logpdf(t, mu_in, sd_in) - _logpdf(t, mu_out, sd_out)
        elif single:
            mu_out = s[0, :, :n_t]
            ref = ~out.keep[0, q.reference]  # reference records the shadow model did not train on
            diff = (t[:, n_t:] - s[0][:, q.reference])[:, ref]
            if diff.shape[1] < 2:
                raise UsageError("offline LiRA with one shadow model needs reference records to estimate the "
                                 "spread of φ", hint="give more reference records, or more shadow models")
            sd_out = np.full_like(mu_out, max(float(diff.std()) / np.sqrt(2), _FLOOR))
            score = _logcdf((t[:, :n_t] - mu_out) / sd_out)
        else:
            mu_out, sd_out = _gaussian(s[..., :n_t], np.ones_like(out.keep[:, None, :n_t]), glob)
            score = _logcdf((t - mu_out) / sd_out)
        score = score.mean(0)
        return score[q.members], score[q.non_members]


def _gaussian(s: np.ndarray, mask: np.ndarray, glob: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and σ over the models (axis 0) where ``mask`` holds: per record, or one pooled σ of
    the within-record spread when ``glob``."""
    w = np.broadcast_to(mask, s.shape).astype(np.float64)
    n = w.sum(0)
    mu = (s * w).sum(0) / np.maximum(n, 1)
    sq = ((s - mu) ** 2 * w).sum(0)
    if glob:
        sd = np.full_like(mu, np.sqrt(sq.sum() / max(n.sum() - np.count_nonzero(n), 1)))
    else:
        sd = np.sqrt(sq / np.maximum(n, 1))
    return mu, np.maximum(sd, _FLOOR)


def _logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def _logcdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import log_ndtr

    return log_ndtr(z)
