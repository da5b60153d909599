"""DP-SGD (Abadi et al., 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133) through
Opacus: per-sample gradients clipped to ``max_grad_norm``, Gaussian noise added to their sum, batches
drawn by Poisson sampling, and an accountant (RDP or PRV) that gives the (ε, δ) spent. The noise
multiplier is the one Opacus's ``PrivacyEngine.make_private_with_epsilon`` calibrates for the
target ε and δ over the planned epochs.

Per-sample clipping is by default one-pass book-keeping (:mod:`bastion.defenses.bk_clipping`, Bu
et al. 2023) for models made of Linear and Conv2d layers, else Opacus's ghost clipping (Li et al.
2022, "Large Language Models Can Be Strong Differentially Private Learners", arXiv:2110.05679;
Opacus's fast gradient clipping): each sample's gradient norm from the layer's activations and
output gradients without materialising the per-sample gradients, then a second backward pass of
the clipped-weighted loss gives the sum of clipped gradients. ``grad_sample_mode="hooks"``
materialises them (Opacus's default). All three give the same clipped sum; Opacus adds the noise
and keeps the accounts in every mode.

The guarantee holds only under the accountant's assumptions, so this module refuses what would
silently break them: a sampler that is not uniform (a weighted or custom one; sample weights), a
δ of 1/n or more, and layers whose per-sample gradients Opacus cannot compute. BatchNorm mixes the
samples of a batch; it is converted to GroupNorm (``ModuleValidator.fix``) and the layers converted
are named in the notes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bastion.core.defense import TrainingDefense
from bastion.core.params import Number, Params
from bastion.errors import UsageError

if TYPE_CHECKING:
    from bastion.core.training import TrainSetup

def opacus() -> Any:
    """The opacus package, or the one-line ``install bastion[dp]`` error."""
    try:
        import opacus as _opacus
    except ImportError as exc:
        from bastion.core.extras import missing_extra

        raise (missing_extra(exc) or exc) from None
    return _opacus


class DPSGDParams(Params):
    epsilon: Number = Field(..., gt=0, description="Target ε of the whole training run.")
    delta: Number = Field(1e-5, gt=0, lt=1, description="Target δ; must be below 1/n (n: training samples).")
    max_grad_norm: Number = Field(1.0, gt=0, description="Per-sample gradient clipping norm C.")
    accountant: Literal["rdp", "prv"] = Field("prv", description="Opacus's accountant: 'rdp' (Mironov 2017) "
                                                                 "or 'prv' (Gopi et al. 2021, tighter).")
    grad_sample_mode: Literal["bk", "ghost", "hooks"] = Field(
        "bk", description="How per-sample gradients are clipped: 'bk' (one backward pass, Linear and Conv2d "
                          "layers; other models use 'ghost'), 'ghost' (Opacus's ghost clipping, two backward "
                          "passes) or 'hooks' (Opacus's per-sample gradients); the same clipped sum.")


class DPSGD(TrainingDefense):
    """``dp-sgd``: differentially private training (Abadi et al. 2016) with Opacus. The spent ε and
    δ are in the run's ``state["privacy"]`` when training ends (the accountant's figure for the
    steps taken).

    >>> from bastion.defenses.dp_sgd import DPSGD
    >>> defense = DPSGD(epsilon=3.0, delta=1e-5)
    """

    name = "dp-sgd"
    Params = DPSGDParams
    evasion = False  # against membership inference: no evasion ε needed

    def check(self, module: Any, n_samples: int, *, weighted: bool = False) -> list[str]:
        """Refuse sample weights, a δ of 1/n or more and layers Opacus cannot train privately
        (with its reasons); notes name the BatchNorm layers that will become GroupNorm."""
        if weighted:
            raise UsageError("dp-sgd: sample weights make the sampling non-uniform, which breaks the privacy "
                             "accounting", hint="train without sample weights (or resample the data beforehand)")
        delta = float(self.params.delta)
        if delta >= 1.0 / n_samples:
            raise UsageError(f"dp-sgd: delta={delta:g} must be below 1/n = {1.0 / n_samples:.3g} "
                             f"(n = {n_samples} training samples)",
                             hint="a δ of 1/n or more allows releasing a sample outright; use e.g. 1/(10 n)")
        from bastion.defenses.bk_clipping import supported as bk_supported

        fixed, notes = fix_module(module)
        if self.params.grad_sample_mode == "bk" and not bk_supported(fixed):
            notes.append("dp-sgd: one-pass clipping (grad_sample_mode bk) handles Linear and Conv2d layers only; "
                         "this model is clipped with Opacus's ghost clipping (the same clipped sum, slower)")
        return notes

    def setup_hook(self, setup: TrainSetup) -> None:
        """Fix the module, make it, its optimiser and the batches private (Poisson sampling)."""
        import torch

        if setup.loss_hook:
            raise UsageError("dp-sgd cannot be combined with a defense that replaces the training objective "
                             "(e.g. trades)", hint="combine dp-sgd with batch defenses only (pgd-at, gaussian-noise)")
        notes = self.check(setup.module, setup.n, weighted=setup.weighted)
        module, _ = fix_module(setup.module)
        module = module.to(setup.device)
        optimizer = setup.make_optimizer(module.parameters())
        seed = int(torch.randint(0, 2**62, (1,), generator=setup.generator).item())
        indices = torch.utils.data.TensorDataset(torch.arange(setup.n))
        loader = torch.utils.data.DataLoader(indices, batch_size=min(setup.batch_size, setup.n), shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        from bastion.defenses.bk_clipping import BookKeeper
        from bastion.defenses.bk_clipping import supported as bk_supported

        mode = self.params.grad_sample_mode
        if mode == "bk" and not bk_supported(module):
            mode = "ghost"
        engine, net, private_opt, private_loader = make_private(
            module, optimizer, loader, epsilon=float(self.params.epsilon), delta=float(self.params.delta),
            epochs=setup.epochs, max_grad_norm=float(self.params.max_grad_norm),
            accountant=self.params.accountant, seed=seed, grad_sample_mode="ghost" if mode == "bk" else mode)
        device = setup.device

        def batches(epoch: int) -> Any:  # the Poisson sampler's index batches (no per-sample dataset fetch)
            return (torch.as_tensor(list(b), dtype=torch.long, device=device) for b in private_loader.batch_sampler)

        net.disable_hooks()  # per-sample gradients only inside a step (not for crafted batches or evaluations)

        @contextmanager
        def hooked() -> Iterator[None]:
            net.enable_hooks()
            try:
                with warnings.catch_warnings():  # torch's note on inputs without gradients, once per step
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    yield
            finally:
                net.disable_hooks()

        setup.module, setup.net, setup.optimizer, setup.batches = module, net, private_opt, batches
        setup.step_context = hooked
        if mode in ("ghost", "hooks"):
            handles = standard_layout_inputs(module)
            setup.cleanup.append(lambda: [h.remove() for h in handles])
        if mode == "ghost":
            setup.backward = lambda losses: ghost_backward(net, private_opt, losses)
        elif mode == "bk":  # Opacus's ghost-mode optimiser (noise, scaling, accounts), bastion's clipping
            net.remove_hooks()
            keeper = BookKeeper(module, float(self.params.max_grad_norm))
            setup.net, setup.backward, setup.step_context = module, keeper.backward, keeper.step
            setup.cleanup.append(keeper.close)
            private_opt.accumulate = lambda: _take_clipped_sum(private_opt)
        privacy: dict[str, Any] = {
            "mechanism": "dp-sgd", "accountant": self.params.accountant, "target_epsilon": float(self.params.epsilon),
            "delta": float(self.params.delta), "epsilon": 0.0, "noise_multiplier": float(private_opt.noise_multiplier),
            "max_grad_norm": float(self.params.max_grad_norm), "grad_sample_mode": mode,
            "sample_rate": 1.0 / len(loader),
            "steps": 0, "notes": notes}
        setup.state["privacy"] = privacy

        def spent() -> None:  # when training ends (done, stopped early or failed): the accountant's ε so far
            net.cleanup()
            privacy["steps"] = sum(n for _, _, n in engine.accountant.history)
            privacy["epsilon"] = float(engine.get_epsilon(privacy["delta"])) if privacy["steps"] else 0.0

        setup.cleanup.append(spent)


def standard_layout_inputs(module: Any) -> list[Any]:
    """Make every Conv2d/Conv3d of ``module`` take its input in the standard (NCHW) layout; returns
    the hook handles. Opacus 1.6's per-sample convolution gradients (``unfold2d``/``unfold3d``,
    hooks and ghost modes) read a channels-last input as if it were standard: on the CPU, where
    oneDNN may return channels-last outputs, the per-sample weight gradients of a convolution after
    another one came out as zeros (hooks: that layer trained on noise alone; ghost: its share of the
    per-sample norms was missing, so samples were clipped too little for the guarantee)."""
    import torch.nn as nn

    def standard(m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].contiguous(), *args[1:])

    return [m.register_forward_pre_hook(standard) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]


def _take_clipped_sum(optimizer: Any) -> None:
    """Opacus's ``accumulate`` for one backward pass per step: each ``.grad`` (a fresh tensor from
    :class:`~bastion.defenses.bk_clipping.BookKeeper`) is the sum the noise is added to, taken as
    it is (Opacus deep-copies it, a copy of every parameter per step)."""
    for p in optimizer.params:
        p.summed_grad = p.grad


def fix_module(module: Any) -> tuple[Any, list[str]]:
    """``module`` made trainable by Opacus: BatchNorm layers converted to GroupNorm (a new module;
    the notes name them), refused with Opacus's reasons when other layers are incompatible."""
    lib = opacus()
    validator = lib.validators.ModuleValidator

    def problems(m: Any) -> list[Exception]:
        return [*validator.validate(m, strict=False), *lib.GradSampleModule.validate(m, strict=False)]

    module.train()  # what is validated: the module as it trains
    if not problems(module):
        return module, []
    before = {name: type(m).__name__ for name, m in module.named_modules()}
    fixed = _one_group_for_batchnorm1d(validator.fix(module), before)
    remaining = problems(fixed)
    if remaining:
        reasons = "; ".join(sorted({str(e) for e in remaining}))
        raise UsageError(f"dp-sgd cannot train this model privately: {reasons}",
                         hint="replace the layers named above (Opacus computes per-sample gradients only for "
                              "layers whose outputs depend on one sample each)")
    changed = [f"{name or '(root)'} ({before[name]} -> {type(m).__name__})" for name, m in fixed.named_modules()
               if name in before and before[name] != type(m).__name__]
    notes = [f"dp-sgd: converted {', '.join(changed)}: BatchNorm mixes the samples of a batch; the hardened "
             f"weights are for the converted architecture"] if changed else []
    return fixed, notes


def _one_group_for_batchnorm1d(fixed: Any, before: dict[str, str]) -> Any:
    """Opacus turns BatchNorm1d(C) into GroupNorm(min(32, C), C): on (N, C) features each group then
    holds one value per sample and its output is constant (and fails on a batch of one). A
    BatchNorm1d becomes GroupNorm(1, C) instead: each sample normalised over its C features."""
    import torch.nn as nn

    for name, m in list(fixed.named_modules()):
        if before.get(name) == "BatchNorm1d" and isinstance(m, nn.GroupNorm):
            parent, _, child = name.rpartition(".")
            setattr(fixed.get_submodule(parent) if parent else fixed, child,
                    nn.GroupNorm(1, m.num_channels, eps=m.eps, affine=m.affine))
    return fixed


def check_uniform_loader(loader: Any) -> None:
    """Refuse a data loader whose sampling is not uniform (a weighted or custom sampler, a custom
    batch sampler): Opacus's accounting assumes every sample is drawn with the same probability."""
    import torch.utils.data as tud

    sampler = loader.sampler
    batch_sampler = loader.batch_sampler
    uniform = (isinstance(sampler, tud.SequentialSampler)
               or (type(sampler) is tud.RandomSampler and not sampler.replacement
                   and sampler.num_samples == len(sampler.data_source)))
    if batch_sampler is not None and type(batch_sampler) is not tud.BatchSampler:
        raise UsageError(f"dp-sgd: the data loader's batch sampler is a {type(batch_sampler).__name__}; the privacy "
                         f"accounting needs uniform sampling", hint="use a plain DataLoader(dataset, batch_size, "
                                                                    "shuffle=True): Opacus replaces it by Poisson sampling")
    if not uniform:
        raise UsageError(f"dp-sgd: the data loader's sampler is a {type(sampler).__name__}, which does not draw every "
                         f"sample with the same probability; the privacy accounting would silently be wrong",
                         hint="use a plain DataLoader(dataset, batch_size, shuffle=True): Opacus replaces it by "
                              "Poisson sampling")


def make_private(module: Any, optimizer: Any, loader: Any, *, epsilon: float, delta: float, epochs: int,
                 max_grad_norm: float, accountant: str = "prv", seed: int = 0,
                 grad_sample_mode: str = "hooks") -> tuple[Any, Any, Any, Any]:
    """Opacus's ``make_private_with_epsilon`` with Poisson sampling, after refusing a non-uniform
    ``loader``: returns the PrivacyEngine (its ``get_epsilon(delta)`` is the ε spent), the module
    that computes per-sample gradients, the private optimiser and the Poisson data loader. For
    training loops of your own; ``loader.generator`` seeds the sampling, ``seed`` the noise. With
    ``grad_sample_mode="ghost"`` each step's backward pass is :func:`ghost_backward`."""
    import torch

    check_uniform_loader(loader)
    engine = opacus().PrivacyEngine(accountant=accountant)
    out = engine.make_private_with_epsilon(
        module=module, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
        epochs=epochs, max_grad_norm=max_grad_norm, poisson_sampling=True, grad_sample_mode=grad_sample_mode,
        noise_generator=torch.Generator(device=next(module.parameters()).device).manual_seed(seed))
    net, opt, private_loader = out[0], out[1], out[-1]  # ghost mode also returns a criterion wrapper
    return engine, net, opt, private_loader


def ghost_backward(net: Any, optimizer: Any, losses: Any) -> None:
    """One step's backward pass in ghost mode from the batch's per-sample ``losses``: the sum of
    the clipped per-sample gradients in each parameter's ``.grad`` (Opacus's
    ``DPTensorFastGradientClipping``: a pass for the norms, one for the clipped-weighted loss); the
    optimiser then adds the noise. An empty (Poisson) batch contributes zero gradients."""
    import torch

    if len(losses) == 0:
        for p in optimizer.params:
            p.grad = torch.zeros_like(p)
        return
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    DPTensorFastGradientClipping(net, optimizer, losses, loss_reduction="mean").backward()
