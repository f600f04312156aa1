"""RMSprop: a superset of ``torch.optim.RMSprop`` that also reproduces TF/Keras, timm, optax and Graves."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from rmsprop_lightning.optim import compiled
from rmsprop_lightning.optim.functional import State, advance, hyper, init_state, rows, update
from rmsprop_lightning.optim.validation import validate_options

log = logging.getLogger(__name__)


class RMSprop(torch.optim.RMSprop):
    r"""RMSprop with the variants that papers and other libraries use.

    Per element, with gradient :math:`g` (negated if ``maximize``), learning rate
    :math:`\gamma`, step :math:`t`::

        g ← g + λθ                                   (weight_decay λ; decoupled: θ ← (1-γλ)θ)
        v ← αv + (1-α)g²                             (square_avg, starts at initial_square_avg)
        m ← αm + (1-α)g                              (grad_avg, centered only)
        v̂, m̂ = v/(1-αᵗ), m/(1-αᵗ)                    (bias_correction; else v, m)
        s = max(v̂ - m̂², 0) if centered else v̂
        d = √(s + ε) if eps_in_sqrt else √s + ε
        no momentum:      θ ← θ - γ g/d
        momentum μ:       b ← μb + c g/d,  c = γ if lr_in_momentum else 1
                          θ ← θ - (γ/c)·b                      (plain)
                          θ ← θ - γ g/d - (γ/c)·μb              (nesterov, optax's form)

    With every keyword-only option at its default the parameters and the state (torch's
    names ``step``, ``square_avg``, ``momentum_buffer``, ``grad_avg``) are bit-identical
    to ``torch.optim.RMSprop``'s, so checkpoints move between the two. The one deliberate
    difference: the centered variance is clamped at zero, where torch takes the root of a
    negative number and returns NaN.

    Args:
        params: parameters or parameter groups.
        lr, alpha, eps, weight_decay, momentum, centered, foreach, maximize: as in torch, in torch's order
            (``foreach=None`` batches all tensors but large or half-precision CPU ones, giving torch's bits).
            ``lr`` is a number. ``capturable`` and ``differentiable`` (CUDA graphs, gradients through the
            step) must stay ``False``.
        eps_in_sqrt: add ``eps`` inside the square root (TensorFlow, Keras, timm, optax, Graves).
        initial_square_avg: start value of ``square_avg`` (1.0 in TF1 and timm's RMSpropTF).
        lr_in_momentum: accumulate ``lr * g / d`` in the momentum buffer (Keras, TF, timm, optax);
            differs from torch's placement once the learning rate changes.
        nesterov: Nesterov momentum as optax's ``trace(nesterov=True)``; needs ``momentum > 0``.
        bias_correction: divide the running averages by ``1 - alpha**t`` as optax does (with ``centered``
            and ``initial_square_avg=0`` the first variance is 0 up to rounding, so the first step is up
            to ``lr·g/sqrt(eps)`` with ``eps_in_sqrt`` and ``lr·g/eps`` without: that bound in float64, a
            fraction of it set by the rounding in float32).
        decoupled_weight_decay: shrink the parameters by ``1 - lr * weight_decay`` instead of adding
            ``weight_decay * θ`` to the gradient.
        fast: run each step as one ``torch.compile``-d graph, equal to the eager step up to rounding and
            worth its compile time for large models on long runs; if compiling fails it logs a warning once
            and steps eagerly. ``None`` means ``False``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        eps_in_sqrt: bool = False,
        initial_square_avg: float = 0.0,
        lr_in_momentum: bool = False,
        nesterov: bool = False,
        bias_correction: bool = False,
        decoupled_weight_decay: bool = False,
        fast: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "eps_in_sqrt": eps_in_sqrt,
            "initial_square_avg": initial_square_avg,
            "lr_in_momentum": lr_in_momentum,
            "nesterov": nesterov,
            "bias_correction": bias_correction,
            "decoupled_weight_decay": decoupled_weight_decay,
            "fast": fast,
        }
        validate_options(defaults)
        self._fast_failed = False
        torch.optim.Optimizer.__init__(self, params, defaults)

    @property
    def fast_failed(self) -> bool:
        """Whether ``torch.compile`` failed, so that its ``fast=True`` groups step eagerly from then on."""
        return self._fast_failed

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group after checking its options (with the defaults it inherits)."""
        validate_options({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a pickled optimizer or a loaded state dict, also one written by torch's RMSprop."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self.__dict__.setdefault("_fast_failed", False)

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[State]]:
        """The group's parameters that have a gradient, their gradients and their (initialised) states."""
        params = [param for param in group["params"] if param.grad is not None]
        for param in params:
            if param.grad.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            init_state(
                self.state[param],
                param,
                momentum=group["momentum"],
                centered=group["centered"],
                initial_square_avg=group["initial_square_avg"],
            )
        return params, [param.grad for param in params], [self.state[param] for param in params]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every group is gathered and checked first: one that raises leaves all groups unstepped
        gathered = [(group, *self._gather(group), *hyper(group)) for group in self.param_groups]
        compiled_parts: list[compiled.Part] = []
        for group, params, grads, states, variant, coefficients in gathered:
            if not params:
                continue
            corrections = advance(states, group["alpha"], group["bias_correction"])
            part = (rows(params, grads, states), corrections, variant, coefficients)
            if group["fast"] and not self._fast_failed:
                compiled_parts.append(part)
            else:
                update(*part, foreach=group["foreach"])
        if compiled_parts:
            self._compiled_step(compiled_parts)
        return loss

    def _compiled_step(self, parts: list[compiled.Part]) -> None:
        """The fast step of ``parts``; the eager one, after one logged warning, if ``torch.compile`` fails."""
        try:
            compiled.step(parts)
        except Exception as error:  # any compiler failure (no C++ compiler, unsupported op, ...)
            self._fast_failed = True
            limit = "RecompileLimit" in type(error).__name__  # torch's cap on the graphs of one function
            cause = (
                "; each set of parameters with a gradient, dtypes and options is a graph, counted over every "
                "RMSprop of this process (a one-process multirun's jobs too; joblib_local gives each job its "
                "own process)"
                if limit
                else ""
            )
            # logged, not warned: nothing in the calling code causes it, and a run's log keeps it
            log.warning(
                "RMSprop fast step unavailable (torch.compile failed: %s: %s%s); using the eager step",
                type(error).__name__,
                error,
                cause,
            )
            for part in parts:
                update(*part, foreach=None)


def fast_fell_back(optimizers: Iterable[torch.optim.Optimizer]) -> bool | None:
    """Whether a ``fast=True`` RMSprop among ``optimizers`` took eager steps after a compile failure;
    ``None`` when none asked for the fast step."""
    asked = [o for o in optimizers if isinstance(o, RMSprop) and any(g["fast"] for g in o.param_groups)]
    return any(optimizer.fast_failed for optimizer in asked) if asked else None
