"""The policy file: what to test, how, and the gates a model must pass.

A policy is YAML validated by pydantic. Every error names the file, the line and the field, and
says what is allowed. Example::

    version: 1
    name: digits
    target: {model: demo:digits-cnn}
    data: {source: demo:digits, limit: 200}
    checks:
      - name: pgd-linf
        kind: evasion
        attack: pgd
        eps: [0.05, 0.1]
    gates:
      - robust_accuracy[pgd, eps=0.1] >= 0.6
      # a gate on a figure a gradient-masking finding put in doubt fails, unless it opts out:
      - {gate: "robust_accuracy[pgd, eps=0.05] >= 0.8", allow_untrusted: true}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bastion.campaign.checks.base import Check, CheckParams, CheckInputError, check_kinds
from bastion.campaign.gates import Gate, parse_gate, resolve_gate
from bastion.core.params import ParamError as CoreParamError
from bastion.core.results import Severity
from bastion.errors import BastionError, PolicyError

if TYPE_CHECKING:
    from bastion.core.targets.base import Target

REPORT_FORMATS = ("json", "html", "junit", "sarif")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DefenseSpec(_Strict):
    """A defense wrapped around the target: a registered name and its parameters, written
    ``{name: jpeg, params: {quality: 75}}`` or flat, ``{kind: jpeg, quality: 75}``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" in data and "name" not in data and "params" not in data:
            rest = {k: v for k, v in data.items() if k != "kind"}
            return {"name": data["kind"], "params": rest}
        return data


class BPDASpec(_Strict):
    """A differentiable substitute for a non-differentiable step of a torch model (BPDA, Athalye et
    al. 2018): white-box attacks take gradients through it, predictions come from the real model.
    ``module``: the submodule holding the step (straight-through identity unless ``substitute``, a
    ``python:file.py:function`` approximating it); or ``forward``: a ``python:file.py:function``
    standing in for the whole forward pass (returns logits)."""

    module: str | None = None
    substitute: str | None = None
    forward: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> BPDASpec:
        if (self.module is None) == (self.forward is None):
            raise ValueError("declare either module (the submodule with the non-differentiable step) or forward "
                             "(a differentiable stand-in for the whole model), not both")
        if self.substitute is not None and self.module is None:
            raise ValueError("substitute approximates the step of 'module'; with forward, give no substitute")
        for name in ("substitute", "forward"):
            v = getattr(self, name)
            if v is not None and not v.startswith("python:"):
                raise ValueError(f"{name} must be python:path/file.py:function, got {v!r}")
        return self


class TargetSpec(_Strict):
    """The model under test. ``model`` is a spec string (see ``bastion.load_target``);
    ``defenses`` (policy v2) wrap it, in order, the defended model being tested."""

    model: str
    input_shape: list[int] | None = None
    bounds: tuple[float, float] | None = None
    classes: list[Any] | None = None
    output: Literal["logits", "probabilities", "auto"] | None = None
    query_budget: int | None = Field(default=None, gt=0)
    features: list[dict[str, Any]] | None = None
    http: dict[str, Any] | None = None
    defenses: list[DefenseSpec] = Field(default_factory=list)
    bpda: BPDASpec | None = None
    randomized: bool | None = None  # outputs vary between identical calls (None: attacks probe local models)


class DataSpec(_Strict):
    source: str
    limit: int | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    label: str | None = None
    image_size: tuple[int, int] | None = None


DATASET_ROLES = ("eval", "train", "holdout", "reference", "members", "non_members")


class DatasetsSpec(_Strict):
    """Policy v2: the datasets a campaign uses, by role. ``eval`` is what attacks run on (v1's
    ``data``); ``train`` and ``holdout`` train and validate models (shadow models, poisoning);
    ``reference`` is clean data to compare against (drift, audits); ``members`` and
    ``non_members`` are known training and non-training records (membership inference)."""

    eval: DataSpec | None = None
    train: DataSpec | None = None
    holdout: DataSpec | None = None
    reference: DataSpec | None = None
    members: DataSpec | None = None
    non_members: DataSpec | None = None

    def given(self) -> dict[str, DataSpec]:
        return {role: spec for role in DATASET_ROLES if (spec := getattr(self, role)) is not None}


class TrainerSpec(_Strict):
    """Policy v2: how to train a model like the target. ``python:train.py:fit`` (a function taking
    a TrainRequest and returning a Target) or ``sklearn:pkg.module:Estimator`` with its ``params``
    (cloned and fitted)."""

    spec: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("spec")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme, sep, ref = v.partition(":")
        if not sep or scheme not in ("python", "sklearn") or ":" not in ref:
            raise ValueError(f"a trainer is python:FILE.py:FUNCTION or sklearn:MODULE:ESTIMATOR, got {v!r}")
        return v

    @model_validator(mode="after")
    def _params_for_sklearn(self) -> TrainerSpec:
        if self.params and not self.spec.startswith("sklearn:"):
            raise ValueError("params apply to a sklearn: estimator; a python: trainer takes its own settings")
        return self


class ThreatSpec(_Strict):
    """Policy v2: the attacker, for every check (a check's own ``threat`` overrides fields)."""

    knowledge: Literal["white", "grey", "black"] = "white"
    norm: Literal["linf", "l2"] | None = None
    eps: float | list[float] | None = None
    query_budget: int | None = Field(default=None, gt=0)
    targeted: bool | None = None
    poisoning_fraction: float | None = Field(default=None, ge=0, lt=1)

    def check_fields(self) -> dict[str, Any]:
        """The fields a check takes from the threat (those set, knowledge apart)."""
        return {k: v for k, v in self.model_dump(exclude={"knowledge"}).items() if v is not None}


class HardenSpec(_Strict):
    """Policy v2: how ``bastion harden`` trains a hardened copy of the target (a PyTorch model).
    ``method``: a registered training defense and its ``params`` (ε and norm default to the
    policy's threat); ``also``: more training defenses applied after it (e.g. DP-SGD). The model
    comes from ``model`` (a ``python:`` factory of the architecture; default: the target's own
    factory) unless the policy's ``trainer`` is a TorchTrainingProcedure, which is used as it is."""

    method: str = "pgd-at"
    params: dict[str, Any] = Field(default_factory=dict)
    also: list[DefenseSpec] = Field(default_factory=list)
    model: str | None = None
    init: Literal["scratch", "pretrained"] = "scratch"
    epochs: int = Field(default=30, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    lr: float = Field(default=3e-3, gt=0, allow_inf_nan=False)
    keep: Literal["best", "last"] = Field(default="last",
                                          description="Weights kept: the last epoch's, or (best) those of the "
                                                      "epoch of best held-out PGD accuracy (Rice et al. 2020; "
                                                      "clean accuracy without an evasion ε).")
    holdout: int = Field(default=128, ge=1, le=1_000_000,
                         description="Training samples held out for the per-epoch log and early stopping "
                                     "(when the policy has no datasets.holdout).")
    evaluate: dict[str, Any] = Field(default_factory=dict,
                                     description="Parameters of the `auto` ensemble run before and after "
                                                 "(default: the full ensemble).")
    membership: dict[str, Any] = Field(default_factory=dict,
                                       description="Parameters of the membership check run on the target and the "
                                                   "hardened model for a privacy defense (dp-sgd) when the policy "
                                                   "has datasets.non_members (default attack: loss-threshold).")
    weights: str = "hardened.safetensors"
    device: str = "cpu"

    @field_validator("model")
    @classmethod
    def _python(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("python:"):
            raise ValueError(f"harden.model is a python:FILE.py:FACTORY returning a torch.nn.Module, got {v!r}")
        return v


class CheckSpec(BaseModel):
    """One check: ``name`` and ``kind`` plus the kind's own parameters (validated per kind)."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class GateSpec(_Strict):
    """A gate with options, where a plain string is not enough. ``allow_untrusted``: let the gate
    pass on a figure a sign of gradient masking put in doubt (by default such a gate fails; the
    report still says the figure is untrusted)."""

    gate: str
    allow_untrusted: bool = False


#: A gate: an expression, or a mapping with options (a tagged union, so an error names one form only).
GateEntry = Annotated[Annotated[str, Tag("tag:expression")] | Annotated[GateSpec, Tag("tag:options")],
                      Discriminator(lambda v: "tag:expression" if isinstance(v, str) else "tag:options")]


class OutputSpec(_Strict):
    dir: str = "bastion-report"
    formats: list[Literal["json", "html", "junit", "sarif"]] = Field(default_factory=lambda: list(REPORT_FORMATS))


class Policy(_Strict):
    version: Literal[1, 2] = 1
    name: str = "bastion scan"
    description: str = ""
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seed of every random choice (a non-negative integer).")
    target: TargetSpec | None = None
    data: DataSpec | None = Field(default=None, description="v1: the evaluation data (v2: datasets.eval).")
    datasets: DatasetsSpec | None = None
    trainer: TrainerSpec | None = None
    threat: ThreatSpec | None = None
    harden: HardenSpec | None = Field(default=None, description="v2: what `bastion harden` trains.")
    checks: list[CheckSpec] = Field(default_factory=list, validate_default=True)
    gates: list[GateEntry] = Field(default_factory=list)
    fail_on: Severity | None = Field(default=None, description="Also fail when a finding is at least this severe.")
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("fail_on", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("checks")
    @classmethod
    def _some_checks(cls, v: list[CheckSpec], info: Any) -> list[CheckSpec]:
        if not v and info.data.get("harden") is None:
            raise ValueError("a policy needs at least 1 check (or, for bastion harden, a 'harden' section)")
        return v

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_string(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _versions(self) -> Policy:
        """v2 names its datasets by role (``data`` becomes ``datasets.eval``); v1 stays as it was."""
        if self.version == 1:
            v2 = [f for f in ("datasets", "trainer", "threat", "harden") if getattr(self, f) is not None]
            if self.target is not None and self.target.defenses:
                v2.append("target.defenses")
            if v2:
                raise ValueError(f"{', '.join(v2)} need 'version: 2'")
        elif self.data is not None:
            raise ValueError("a version 2 policy names its data by role: write 'datasets: {eval: ...}' instead "
                             "of 'data'")
        elif self.datasets is not None:
            self.data = self.datasets.eval  # what attacks run on, as in v1
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        seen: set[str] = set()
        for c in self.checks:
            if c.name in seen:
                raise ValueError(f"two checks are named '{c.name}'; names must be unique")
            seen.add(c.name)
        return self


class LoadedPolicy:
    """A validated policy with its checks built and gates parsed; ``gate_reads[i]`` names the
    checks gate ``i`` reads."""

    def __init__(self, policy: Policy, checks: list[Check], gates: list[Gate], path: Path | None,
                 node: yaml.Node | None = None, gate_reads: list[list[str]] | None = None) -> None:
        self.policy, self.checks, self.gates, self.path, self.node = policy, checks, gates, path, node
        self.gate_reads: list[list[str] | None] = list(gate_reads) if gate_reads is not None else [None] * len(gates)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def error(self, message: str, loc: tuple[Any, ...], hint: str | None = None) -> PolicyError:
        """A PolicyError at ``loc`` (e.g. ``("checks", 2, "params", "steps")``): file, line and field."""
        return PolicyError(message, file=str(self.path) if self.path else None, line=_line(self.node, loc),
                           field=_field(loc), hint=hint)

    @contextmanager
    def blame(self, *loc: Any) -> Iterator[None]:
        """Errors from the block name the policy file, line and field ``loc``; their class (and so
        the exit code: 2 for a user error, 3 for a runtime error) is kept."""
        try:
            yield
        except PolicyError:
            raise
        except BastionError as exc:
            where = self.error("", loc)
            exc.message = f"{where.message}{exc.message}"
            exc.args = (exc.message,)
            raise

    def check_capabilities(self, target: Target | None) -> None:
        """Refuse, before anything runs, a check that needs what the loaded target lacks."""
        if target is None:
            return
        for i, check in enumerate(self.checks):
            if "gradients" in check.requirements() and not target.white_box:
                raise self.error(f"check '{check.name}' needs gradients but the target '{target.name}' is a black "
                                 "box", ("checks", i),
                                 hint="use a black-box attack (square, hopskipjump) or a transfer attack, "
                                      "or give a model bastion can differentiate")


def load_policy(source: str | Path | dict[str, Any]) -> LoadedPolicy:
    """Read and validate a policy from a YAML file path or an already-parsed dict."""
    if isinstance(source, dict):
        return _build(source, None, None)
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror or exc}", file=str(path)) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolicyError(f"the policy is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                          file=str(path), line=line, hint="save the file as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=_PolicyLoader)
        doc = yaml.load(text, Loader=_PolicyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", file=str(path),
                          line=mark.line + 1 if mark else None) from exc
    if not isinstance(doc, dict):
        raise PolicyError("a policy must be a YAML mapping (key: value pairs)", file=str(path), line=1)
    return _build(doc, node, path)


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML keeps only the last: a check would vanish)
    and reads ``3e-2`` as a number, as YAML 1.2 and JSON do."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {seen[key]}); the first value would be "
                    "silently lost", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _build(doc: dict[str, Any], node: yaml.Node | None, path: Path | None) -> LoadedPolicy:
    file = str(path) if path else None

    def err(message: str, loc: tuple[Any, ...], hint: str | None = None) -> PolicyError:
        return PolicyError(message, file=file, line=_line(node, loc), field=_field(loc), hint=hint)

    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise _policy_error(exc, node, file, ()) from None
    _check_defenses(policy, err)
    kinds = check_kinds()
    checks: list[Check] = []
    for i, spec in enumerate(policy.checks):
        if spec.kind not in kinds:
            raise err(f"unknown check kind '{spec.kind}'; allowed: {', '.join(kinds)}", ("checks", i, "kind"))
        cls = kinds[spec.kind]
        try:
            raw, origin = _with_threat(policy, spec, cls, i, err)
        except ValidationError as exc:
            raise _policy_error(exc, node, file, ("checks", i, "threat")) from None
        try:
            params: CheckParams = cls.Params.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]["loc"]
            if first and first[0] in origin:  # the value came from a threat section: point there
                loc = origin[first[0]]
                msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise err(f"{msg} (check '{spec.name}' takes it from here)", loc) from None
            raise _policy_error(exc, node, file, ("checks", i)) from None
        if cls.needs_model and (policy.target is None or policy.data is None):
            where = "'target' and 'datasets.eval'" if policy.version == 2 else "'target' and 'data' sections"
            raise err(f"check '{spec.name}' ({spec.kind}) needs {where}", ("checks", i))
        try:
            check = cls(spec.name, params)
            check.validate_inputs(path.parent if path else Path.cwd())
        except PolicyError:
            raise
        except CheckInputError as exc:
            raise err(exc.message, ("checks", i, *exc.loc)) from None
        except CoreParamError as exc:  # an attack's own parameter model refused a value
            nested = spec.params().get("params", {})
            loc = ("checks", i, "params", exc.field) if exc.field in nested else \
                origin.get(exc.field, ("checks", i, exc.field) if exc.field in raw else ("checks", i))
            raise err(exc.message, loc, exc.hint) from None
        except Exception as exc:  # a check may validate combinations of parameters itself
            raise err(getattr(exc, "message", str(exc)), ("checks", i)) from None
        _check_requirements(policy, check, i, err)
        checks.append(check)
    gates, reads = [], []
    views = [c.gate_view() for c in checks]
    for i, spec in enumerate(policy.gates):
        expr, allow = (spec, False) if isinstance(spec, str) else (spec.gate, spec.allow_untrusted)
        try:
            gate = dataclasses.replace(parse_gate(expr), allow_untrusted=allow)
            reads.append(resolve_gate(gate, views))
        except ValueError as exc:
            raise err(str(exc), ("gates", i) if isinstance(spec, str) else ("gates", i, "gate"),
                      hint="write gates like: robust_accuracy[pgd, eps=0.1] >= 0.6") from None
        gates.append(gate)
    return LoadedPolicy(policy, checks, gates, path, node, reads)


def _with_threat(policy: Policy, spec: CheckSpec, cls: type[Check], i: int, err: Any
                 ) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
    """A check's parameters with the policy's threat filled in (v2): the policy ``threat``, then the
    check's own ``threat``, then the check's own fields. Also where each inherited value was written."""
    raw = spec.params()
    own_threat = raw.pop("threat", None)
    if own_threat is not None and policy.version == 1:
        raise err("a check's 'threat' needs 'version: 2'", ("checks", i, "threat"))
    if own_threat is None and policy.threat is None:
        return raw, {}
    override = ThreatSpec.model_validate(own_threat or {})  # a ValidationError names checks[i].threat.FIELD
    merged: dict[str, Any] = {}
    origin: dict[str, tuple[Any, ...]] = {}
    for section, where in ((policy.threat, ("threat",)), (override, ("checks", i, "threat"))):
        if section is None:
            continue
        for key, value in cls.threat_params(section.check_fields()).items():
            merged[key], origin[key] = value, (*where, key)
    for key in list(origin):
        if key in raw:  # the check's own field wins
            del origin[key]
    return {**merged, **raw}, origin


def _check_requirements(policy: Policy, check: Check, i: int, err: Any) -> None:
    """Refuse, before anything runs, a check whose needs the policy does not provide."""
    needs = check.requirements()
    knowledge = policy.threat.knowledge if policy.threat else "white"
    if "gradients" in needs and knowledge != "white":
        raise err(f"check '{check.name}' needs gradients, but the threat is {knowledge}-box", ("checks", i),
                  hint="use a black-box attack (square, hopskipjump, transfer) or set threat.knowledge: white")
    if "trainer" in needs and policy.trainer is None:
        raise err(f"check '{check.name}' needs a trainer: add 'trainer: python:train.py:fit' (or a sklearn: "
                  "estimator) to the policy", ("checks", i))
    datasets = policy.datasets.given() if policy.datasets else {}
    missing = [r for r in DATASET_ROLES if r in needs and r not in datasets and not (r == "eval" and policy.data)]
    if missing:
        raise err(f"check '{check.name}' needs the dataset(s) {', '.join(missing)}: add them under 'datasets'",
                  ("checks", i))


def _check_defenses(policy: Policy, err: Any) -> None:
    if policy.target is None or not policy.target.defenses:
        return
    from bastion.core.defense import DEFENSES, TargetDefense

    for i, d in enumerate(policy.target.defenses):
        if d.name not in DEFENSES:
            known = ", ".join(DEFENSES) or "none is registered yet"
            raise err(f"unknown defense '{d.name}'; available: {known}", ("target", "defenses", i, "name"))
        if not issubclass(DEFENSES.get_object(d.name), TargetDefense):
            raise err(f"'{d.name}' is a training defense: it changes how a model is trained, not the model under "
                      "test", ("target", "defenses", i, "name"), hint=f"harden a model with it: bastion harden "
                      f"POLICY.yaml (harden.method: {d.name})")
        try:
            DEFENSES.get_object(d.name)(**d.params)
        except CoreParamError as exc:  # the defense's own parameter model refused a value
            raise err(exc.message, ("target", "defenses", i, exc.field or "params"), hint=exc.hint) from None


def _policy_error(exc: ValidationError, node: yaml.Node | None, file: str | None,
                  prefix: tuple[Any, ...]) -> PolicyError:
    err = exc.errors()[0]
    loc = prefix + tuple(p for p in err["loc"]
                         if not (isinstance(p, str) and p.startswith(("function-after", "tag:"))))
    field = _field(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
        allowed = ", ".join(GateSpec.model_fields) if loc[:1] == ("gates",) else _allowed_fields(exc)
        if allowed:
            msg += f"; allowed here: {allowed}"
    elif err["type"] == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    elif err["type"] == "missing":
        msg = "this field is required"
    elif err["type"] in ("model_type", "model_attributes_type") and loc[:1] == ("gates",):
        msg = "a gate is an expression or a mapping {gate: EXPRESSION, allow_untrusted: true|false}"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return PolicyError(msg, file=file, line=_line(node, loc), field=field or None)


def _allowed_fields(exc: ValidationError) -> str:
    model = exc.title
    for cls in (Policy, TargetSpec, DataSpec, OutputSpec, *[k.Params for k in check_kinds().loaded().values()]):
        if cls.__name__ == model:
            return ", ".join(cls.model_fields)
    return ""


def _field(loc: tuple[Any, ...]) -> str:
    """``("checks", 2, "params", "steps")`` -> ``checks[2].params.steps``."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (the deepest node found)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    child = v if not isinstance(v, yaml.ScalarNode) else k
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
