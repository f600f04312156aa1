"""RMSprop for P same-shaped networks stacked along a leading member dimension: each member's own ("shadow")
optimizer never steps, the stacked step reads its options and makes its update, to rounding."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rmsprop_lightning.optim.functional import state_dtype
from rmsprop_lightning.population.coefficients import (
    STATE_KEYS,
    MemberCoefficients,
    broadcast,
    coefficient,
    coefficients,
    corrections,
    finite,
    member_keys,
    member_options,
    options_signature,
)

FATES = ("alive", "frozen_at")  # per member, saved with the state


def check_alignment(param_groups: list[dict[str, Any]], shadows: Sequence[torch.optim.Optimizer]) -> None:
    """Raises ``ValueError`` unless every stacked parameter is [P, *shape] of each shadow's matching one."""
    if not shadows:
        raise ValueError("StackedRMSprop needs at least one shadow optimizer")
    for member, shadow in enumerate(shadows):
        if len(shadow.param_groups) != len(param_groups):
            raise ValueError(
                f"shadow {member} has {len(shadow.param_groups)} parameter groups, the stacked optimizer "
                f"{len(param_groups)}"
            )
        for index, (group, shadow_group) in enumerate(zip(param_groups, shadow.param_groups, strict=True)):
            stacked, own = list(group["params"]), shadow_group["params"]
            if len(stacked) != len(own):
                raise ValueError(
                    f"group {index}: shadow {member} has"
                    f" {len(own)} parameters, the stacked group {len(stacked)}"
                )
            for position, (param, member_param) in enumerate(zip(stacked, own, strict=True)):
                expected = (len(shadows), *member_param.shape)
                if tuple(param.shape) != expected:
                    raise ValueError(
                        f"group {index}, parameter {position}: stacked shape {tuple(param.shape)}, expected "
                        f"{expected} (members, *shadow {member}'s shape)"
                    )


def candidate(
    param: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    k: MemberCoefficients,
    shaped: MemberCoefficients,
) -> dict[str, Tensor]:
    """Every member's new ``param`` and states after one step, by update_piece's operations in its order;
    ``k``: the coefficients as [P] float64 tensors, ``shaped``: in ``param``'s dtype, shaped to broadcast."""
    step = state["step"] + 1
    correction = corrections(k, step).reciprocal()
    grad = torch.addcmul(grad * shaped.sign, param, shaped.grad_decay)
    square_avg = torch.addcmul(state["square_avg"] * shaped.alpha, grad * shaped.one_minus_alpha, grad)
    new = {"step": step, "square_avg": square_avg}
    denom = square_avg * coefficient(correction, param)
    if "grad_avg" in state:
        new["grad_avg"] = grad_avg = torch.lerp(state["grad_avg"], grad, shaped.center)
        square_scale = -(correction * correction)
        denom = torch.addcmul(denom, grad_avg * coefficient(square_scale, param), grad_avg).clamp_min_(0.0)
    denom = denom.add_(shaped.eps_in).sqrt_().add_(shaped.eps_out)
    new["param"] = torch.addcdiv(param * shaped.param_decay, grad * shaped.grad_step, denom)
    if "momentum_buffer" in state:
        buffer = state["momentum_buffer"] * shaped.momentum
        new["momentum_buffer"] = buffer = torch.addcdiv(buffer, grad * shaped.buffer_scale, denom)
        new["param"] = torch.addcmul(new["param"], buffer, shaped.buffer_step)
    return new


class StackedRMSprop(torch.optim.Optimizer):
    """RMSprop on stacked parameters [P, ...]: member ``i`` steps as its shadow ``shadows[i]`` would.

    Options are read from the shadows at every step, so schedulers act on them. States keep torch's names
    (``step`` is [P]; ``grad_avg``, ``momentum_buffer`` when a member uses them, zero for the others). A
    member whose step is not finite keeps its parameters and states and is frozen for good (:attr:`frozen_at`:
    the :attr:`step_count` that froze it, else -1).
    """

    def __init__(self, param_groups: list[dict[str, Any]], shadows: Sequence[torch.optim.Optimizer]) -> None:
        check_alignment(param_groups, shadows)
        super().__init__(param_groups, {})
        self.shadows = list(shadows)
        device = self.param_groups[0]["params"][0].device
        members = len(self.shadows)
        self.alive = torch.ones(members, dtype=torch.bool, device=device)
        self.frozen_at = torch.full((members,), -1, dtype=torch.int64, device=device)
        self.step_count = 0
        # per group: the options' signature, their coefficients and those shaped for each parameter
        self._coefficients: dict[int, tuple[tuple[Any, ...], MemberCoefficients, dict[Tensor, Any]]] = {}

    def member_coefficients(self, group: int) -> MemberCoefficients:
        """Every member's coefficients in group ``group``: [P] float64 tensors on the parameters' device."""
        device = self.param_groups[group]["params"][0].device
        rows = [coefficients(member_options(shadow, group)) for shadow in self.shadows]
        table = torch.tensor(rows, dtype=torch.float64, device=device)
        return MemberCoefficients(*table.unbind(1))

    def coefficients_for(
        self, group: int
    ) -> tuple[MemberCoefficients, dict[Tensor, MemberCoefficients], bool]:
        """The group's coefficients, per parameter the same shaped for it, and whether an option changed
        (they are rebuilt then)."""
        signature = options_signature(self.shadows, group)
        cached = self._coefficients.get(group)
        changed = cached is None or cached[0] != signature
        if changed:
            k = self.member_coefficients(group)
            shaped = {
                param: MemberCoefficients(*(coefficient(value, param) for value in k))
                for param in self.param_groups[group]["params"]
            }
            cached = self._coefficients[group] = (signature, k, shaped)
        return cached[1], cached[2], changed

    @torch.no_grad()
    def step(
        self, closure: Callable[[], Any] | None = None, losses: Callable[[], Tensor] | None = None
    ) -> Any:
        """One step of every alive member; ``closure`` re-evaluates the model and returns the loss, then
        ``losses()`` each member's [P]: a non-finite one rejects the member's step, as a gradient does."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        accepted = self.alive.clone()
        if losses is not None:
            accepted &= losses().isfinite()
        candidates = []
        for index, group in enumerate(self.param_groups):
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            k, shaped, changed = self.coefficients_for(index)
            for param in params:
                if changed or not self.state.get(param):
                    self._init_state(param, k, index)
                state = self.state[param]
                new = candidate(param, param.grad, state, k, shaped[param])
                accepted &= finite(param.grad) & finite(new["param"])
                candidates.append((param, state, new))
        for param, state, new in candidates:
            for key, value in new.items():
                old = param if key == "param" else state[key]
                old.copy_(torch.where(broadcast(accepted, old), value, old))
        self.frozen_at.masked_fill_(self.alive & ~accepted, self.step_count)
        self.alive = accepted
        self.step_count += 1
        return loss

    def _init_state(self, param: Tensor, k: MemberCoefficients, group: int) -> None:
        """Adds the entries ``param``'s state lacks, as init_state adds them for each member."""
        options = [member_options(shadow, group) for shadow in self.shadows]
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.zeros(len(self.shadows), dtype=state_dtype(), device=param.device)
        if "square_avg" not in state:
            state["square_avg"] = torch.empty_like(param).copy_(broadcast(k.initial_square_avg, param))
        for key in STATE_KEYS[1:]:
            if key not in state and any(key in member_keys(member) for member in options):
                state[key] = torch.zeros_like(param)

    def member_state_dict(self, member: int, saved: dict[str, Any] | None = None) -> dict[str, Any]:
        """The state dict member ``member``'s shadow would have after the same steps (from ``saved``, an
        earlier :meth:`state_dict`, when given): the states its variant keeps, of parameters it stepped."""
        shadow = self.shadows[member]
        states: Any = self.state
        if saved is not None:  # torch numbers the parameters in the order of the groups
            params = [param for group in self.param_groups for param in group["params"]]
            states = {param: saved["state"].get(number, {}) for number, param in enumerate(params)}
        for index, (group, shadow_group) in enumerate(
            zip(self.param_groups, shadow.param_groups, strict=True)
        ):
            keys = member_keys(member_options(shadow, index))
            for param, member_param in zip(group["params"], shadow_group["params"], strict=True):
                shadow.state.pop(member_param, None)
                state = states.get(param, {})
                if "step" not in state or state["step"][member] == 0:
                    continue
                shadow.state[member_param] = {
                    "step": state["step"][member].cpu().clone(),
                    **{key: state[key][member].clone(memory_format=torch.contiguous_format) for key in keys},
                }
        return shadow.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Torch's state dict, plus the members' fates under ``"population"``."""
        fates = {key: getattr(self, key).clone() for key in FATES}
        return {**super().state_dict(), "population": {**fates, "step_count": self.step_count}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads :meth:`state_dict`'s output; the step counters go to their parameters' devices."""
        state_dict = dict(state_dict)
        population = state_dict.pop("population")
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            state["step"] = state["step"].to(param.device)
        for key in FATES:
            setattr(self, key, population[key].to(self.alive.device))
        self.step_count = population["step_count"]
