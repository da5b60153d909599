"""Rules of the variants check (ids ``BASTION-VA-*``), registered in the catalogue of
:mod:`bastion.core.rules`. Kept free of heavy imports: reports load it to describe findings."""

from __future__ import annotations

from bastion.core.results import Severity
from bastion.core.rules import Rule

CATALOGUE: list[Rule] = [
    Rule(id="BASTION-VA-001", title="A deployment variant is markedly less robust than the model it replaces",
         threat="evasion", default_severity=Severity.high,
         help=("The model that was tested is not the one that runs: quantised (int8), exported (ONNX) or distilled "
               "copies change the decision boundary, and robustness measured on the full model does not carry over. "
               "Here the variant's robust accuracy under the same attacks on the same inputs is lower by at least the "
               "check's threshold, and an exact McNemar test on the paired inputs says the difference is not chance."),
         remediation=("Test the variant you deploy, not only the full model, and gate deployment on its figures. "
                      "Harden the model before compressing it and re-check after (quantisation-aware or adversarial "
                      "fine-tuning of the quantised or distilled model), keep the layers that lose the most "
                      "robustness in higher precision, or deploy the full model where the risk is high.")),
]

WEAKER_RULE = "BASTION-VA-001"
