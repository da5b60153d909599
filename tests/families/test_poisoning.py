"""Poisoning contract: a label flipper and a BadNets-style backdoor written here; the base holds
every attack to the threat's poisoning fraction and to "what is not listed as poison is intact"."""

from __future__ import annotations

import numpy as np
import pytest
from family_helpers import blobs

from bastion.attacks.poisoning import PoisoningAttack, Trigger
from bastion.core.data import Dataset
from bastion.core.threat import ThreatModel
from bastion.errors import BastionRuntimeError, UsageError


class LabelFlip(PoisoningAttack):
    """Flip the labels of ``n_poison`` random records (binary labels)."""

    name = "label-flip"

    def _poison(self, x, y, n_poison, threat, spec, ctx):
        idx = ctx.rng("records").choice(len(y), n_poison, replace=False)
        y[idx] = 1 - y[idx]
        return x, y, idx, None


class Patch(PoisoningAttack):
    """Inject copies of random records with the last feature set to 1 and label 0 (Gu et al., 2017)."""

    name = "patch"
    backdoor = True

    def _poison(self, x, y, n_poison, threat, spec, ctx):
        trigger = Trigger(mask=np.r_[0, 0, 0, 1.0], pattern=np.r_[0, 0, 0, 1.0], target_class=0)
        k = int(n_poison * len(x) / (len(x) + n_poison))  # injected records count in the final set
        src = ctx.rng("records").choice(len(x), k, replace=False)
        xp = np.r_[x, trigger.apply(x[src])]
        return xp, np.r_[y, np.zeros(k, y.dtype)], np.arange(len(x), len(x) + k), trigger


THREAT = ThreatModel(poisoning_fraction=0.1)


def test_label_flip_poisons_exactly_its_fraction() -> None:
    train = Dataset(*blobs(200, 0))
    res = LabelFlip().poison(train, THREAT)
    assert len(res.poison_indices) == 20 and res.fraction == pytest.approx(0.1)
    changed = np.flatnonzero(res.y != train.y)
    np.testing.assert_array_equal(changed, res.poison_indices)
    np.testing.assert_array_equal(res.x, train.x)
    assert res.dataset().y.shape == (200,)
    from bastion.core.results import CheckResult

    check = CheckResult(name="poison", kind="poisoning")
    res.record(check)
    assert check.values("poison_fraction") == [0.1] and check.values("poisoned_records") == [20.0]


def test_randomness_comes_from_the_run_seed() -> None:
    from bastion.core.run import RunContext

    train = Dataset(*blobs(200, 0))
    a = LabelFlip().poison(train, THREAT, RunContext(seed=1)).poison_indices
    b = LabelFlip().poison(train, THREAT, RunContext(seed=1)).poison_indices
    c = LabelFlip().poison(train, THREAT, RunContext(seed=2)).poison_indices
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_backdoor_trigger_controls_a_model_trained_on_the_poisoned_set() -> None:
    from sklearn.tree import DecisionTreeClassifier

    train = Dataset(*blobs(300, 1))
    res = Patch().poison(train, ThreatModel(poisoning_fraction=0.1))
    assert res.trigger is not None and len(res.poison_indices) <= 0.1 * len(res.x)
    model = DecisionTreeClassifier(random_state=0).fit(res.x, res.y)
    xt, yt = blobs(200, 2)
    ones = xt[yt == 1]
    assert np.mean(model.predict(ones) == 1) > 0.6  # still works on clean inputs
    assert np.mean(model.predict(res.trigger.apply(ones)) == 0) > 0.9  # the trigger flips them


class Cheat(LabelFlip):
    how = ""

    def _poison(self, x, y, n_poison, threat, spec, ctx):
        x, y, idx, trig = super()._poison(x, y, n_poison, threat, spec, ctx)
        if self.how == "over":
            y[:] = 1 - y
            return x, y, np.arange(len(y)), None
        if self.how == "unlisted":
            x[np.setdiff1d(np.arange(len(x)), idx)[0]] += 0.01
        if self.how == "inject":
            return np.r_[x, x[:1]], np.r_[y, y[:1]], idx, None
        return x, y, idx, trig


@pytest.mark.parametrize("how,msg", [("over", "poisoned 200 of 200 records, over"),
                                     ("unlisted", "changed records it did not list"),
                                     ("inject", "injected records it did not list")])
def test_base_refuses_what_the_threat_does_not_allow(how: str, msg: str) -> None:
    attack = Cheat()
    attack.how = how
    with pytest.raises(BastionRuntimeError, match=msg):
        attack.poison(Dataset(*blobs(200, 0)), THREAT)


def test_clean_label_and_backdoor_declarations_are_enforced() -> None:
    class CleanButFlips(LabelFlip):
        clean_label = True

    class BackdoorWithoutTrigger(LabelFlip):
        backdoor = True

    train = Dataset(*blobs(100, 0))
    with pytest.raises(BastionRuntimeError, match="clean-label attack but changed labels"):
        CleanButFlips().poison(train, THREAT)
    with pytest.raises(BastionRuntimeError, match="returned no trigger"):
        BackdoorWithoutTrigger().poison(train, THREAT)
    with pytest.raises(UsageError, match="poisoning_fraction > 0"):
        LabelFlip().poison(train, ThreatModel())
