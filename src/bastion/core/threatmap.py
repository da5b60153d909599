"""The threat map of DESIGN.md in code: each attack family's MITRE ATLAS and OWASP ML ids."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThreatClass:
    family: str
    phase: str
    atlas: tuple[str, ...]
    owasp: tuple[str, ...]
    description: str


THREATS: dict[str, ThreatClass] = {
    t.family: t
    for t in [
        ThreatClass("evasion", "inference", ("AML.T0015", "AML.T0043"), ("ML01",),
                    "Crafted inputs that make the model give a wrong answer."),
        ThreatClass("evasion-whitebox", "inference", ("AML.T0015", "AML.T0043.000"), ("ML01",),
                    "Evasion with full access to the model's gradients."),
        ThreatClass("evasion-blackbox", "inference", ("AML.T0015", "AML.T0043.001"), ("ML01",),
                    "Evasion using only the model's outputs (scores or labels)."),
        ThreatClass("evasion-transfer", "inference", ("AML.T0015", "AML.T0043.002"), ("ML01",),
                    "Evasion crafted on a surrogate model and transferred."),
        ThreatClass("membership-inference", "inference", ("AML.T0024.000",), ("ML04",),
                    "Telling whether a record was in the training data."),
        ThreatClass("model-inversion", "inference", ("AML.T0024.001",), ("ML03",),
                    "Reconstructing training data or sensitive attributes."),
        ThreatClass("model-extraction", "inference", ("AML.T0024.002", "AML.T0005"), ("ML05",),
                    "Stealing a functional copy of the model through queries."),
        ThreatClass("poisoning", "training", ("AML.T0020",), ("ML02",),
                    "Corrupting training data to degrade or steer the model."),
        ThreatClass("backdoor", "training", ("AML.T0018.000", "AML.T0043.004"), ("ML10",),
                    "Hidden triggers planted through training."),
        ThreatClass("data-integrity", "training", ("AML.T0019",), ("ML02",),
                    "Training data that cannot be trusted: unknown provenance, duplicates, leaks between splits, "
                    "wrong labels."),
        ThreatClass("data-privacy", "training", ("AML.T0019",), ("ML03",),
                    "Personal data and secrets in training data, which a model can memorise and reveal."),
        ThreatClass("supply-chain", "supply chain", ("AML.T0010", "AML.T0011.000", "AML.T0058", "AML.T0076"),
                    ("ML06",), "Malicious or tampered model files and data."),
        ThreatClass("production", "production", ("AML.T0029", "AML.T0031", "AML.T0040"), ("ML08", "ML09"),
                    "Drift, query abuse and denial of service."),
    ]
}
