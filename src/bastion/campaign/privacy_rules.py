"""Rules of the privacy and theft checks, registered in the catalogue of :mod:`bastion.core.rules`:
membership inference, attribute inference and model inversion (``CATALOGUE``, ids
``BASTION-MI-*``) and model extraction
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

CATALOGUE += [
    Rule(id="BASTION-MI-003", title="Model reveals a sensitive attribute of its records (attribute inference)",
         threat="model-inversion", default_severity=Severity.medium,
         help=("An attribute-inference attack fills each possible value of a sensitive column into a record whose "
               "other columns and label it knows, and reads which value the model finds most consistent "
               "(Fredrikson et al. 2014; Yeom et al. 2018), or learns that mapping from records whose value it "
               "knows. What counts is its gain over an attacker without the model, who imputes the value from the "
               "same columns (Jayaraman & Evans 2022): that gain is what the model leaks."),
         remediation=("Drop the sensitive column from the model's inputs if the task does not need it; otherwise "
                      "regularise or train with differential privacy (DP-SGD) so the model stops memorising records, "
                      "and return labels or rounded scores rather than full probabilities; then re-run this scan.")),
    Rule(id="BASTION-MI-004", title="Model inversion reconstructs what each class's records look like",
         threat="model-inversion", default_severity=Severity.medium,
         help=("A model-inversion attack searches for the input the model is most confident belongs to a class "
               "(Fredrikson et al. 2015, MI-Face). When the reconstructions resemble the class's real records more "
               "than other classes' ones, the model's answers reveal what its training data look like — a face for "
               "a name, a typical record for a diagnosis."),
         remediation=("Return labels or rounded top-k scores instead of full probabilities (inversion follows the "
                      "confidence), rate-limit and monitor queries, and regularise or train with differential "
                      "privacy; where a class stands for one person, reconsider training on identifying data.")),
]

CATALOGUE += [
    Rule(id="BASTION-MI-005", title="An output defense leaves membership inference and extraction where they were",
         threat="membership-inference", default_severity=Severity.medium,
         help=("Output hardening (top-k, rounding, reverse sigmoid, noise on the scores) changes what the API "
               "answers. When membership inference and model extraction reach the same figures through it as "
               "without it (within their 95 % intervals), the defense buys no protection against these attacks "
               "while it is counted on for some."),
         remediation=("Do not rely on this defense against membership inference or extraction: train with "
                      "differential privacy (DP-SGD), regularise until the train/test gap closes, answer labels only, "
                      "and enforce per-client query budgets; re-run the privacy-defense-eval check.")),
    Rule(id="BASTION-MI-006", title="An output defense costs accuracy", threat="membership-inference",
         default_severity=Severity.low,
         help=("A defense that changes the answered top-1 label (rounding ties, noise without keep_label) makes "
               "the model wrong where it was right. The cost is the drop in task accuracy, or the share of answers "
               "whose label differs from the undefended model's."),
         remediation=("Choose parameters that keep the top-1 label (keep_label: true, more decimals), or a defense "
                      "that keeps it by construction (top-k, reverse sigmoid, label-only).")),
    Rule(id="BASTION-MI-007", title="A randomised output defense's noise is averaged away by repeated queries",
         threat="membership-inference", default_severity=Severity.medium,
         help=("Noise drawn afresh at every query hides the scores only from an attacker who asks once: one who "
               "sends the same input k times and averages the answers divides the noise's variance by k (the "
               "expectation over the randomness, Athalye et al. 2018). When membership inference or extraction "
               "asked once per input reaches clearly less than the same attack averaging repeated answers, a "
               "single-query evaluation overstates the protection."),
         remediation=("Credit the defense only with the averaging attacker's figures; answer the same input the same "
                      "way (noise seeded by a keyed hash of the input), enforce per-client query budgets and detect "
                      "repeated queries, or use a defense that does not rely on fresh noise (DP-SGD, label-only).")),
]

MEMBERSHIP_RULE = "BASTION-MI-001"
GAP_RULE = "BASTION-MI-002"
ATTRIBUTE_RULE = "BASTION-MI-003"
INVERSION_RULE = "BASTION-MI-004"
USELESS_DEFENSE_RULE = "BASTION-MI-005"
DEFENSE_COST_RULE = "BASTION-MI-006"
AVERAGED_AWAY_RULE = "BASTION-MI-007"

EXTRACTION_CATALOGUE: list[Rule] = [
    Rule(id="BASTION-EX-001", title="Model can be copied through its prediction API (model extraction)",
         threat="model-extraction",
         help=("An attacker who can query the model trains or solves for a copy that agrees with it on most inputs "
               "(Tramèr et al. 2016; Orekondy et al. 2019, Knockoff Nets; Correia-Silva et al. 2018, Copycat CNN). "
               "The copy is stolen intellectual property and a white-box stand-in for crafting evasion inputs that "
               "transfer to the real model. Fidelity is the share of held-out inputs on which the copy and the "
               "model agree."),
         remediation=("Return labels or rounded top-k scores rather than full probabilities (equation solving needs "
                      "exact scores); enforce per-client query budgets and rate limits; monitor clients with the "
                      "extraction detectors (prada, query-distribution, query-coverage) and block those that alarm; "
                      "re-run this scan with the hardened API to measure the fidelity an attacker still reaches "
                      "within the budget.")),
]

EXTRACTION_RULE = "BASTION-EX-001"
