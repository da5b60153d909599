"""Rules of the poisoning check (ids ``BASTION-PO-*``), registered in the catalogue of
:mod:`bastion.core.rules`. Kept free of heavy imports: reports load it to describe findings."""

from __future__ import annotations

from bastion.core.results import Severity
from bastion.core.rules import Rule

_PO_HELP = ("A poisoning attacker controls some of the training records (user-submitted data, an online-learning "
            "loop, a scraped public data set) and changes their labels so that the model learns wrong answers: "
            "everywhere (random flips) or for one class (targeted flips). What matters is how few poisoned records "
            "it takes.")
_BD_HELP = ("A backdoor attacker writes a trigger (a small patch, a faint pattern, chosen values of a few features) "
            "into some training records labelled with the class they want. The trained model behaves normally on "
            "clean inputs and answers that class whenever the trigger is present (Gu et al. 2017; Chen et al. 2017).")

CATALOGUE: list[Rule] = [
    Rule(id="BASTION-PO-001", title="Few poisoned training labels change the model's answers (label flipping)",
         threat="poisoning", help=_PO_HELP,
         remediation=("Control where training labels come from (provenance, signed data sets, review of user-submitted "
                      "labels); screen the training data for suspicious records before each training (the detectors "
                      "of this check: k-NN label disagreement, out-of-fold loss) and compare accuracy per class with "
                      "the previous model before deploying.")),
    Rule(id="BASTION-PO-002", title="A trigger planted in few training records controls the model (backdoor)",
         threat="backdoor", help=_BD_HELP,
         remediation=("Train only on data whose provenance you control; screen the training data with activation "
                      "clustering or spectral signatures (neural networks) and retrain without what they flag; screen "
                      "inputs at inference for triggers (STRIP); prefer fine-tuning on trusted data over reusing a "
                      "model of unknown origin.")),
    Rule(id="BASTION-PO-003", title="Data sanitisation does not undo the simulated poisoning",
         threat="poisoning", default_severity=Severity.medium,
         help=("Each detector of poisoned records flags the records it finds most suspicious (1.5x the expected "
               "poison rate); the model is retrained without them. When even the best detector misses most of the "
               "poison, or the retrained model still obeys the attacker, sanitisation is no defence for this model "
               "and data."),
         remediation=("Do not rely on after-the-fact sanitisation: secure the data pipeline (provenance, access "
                      "control, review), use detectors suited to the model (activation-based ones for neural "
                      "networks) with a realistic poison rate, and keep a trusted held-out set to compare models.")),
    Rule(id="BASTION-PO-004", title="The training function fails on poisoned data",
         threat="poisoning", default_severity=Severity.low,
         help=("The trainer raised an error on a poisoned training set: the simulation could not measure that poison "
               "fraction. A pipeline that crashes on unusual data may be driven into a denial of service by poison."),
         remediation=("Make training robust to unusual labels and values (validate and report bad records instead of "
                      "failing), then re-run the check so that every fraction is measured.")),
]

FLIP_RULE = "BASTION-PO-001"
BACKDOOR_RULE = "BASTION-PO-002"
SANITISE_RULE = "BASTION-PO-003"
TRAIN_FAILED_RULE = "BASTION-PO-004"
