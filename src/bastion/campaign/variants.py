"""Edge variants: a model and its deployment variants evaluated side by side on the same attacks and inputs.

A variant is what runs in place of the tested model: an int8 copy (PyTorch or ONNX Runtime dynamic
quantisation, :mod:`bastion.core.targets.variants`), a distilled student, or any model file the user
lists. For each, on the same seeded inputs: clean accuracy, robust accuracy under every named attack
and in the worst case over them (an input counts as robust only if no attack fooled it), agreement
with the full model on clean inputs, and transfer both ways — adversarial inputs crafted on the full
model tried on the variant, and those crafted on the variant tried on the full model (Papernot et al.
2016, arXiv:1605.07277).

Gradients: a variant that is differentiable (a PyTorch or TorchScript model) is attacked with its own
gradients, after a probe for zero or non-finite input gradients (a masked variant would look robust,
Athalye et al. 2018); a variant that is not (quantised, ONNX, remote, or failing that probe) is a
:class:`~bastion.core.targets.variants.StandInTarget`: white-box attacks follow the full model's
gradients while every prediction and success is the variant's own (BPDA), and black-box attacks run on
it directly. Each row says which.

A variant is *markedly less robust* when its worst-case robust accuracy is at least ``threshold`` below
the full model's and the exact one-sided McNemar test on the paired inputs (robust on the full model
only vs. on the variant only, :func:`bastion.core.stats.mcnemar_greater`) rejects "equally robust" at
``alpha``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.attacks.base import EvasionAttack, available_attacks, get_attack
from bastion.core.results import VariantRow
from bastion.core.run import RunContext
from bastion.core.stats import mcnemar_greater
from bastion.core.targets.base import DifferentiableTarget, Target
from bastion.core.targets.variants import StandInTarget, check_compatible, onnx_export, onnx_int8, torch_int8
from bastion.errors import TargetError, UsageError

Builtin = Literal["torch-int8", "onnx-int8"]
BUILTINS: tuple[str, ...] = ("torch-int8", "onnx-int8")
FULL = "full"
#: The black-box attack added when a variant is attacked through the full model's gradients.
BLACKBOX = "square"
UPPER_BOUND = ("robust accuracy from the full model's gradients only (no black-box attack): an upper bound, since "
               "those gradients may not follow this variant")


class AttackSpec(BaseModel):
    """An attack of the comparison: a registered name and its parameters (ε and norm are the check's)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        attacks = available_attacks()
        if v not in attacks:
            raise ValueError(f"unknown attack '{v}'; available: {', '.join(attacks)}")
        if attacks[v].minimal:
            raise ValueError(f"'{v}' is a minimal-perturbation attack; the comparison needs attacks bounded by ε")
        if v == "transfer":
            raise ValueError("transfer is measured by the check itself, both ways; name the attacks to craft with")
        return v

    def build(self, eps: float, norm: str) -> EvasionAttack:
        for key in ("eps", "norm"):
            if key in self.params:
                raise UsageError(f"set '{key}' on the check, not in the params of attack '{self.name}'")
        return get_attack(self.name, eps=eps, norm=norm, **self.params)


class ModelSpec(BaseModel):
    """A user's variant: a name, a model spec (``onnx:edge.onnx``, ``torchscript:edge.pt``,
    ``python:student.py:make``) and whether its gradients are usable (None: a PyTorch model is probed,
    any other model is attacked through the full model's gradients)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    differentiable: bool | None = None


@dataclass
class Variant:
    """One model of the comparison: its name, the target attacks run on, where it came from
    (``full``, ``torch-int8``, ``onnx-int8``, ``distilled`` or ``file``) and its gradients (``own``
    or ``full model (BPDA)``)."""

    name: str
    target: Target
    source: str
    gradients: str
    notes: list[str] = field(default_factory=list)


def build_variants(target: Target, *, quantize: Sequence[str] = BUILTINS, onnx: str | Path | None = None,
                   distilled: Any = None, models: Sequence[ModelSpec | dict[str, Any]] = (),
                   base_dir: str | Path | None = None) -> list[Variant]:
    """The variants of ``target`` (a PyTorch model): the built-in quantisations named in ``quantize``,
    the ``distilled`` student (a model spec, an ``nn.Module`` or a Target) and the user's ``models``.
    ``onnx``: an ONNX export of the model, quantised for ``onnx-int8`` instead of exporting it here.
    Model files are scanned before they are loaded; relative paths are taken from ``base_dir``.
    A variant that is not a model, or answers another number of classes, is a UsageError."""
    if not isinstance(target, DifferentiableTarget):
        raise UsageError(f"the variants check compares variants with a model it can differentiate; '{target.name}' "
                         f"is a {target.kind} black box", hint="give the PyTorch model as the target")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    unknown = [q for q in quantize if q not in BUILTINS]
    if unknown:
        raise UsageError(f"unknown variant '{unknown[0]}' in quantize; allowed: {', '.join(BUILTINS)}")
    out: list[Variant] = []
    stand_in = "full model (BPDA)"
    if "torch-int8" in quantize:
        out.append(Variant("torch-int8", torch_int8(target), "torch-int8", stand_in))
    if "onnx-int8" in quantize:
        with tempfile.TemporaryDirectory(prefix="bastion-variants-") as tmp:
            if onnx is not None:
                source, note = _file(str(onnx), base, "onnx"), f"quantised from the given ONNX file {onnx}"
            else:
                source, note = onnx_export(target, Path(tmp) / "full.onnx"), "exported here (torch.onnx, dynamo=False)"
            out.append(Variant("onnx-int8", onnx_int8(source, target, Path(tmp) / "int8.onnx"), "onnx-int8",
                               stand_in, [note]))
    if distilled is not None:
        shown = distilled if isinstance(distilled, str) else type(distilled).__name__
        out.append(_load(target, ModelSpec(name="distilled", model=shown), base, "distilled", distilled))
    for spec in models:
        m = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
        out.append(_load(target, m, base, "file", m.model))
    names = [FULL, *(v.name for v in out)]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UsageError(f"two variants are named '{dup}'; names must be unique ('{FULL}' is the model itself)")
    return out


def _file(spec: str, base: Path, what: str) -> Path:
    from bastion.campaign.preflight import scan_model_file
    from bastion.core.schemes import resolve_model_spec

    path = Path(resolve_model_spec(spec.removeprefix("onnx:"), base))
    if not path.is_file():
        raise UsageError(f"{what}: no such model file: {path}")
    scan_model_file(f"onnx:{path}")
    return path


def _load(full: Target, spec: ModelSpec, base: Path, source: str, model: Any) -> Variant:
    """A user's variant, scanned, loaded with the full model's input shape and classes, and checked
    against it."""
    from bastion.campaign.preflight import load_target
    from bastion.campaign.runner import _rel
    from bastion.core.schemes import resolve_model_spec

    what = f"the variant '{spec.name}'"
    if isinstance(model, str):
        model = _rel(model, base) if model.startswith("python:") else resolve_model_spec(model, base)
    lo, hi = full.input_spec.bounds_arrays()
    bounds = (float(lo.min()), float(hi.max())) if full.input_spec.features is None else None
    try:
        variant = load_target(model, input_shape=tuple(full.input_spec.shape), bounds=bounds,
                              classes=list(full.classes))
    except TargetError as exc:
        hint = (f"a variant must answer the model's {full.n_classes} classes, in the same order"
                if "per declared class" in exc.message else exc.hint)
        raise TargetError(f"{what}: {exc.message}", hint=hint) from exc
    check_compatible(variant, full, what=what)
    variant.input_spec = full.input_spec  # the same inputs, bounds and ε scale as the model it replaces
    assert isinstance(full, DifferentiableTarget)
    usable = variant.white_box if spec.differentiable is None else spec.differentiable
    if usable and not variant.white_box:
        raise UsageError(f"{what} is declared differentiable but is a {variant.kind} model without gradients",
                         hint="remove 'differentiable: true'")
    if usable:
        return Variant(spec.name, variant, source, "own")
    return Variant(spec.name, StandInTarget(variant, full, name=spec.name), source, "full model (BPDA)")


class VariantsResult(BaseModel):
    """What :func:`evaluate_variants` measured: one row per model (the full model first), the robust
    accuracy of each under each attack, and the settings."""

    model_config = ConfigDict(extra="forbid")

    eps: float
    norm: str
    attacks: list[str]
    n: int
    threshold: float
    alpha: float
    rows: list[VariantRow]
    by_attack: dict[str, dict[str, float]]
    complete: bool = True
    reason: str | None = None
    interrupted: bool = False  # Ctrl-C: ``rows`` hold the models measured in full before it

    def row(self, name: str) -> VariantRow:
        return next(r for r in self.rows if r.variant == name)

    @property
    def weaker(self) -> list[VariantRow]:
        """The variants markedly less robust than the full model."""
        return [r for r in self.rows if r.flagged]


def evaluate_variants(target: Target, x: np.ndarray, y: np.ndarray, variants: Sequence[Variant], *,
                      attacks: Sequence[str | AttackSpec | dict[str, Any]] = ("pgd",), eps: float = 0.1,
                      norm: str = "linf", threshold: float = 0.05, alpha: float = 0.01, seed: int = 0,
                      blackbox: str | AttackSpec | dict[str, Any] | None = BLACKBOX,
                      progress: Callable[[int], None] | None = None) -> VariantsResult:
    """Evaluate ``target`` and its ``variants`` on the same inputs ``x`` (labels ``y`` as class
    indices) under the same ``attacks`` at ``eps`` (see the module docstring). ``blackbox``: a black-box
    attack run on every model as well when a variant is attacked through the full model's gradients and
    no black-box attack is named (those gradients may not follow the variant); None leaves it out, and
    the rows of such variants say that their robust accuracy is an upper bound."""
    if not attacks:
        raise UsageError("name at least one attack for the comparison")
    if not 0 <= threshold <= 1 or not 0 < alpha < 1:
        raise UsageError(f"threshold must lie in [0, 1] and alpha in (0, 1); got {threshold}, {alpha}")
    specs = [a if isinstance(a, AttackSpec) else AttackSpec(name=a) if isinstance(a, str) else AttackSpec(**a)
             for a in attacks]
    built = [s.build(eps, norm) for s in specs]
    names = [a.name for a in built]
    if len(set(names)) != len(names):
        raise UsageError(f"an attack is named twice in {names}")
    x = target.input_spec.validate(x)
    y = np.asarray(y, np.int64)
    models = [Variant(FULL, target, FULL, "own"), *variants]
    for v in models[1:]:
        check_compatible(v.target, target, what=f"the variant '{v.name}'")
    run = RunContext(seed=seed)
    models = [_probed(v, target, x, y) for v in models]
    stand_ins = [v for v in models if v.gradients != "own"]
    upper: set[str] = set()
    if stand_ins and all(a.needs_gradients for a in built):
        if blackbox is not None:
            spec = blackbox if isinstance(blackbox, AttackSpec) else AttackSpec(name=blackbox) \
                if isinstance(blackbox, str) else AttackSpec(**blackbox)
            extra = spec.build(eps, norm)
            if extra.needs_gradients:
                raise UsageError(f"blackbox: '{extra.name}' uses gradients; name a black-box attack (e.g. square)")
            built.append(extra)
            names.append(extra.name)
        else:
            upper = {v.name for v in stand_ins}
    clean = {v.name: _predict(v.target, x) for v in models}
    robust: dict[str, np.ndarray] = {}
    adv: dict[str, np.ndarray] = {}
    by_attack: dict[str, dict[str, float]] = {}
    complete, reason = True, None
    interrupted = False
    for v in models:
        ok = np.ones(len(y), bool)
        x_adv = x.copy()
        by_attack[v.name] = {}
        for attack in built:
            # the same random streams (starts, search) for every model: the comparison is paired
            res = attack.run(v.target, x, y, None, run.spawn(attack.name), progress=progress)
            if not res.complete:
                complete, reason = False, f"{attack.name} on '{v.name}': {res.reason}"
            fooled = res.adv_pred != y
            x_adv = np.where(_rows(fooled & ok, x.ndim), res.x_adv, x_adv)  # the first attack that fooled it
            ok &= ~fooled
            by_attack[v.name][attack.name] = float(np.mean(res.adv_pred == y))
            if res.interrupted:  # Ctrl-C: keep the models measured in full, say the rest is missing
                interrupted, reason = True, f"interrupted during {attack.name} on '{v.name}'"
                del by_attack[v.name]
                break
        if interrupted:
            break
        robust[v.name], adv[v.name] = ok, x_adv
    done = [v for v in models if v.name in robust] if FULL in robust else []
    full_clean = clean[FULL] == y
    full_ok = robust.get(FULL, np.zeros(len(y), bool))
    rows = []
    for v in done:
        row = VariantRow(variant=v.name, source=v.source, gradients=v.gradients,
                         clean_accuracy=float(np.mean(clean[v.name] == y)),
                         robust_accuracy=float(np.mean(robust[v.name])),
                         agreement=float(np.mean(clean[v.name] == clean[FULL])),
                         notes=[*v.notes, *([UPPER_BOUND] if v.name in upper else [])])
        if v.name != FULL:
            ok = robust[v.name]
            b, c = int(np.sum(full_ok & ~ok)), int(np.sum(ok & ~full_ok))
            p = mcnemar_greater(b, c)
            drop = float(np.mean(full_ok) - np.mean(ok))
            row = row.model_copy(update={
                "transfer_from_full": _transfer(v.target, adv[FULL], y, ~full_ok & full_clean, clean[v.name] == y),
                "transfer_to_full": _transfer(target, adv[v.name], y, ~ok & (clean[v.name] == y), full_clean),
                "drop": drop, "only_full_robust": b, "only_variant_robust": c, "p_value": p,
                "flagged": bool(drop >= threshold and p < alpha and drop > 0)})
        rows.append(row)
    return VariantsResult(eps=eps, norm=norm, attacks=names, n=len(y), threshold=threshold, alpha=alpha, rows=rows,
                          by_attack=by_attack, complete=complete and not interrupted, reason=reason,
                          interrupted=interrupted)


def _probed(v: Variant, full: Target, x: np.ndarray, y: np.ndarray) -> Variant:
    """A variant attacked with its own gradients, unless a probe finds them zero or non-finite on a
    significant share of inputs (masked gradients): then the full model's gradients (BPDA)."""
    if v.gradients != "own" or v.source == FULL:
        return v
    from bastion.attacks.evasion.sanity import check_gradients

    assert isinstance(v.target, DifferentiableTarget) and isinstance(full, DifferentiableTarget)
    sign = check_gradients(v.target, x[:64], y[:64])
    if not sign.flagged:
        return v
    return Variant(v.name, StandInTarget(v.target, full, name=v.name), v.source, "full model (BPDA)",
                   [*v.notes, f"own gradients unusable ({sign.message}); attacked through the full model's"])


def _predict(target: Target, x: np.ndarray) -> np.ndarray:
    with target.uncounted():
        return target.predict(x)


def _rows(mask: np.ndarray, ndim: int) -> np.ndarray:
    return mask.reshape(-1, *([1] * (ndim - 1)))


def _transfer(dest: Target, x_adv: np.ndarray, y: np.ndarray, fooled_source: np.ndarray,
              dest_clean: np.ndarray) -> float | None:
    """Share of the inputs that fooled the source model (and that ``dest`` answers correctly when
    clean) which also fool ``dest``; None when there are none."""
    rows = np.flatnonzero(fooled_source & dest_clean)
    if len(rows) == 0:
        return None
    return float(np.mean(_predict(dest, x_adv[rows]) != y[rows]))
