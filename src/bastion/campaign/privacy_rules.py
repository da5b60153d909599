"""Rules of the privacy and theft checks, registered in the catalogue of :mod:`bastion.core.rules`:
membership inference (``CATALOGUE``, ids ``BASTION-MI-*``) and model extraction
(``EXTRACTION_CATALOGUE``, ids ``BASTION-EX-*``). Kept free of heavy imports: reports load it to
describe findings."""

from __future__ import annotations

from bastion.core.results import Severity
from bastion.core.rules import Rule

_MI_HELP = ("A membership-inference attack tells, from the model's answers, whether a given record was in its "
            "training data (Shokri et al. 2017; Carlini et al. 2022). What matters is how many training records an "
            "attacker identifies while almost never accusing a record that was not there: the true-positive rate "
            "at a low false-positive rate (1 %, 0.1 %).")

CATALOGUE: list[Rule] = [
    Rule(id="BASTION-MI-001", title="Model reveals which records it was trained on (membership inference)",
         threat="membership-inference", help=_MI_HELP,
         remediation=(
             "Train with differential privacy (DP-SGD, e.g. Opacus) for a provable bound, or at least regularise "
             "(weight decay, dropout, early stopping, more training data) until the train/test gap closes; return "
             "labels or rounded top-k scores rather than full probabilities; then re-run this scan. The records "
             "listed as most exposed are those to review first.")),
    Rule(id="BASTION-MI-002", title="Model is much more accurate on its training data than on new data",
         threat="membership-inference", default_severity=Severity.low,
         help=("The gap between training and test accuracy is what the simplest membership attack exploits "
               "(Yeom et al. 2018: its membership advantage equals the gap). A large gap means the model memorises "
               "its training records."),
         remediation=("Regularise (weight decay, dropout, early stopping, data augmentation) or train on more data "
                      "until the gap closes; check it on held-out data before deployment.")),
]

MEMBERSHIP_RULE = "BASTION-MI-001"
GAP_RULE = "BASTION-MI-002"

EXTRACTION_CATALOGUE: list[Rule] = [
    Rule(id="BASTION-EX-001", title="Model can be copied through its prediction API (model extraction)",
         threat="model-extraction",
         help=("An attacker who can query the model trains or solves for a copy that agrees with it on most inputs "
               "(Tramèr et al. 2016; Orekondy et al. 2019, Knockoff Nets; Correia-Silva et al. 2018, Copycat CNN). "
               "The copy is stolen intellectual property and a white-box stand-in for crafting evasion inputs that "
               "transfer to the real model. Fidelity is the share of held-out inputs on which the copy and the "
               "model agree."),
         remediation=("Return labels or rounded top-k scores rather than full probabilities (equation solving needs "
                      "exact scores); enforce per-client query budgets and rate limits; monitor clients with an "
                      "extraction detector (PRADA, class coverage) and block those that alarm; re-run this scan with "
                      "the hardened API to measure the fidelity an attacker still reaches within the budget.")),
]

EXTRACTION_RULE = "BASTION-EX-001"
