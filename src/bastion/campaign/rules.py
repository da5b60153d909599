"""Rules of the evasion and gradient-masking checks (ids ``BASTION-EV-*``), registered in the
catalogue of :mod:`bastion.core.rules`. Kept free of heavy imports: reports load it to describe
findings."""

from __future__ import annotations

from bastion.core.results import Severity
from bastion.core.rules import Rule

_ADAPTIVE = ("Do not trust white-box robustness numbers for this model until an adaptive attack confirms them: "
             "evaluate with the 'auto' ensemble (it includes a black-box stage), ")
_MASKING_HELP = ("Gradient masking makes white-box attacks fail for the wrong reason, so the model looks more "
                 "robust than it is (Athalye et al. 2018, arXiv:1802.00420).")
#: How to declare BPDA for a non-differentiable step of the user's own torch model (policy and API).
BPDA_HOWTO = ("Declare a differentiable substitute for the non-differentiable step (BPDA) so white-box attacks "
              "follow it while predictions still come from the real model; in the policy's target section: "
              "`bpda: {module: quantize}` (the torch submodule holding the step; its backward pass becomes the "
              "identity, or the gradient of `substitute: python:approx.py:smooth_step`), or "
              "`bpda: {forward: python:approx.py:smooth_model}` (a differentiable stand-in for the whole model); "
              "in Python: TorchTarget(model, spec, bpda=BPDA(module='quantize')). See docs/attacks-whitebox.md.")
_EOT_HOWTO = ("bastion's attacks find randomised models with a probe and evaluate them in expectation on their own "
              "(EOT gradients over 20 draws, accuracies over 100 fresh draws with a 95% interval); raise eot_iter "
              "and draws in the attack's params for tighter figures, and declare params: {randomized: true} for a "
              "remote model, which is not probed.")
_EVASION_HELP = ("An evasion attack changes each input a little (at most ε, in each feature's own scale) to make "
                 "the model answer wrongly. Robust accuracy is the share of inputs still answered correctly.")

CATALOGUE: list[Rule] = [
    Rule(id="BASTION-EV-001", title="Model is fooled by small white-box perturbations", threat="evasion-whitebox",
         help=_EVASION_HELP + " A white-box attacker knows the model's weights and gradients.",
         remediation=(
             "Train the model adversarially (PGD adversarial training or TRADES) at the ε you need to withstand, "
             "then re-run this scan; input filters (JPEG, smoothing, squeezing) alone do not stop an adaptive "
             "attacker. Keep the model's weights and gradients private, and gate deployment on robust accuracy.")),
    Rule(id="BASTION-EV-002", title="Model is fooled through its API (black-box evasion)", threat="evasion-blackbox",
         help=_EVASION_HELP + " A black-box attacker only sees the model's answers.",
         remediation=(
             "An attacker with only API access can fool the model. Train it adversarially, limit and monitor "
             "query rates per client, and return labels or rounded scores instead of full probabilities.")),
    Rule(id="BASTION-EV-003", title="Adversarial inputs transfer from another model", threat="evasion-transfer",
         help=_EVASION_HELP + " A transfer attacker crafts the inputs on a model of their own.",
         remediation=(
             "Adversarial inputs crafted on another model fool this one. Adversarial training and ensembles of "
             "diverse models reduce transferability; do not rely on keeping the model secret.")),
    Rule(id="BASTION-EV-010", title="Smallest perturbation that fools the model", threat="evasion-whitebox",
         default_severity=Severity.info,
         help=("A minimal-perturbation attack searches, for each input, the smallest change that makes the "
               "model wrong; the distribution of those sizes shows how close the inputs lie to a decision "
               "boundary."),
         remediation=("Compare the typical smallest perturbation with the change an attacker can make unnoticed; "
                       "if it is smaller, train adversarially at that ε.")),
    Rule(id="BASTION-EV-101", title="Randomised model outputs: a sign of gradient masking",
         threat="evasion-whitebox", default_severity=Severity.medium, help=_MASKING_HELP,
         remediation=_ADAPTIVE + "and report robustness on the expected prediction (Expectation over "
                     "Transformation, Athalye et al. 2018): " + _EOT_HOWTO),
    Rule(id="BASTION-EV-102",
         title="Model outputs are not logits (probabilities or saturated): a sign of gradient masking",
         threat="evasion-whitebox", default_severity=Severity.medium, help=_MASKING_HELP,
         remediation=_ADAPTIVE + "expose the logits (remove the final softmax, declare output='probabilities' "
                     "only when the model truly returns them), and prefer margin/DLR losses (apgd-dlr, apgd-t), "
                     "which are scale invariant."),
    Rule(id="BASTION-EV-103", title="Zero or non-finite input gradients: a sign of gradient masking",
         threat="evasion-whitebox", default_severity=Severity.high, help=_MASKING_HELP,
         remediation=_ADAPTIVE + "and cross non-differentiable steps (rounding, quantisation, JPEG, thresholding, "
                     "sqrt at 0) with BPDA. " + BPDA_HOWTO),
    Rule(id="BASTION-EV-104", title="A black-box attack succeeds where the white-box attack failed: gradient masking",
         threat="evasion-whitebox", default_severity=Severity.high, help=_MASKING_HELP,
         remediation=_ADAPTIVE + "treat the black-box robust accuracy as the upper bound, and look for the masking "
                     "cause (non-differentiable or randomised components) to attack it with BPDA or EOT. "
                     + BPDA_HOWTO),
    Rule(id="BASTION-EV-105", title="Robust accuracy does not fall toward 0 at a large ε: gradient masking",
         threat="evasion-whitebox", default_severity=Severity.high,
         help=_MASKING_HELP + " With an ε that spans the whole input range any input can be turned into any other, "
                              "so a working attack fools (almost) every input (Carlini et al. 2019, arXiv:1902.06705).",
         remediation=_ADAPTIVE + "find the step the gradients do not pass through (rounding, quantisation, a "
                     "saturated softmax, a randomised layer) and attack it with a differentiable substitute (BPDA) or "
                     "in expectation (EOT). If some features are immutable, set large_eps or the tolerated accuracy "
                     "to what they allow. " + BPDA_HOWTO),
    Rule(id="BASTION-EV-106", title="An unbounded attack does not reach 100% success: gradient masking",
         threat="evasion-whitebox", default_severity=Severity.medium,
         help=_MASKING_HELP + " An attack without a perturbation budget must fool every correctly classified input; "
                              "where it does not, it is not following the model (Carlini et al. 2019, "
                              "arXiv:1902.06705).",
         remediation=_ADAPTIVE + "look for non-differentiable or randomised steps and attack them with BPDA or EOT; "
                     "check that the model's output is logits. " + BPDA_HOWTO),
    Rule(id="BASTION-EV-110", title="A defense only obfuscates gradients: an adaptive attack breaks it",
         threat="evasion-whitebox", default_severity=Severity.high,
         help=_MASKING_HELP + " The same attack, run through the defense's declared adaptive path (BPDA for "
                              "non-differentiable steps, EOT for randomised ones), fools inputs the non-adaptive run "
                              "did not: the defense is credited with the adaptive figure only.",
         remediation="Do not rely on input transformations for robustness: train the model robustly (bastion harden "
                     "with pgd-at or trades) and evaluate every defense adaptively (the defense-eval check, or any "
                     "white-box attack on the defended target, which takes the adaptive path by default)."),
    Rule(id="BASTION-EV-111", title="A detector of adversarial inputs is bypassed by an adaptive attack",
         threat="evasion-whitebox", default_severity=Severity.high,
         help="A detector that flags the inputs of attacks unaware of it can still be evaded: an attack that "
              "optimises against the classifier and the detector together finds inputs that are misclassified and "
              "not flagged (Carlini & Wagner 2017, arXiv:1705.07263).",
         remediation="Do not count on a detector for robustness against an attacker who may know it: use it to raise "
                     "the cost of attacks and to watch traffic, and harden the model itself (bastion harden)."),
]

#: Evasion rule of each attack family.
EVASION_RULE = {"evasion-whitebox": "BASTION-EV-001", "evasion-blackbox": "BASTION-EV-002",
                "evasion-transfer": "BASTION-EV-003"}
MINIMAL_RULE = "BASTION-EV-010"
OBFUSCATION_RULE = "BASTION-EV-110"
DETECTOR_RULE = "BASTION-EV-111"
#: Gradient-masking rule of each sanity check.
MASKING_RULE = {"randomized-outputs": "BASTION-EV-101", "output-kind": "BASTION-EV-102",
                "zero-gradients": "BASTION-EV-103", "blackbox-beats-whitebox": "BASTION-EV-104",
                "large-eps": "BASTION-EV-105", "unbounded-attack": "BASTION-EV-106"}
#: The evasion results each sign of masking puts in doubt: those of gradient-based attacks, or of
#: every attack (a randomised model fools any attack judged on a single draw).
MASKING_CONCERNS = {"randomized-outputs": "all", "output-kind": "gradient", "zero-gradients": "gradient",
                    "blackbox-beats-whitebox": "gradient", "large-eps": "gradient", "unbounded-attack": "gradient"}
