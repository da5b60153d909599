"""The ``certify`` check: a certifier of :data:`bastion.certify.base.CERTIFIERS` on (a seeded subset
of) the eval data. Measures the certified accuracy at each radius (a curve in the report), the
abstention rate and the base model's clean accuracy on the same inputs; gates read e.g.
``certified_accuracy[certify, radius=0.5] >= 0.6``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from bastion.campaign.checks.base import Check, CheckContext, CheckParams, register_check
from bastion.campaign.gates import GateView
from bastion.core.params import EpsList
from bastion.core.results import CheckResult, RobustnessCurve
from bastion.core.run import RunContext

MEASURED = frozenset({"certified_accuracy", "abstain_rate", "clean_accuracy", "n", "queries", "seconds"})


class CertifyParams(CheckParams):
    certifier: str = Field("smoothing", description="Name of a registered certifier: smoothing (L2), ibp (L∞).")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the certifier, e.g. "
                                                                     "{sigma: 0.25, n: 10000}.")
    radii: EpsList = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
                               description="Radii (ε units of the certifier's norm) of the certified-accuracy curve.")
    samples: int = Field(100, ge=1, description="Certify at most this many eval inputs (a seeded random subset).")

    @field_validator("certifier")
    @classmethod
    def _known(cls, v: str) -> str:
        from bastion.certify.base import CERTIFIERS

        if v not in CERTIFIERS:
            raise ValueError(f"unknown certifier '{v}'; available: {', '.join(CERTIFIERS.names())}")
        return v

    @model_validator(mode="after")
    def _certified_radii(self) -> CertifyParams:
        """A certifier that certifies at given radii (IBP's ``eps``) takes the check's radii when its
        parameter is not set; the check's radii default to 0 and that parameter's values."""
        from bastion.certify.base import CERTIFIERS

        key = CERTIFIERS.get_object(self.certifier).radii_param
        if key is None:
            return self
        if key not in self.params:
            if "radii" not in self.model_fields_set:
                raise ValueError(f"certifier '{self.certifier}' certifies at given radii: set radii, or params.{key}")
            self.params = {**self.params, key: self.radii}
        elif "radii" not in self.model_fields_set:
            given = self.params[key] if isinstance(self.params[key], list) else [self.params[key]]
            if all(isinstance(r, (int, float)) and r >= 0 for r in given):  # else the certifier names the problem
                self.radii = sorted({0.0, *map(float, given)})
        return self


@register_check
class CertifyCheck(Check):
    kind = "certify"
    Params = CertifyParams
    metric_names = MEASURED

    def __init__(self, name: str, params: CertifyParams) -> None:
        from bastion.certify.base import CERTIFIERS

        super().__init__(name, params)
        self.params: CertifyParams = params
        self.certifier = CERTIFIERS.get_object(params.certifier)(**params.params)  # bad parameters: exit 2 now

    def gate_view(self) -> GateView:
        p = self.params
        return GateView(self.name, frozenset({self.name, self.kind, p.certifier}), MEASURED,
                        {"certifier": frozenset({self.certifier.label}), "norm": frozenset({self.certifier.norm}),
                         "radius": frozenset(f"{r:g}" for r in p.radii)})

    def run(self, ctx: CheckContext) -> CheckResult:
        target, data, y = ctx.require_model(self.name)
        p, cert = self.params, self.certifier
        t0 = time.perf_counter()
        run = RunContext(seed=ctx.seed).spawn(self.name)
        rows = np.sort(run.rng("subset").permutation(len(y))[:p.samples])
        x, y = data.x[rows], y[rows]
        with ctx.bar(f"{self.name}: {cert.label}", len(y)) as advance:
            res = cert.certify(target, x, y, RunContext(seed=ctx.seed, progress=advance).spawn(self.name))
        with target.uncounted():
            clean = float(np.mean(target.predict(x) == y))
        out = CheckResult(name=self.name, kind=self.kind, seconds=time.perf_counter() - t0,
                          metrics={"certifier": cert.label, "norm": cert.norm, "params": cert.params.model_dump(),
                                   "rows": len(y), "radii": p.radii, "certified_accuracy": res.curve(p.radii),
                                   "abstained": int(res.abstained.sum()),
                                   "radius_median": float(np.median(res.radius)), "queries": res.queries})
        res.record(out, p.radii)
        where = {"certifier": cert.label}
        out.measure("clean_accuracy", clean, "ratio", **where)
        out.measure("n", len(y), "count", **where)
        out.measure("queries", res.queries, "queries", **where)
        out.measure("seconds", res.seconds, "seconds", **where)
        out.artifacts.append(RobustnessCurve(
            title=f"Certified accuracy against {cert.norm.upper()} radius ({cert.label})",
            attack=f"{cert.label} (certified)", norm=cert.norm, eps=p.radii,
            robust_accuracy=res.curve(p.radii), clean_accuracy=clean))
        return out
