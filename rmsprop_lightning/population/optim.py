"""RMSprop for a population: P same-shaped networks stacked along a leading member dimension.

Every member keeps its own ordinary ("shadow") optimizer, which never steps: the stacked step
reads each member's options from it at every step and makes the update the member's own
:class:`~rmsprop_lightning.optim.RMSprop` would make, to rounding. A variant a member lacks
enters as a per-member coefficient with an exact neutral element (a factor 1, a term 0), so one
sequence of tensor operations, in :func:`~rmsprop_lightning.optim.functional.update_piece`'s
order, serves every member.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rmsprop_lightning.callbacks.state_norms import BASE_QUANTITIES, group_scopes
from rmsprop_lightning.optim.functional import hyper, state_dtype

# the options torch.optim.RMSprop's groups lack, at the values that give torch's update
TORCH_DEFAULTS = {
    "eps_in_sqrt": False,
    "initial_square_avg": 0.0,
    "lr_in_momentum": False,
    "nesterov": False,
    "bias_correction": False,
    "decoupled_weight_decay": False,
}
OPTION_VALUES = operator.itemgetter(
    "lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize", *TORCH_DEFAULTS
)
STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg")  # in the order init_state adds them


class MemberCoefficients(NamedTuple):
    """A step's scalars (floats for a member, [P] float64 tensors for all), neutral where a variant is off."""

    sign: Any  # -1 with maximize
    grad_decay: Any  # coupled weight decay, else 0
    param_decay: Any  # 1 - lr * weight_decay when decoupled, else 1
    alpha: Any
    one_minus_alpha: Any
    center: Any  # grad_avg's lerp weight: 1 - alpha when centered, else 0
    eps_in: Any  # eps inside the root, else 0
    eps_out: Any  # eps outside the root, else 0
    momentum: Any  # 0 without momentum
    buffer_scale: Any  # c of b ← μb + c·g/d; 0 without momentum
    grad_step: Any  # the step along g/d: -lr, 0 with plain momentum
    buffer_step: Any  # the step along b; 0 without momentum
    bias_correction: Any  # 1 or 0
    centered: Any  # 1 or 0
    lr: Any
    initial_square_avg: Any


def member_options(shadow: torch.optim.Optimizer, group: int) -> dict[str, Any]:
    """The options of ``shadow``'s group ``group``, with RMSprop's defaults where torch's groups lack them."""
    return {**TORCH_DEFAULTS, **shadow.param_groups[group]}


def member_keys(options: Mapping[str, Any]) -> list[str]:
    """The states a member's variant keeps, in the order init_state adds them."""
    return (
        ["square_avg"] + ["momentum_buffer"] * (options["momentum"] > 0) + ["grad_avg"] * options["centered"]
    )


def coefficients(options: Mapping[str, Any]) -> MemberCoefficients:
    """One member's coefficients, from RMSprop's own :func:`~rmsprop_lightning.optim.functional.hyper`."""
    variant, c = hyper(options)
    momentum = variant.momentum
    return MemberCoefficients(
        sign=-1.0 if variant.maximize else 1.0,
        grad_decay=c.grad_decay if variant.grad_decay else 0.0,
        param_decay=c.param_decay if variant.param_decay else 1.0,
        alpha=c.alpha,
        one_minus_alpha=c.one_minus_alpha,
        center=c.one_minus_alpha if variant.centered else 0.0,
        eps_in=c.eps if variant.eps_in_sqrt else 0.0,
        eps_out=0.0 if variant.eps_in_sqrt else c.eps,
        momentum=c.momentum if momentum else 0.0,
        buffer_scale=c.buffer_scale if momentum else 0.0,
        grad_step=c.grad_step if variant.nesterov or not momentum else 0.0,
        buffer_step=c.buffer_step if momentum else 0.0,
        bias_correction=float(variant.bias_correction),
        centered=float(variant.centered),
        lr=float(options["lr"]),
        initial_square_avg=float(options["initial_square_avg"]),
    )


def per_member(tensor: Tensor) -> Tensor:
    """A stacked tensor as [P, n]: one row of elements per member."""
    return tensor.unsqueeze(-1).flatten(1)


def finite(tensor: Tensor) -> Tensor:
    """Per member [P]: whether all its elements of a stacked tensor are finite."""
    return per_member(tensor.isfinite()).all(1)


def broadcast(values: Tensor, like: Tensor) -> Tensor:
    """Per-member ``values`` [P] shaped to broadcast over the member slices of ``like``."""
    return values.view(-1, *[1] * (like.ndim - 1))


def coefficient(values: Tensor, like: Tensor) -> Tensor:
    """Per-member coefficients [P] as a factor of ``like``: in its dtype, broadcast over its member slices."""
    return broadcast(values.to(like.dtype), like)


def corrections(k: MemberCoefficients, step: Tensor) -> Tensor:
    """Per member ``1 - alpha^t`` at step counts ``step`` with bias correction, else 1; in float64 (the
    optimizer's Python floats) where the device has it."""
    precise = torch.float32 if step.device.type == "mps" else torch.float64
    return torch.where(k.bias_correction > 0, 1 - k.alpha.to(precise) ** step.to(precise), 1.0)


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
    """Every member's new ``param`` and states after one step, by update_piece's operations in its order.

    ``k`` holds the coefficients as [P] float64 tensors, ``shaped`` the same in ``param``'s dtype and
    shaped to broadcast over its member slices.
    """
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


def option_values(group: Mapping[str, Any]) -> tuple[Any, ...]:
    """The values of a group's options that enter the coefficients."""
    try:
        return OPTION_VALUES(group)
    except KeyError:  # a torch.optim.RMSprop group
        return OPTION_VALUES({**TORCH_DEFAULTS, **group})


def options_signature(shadows: Sequence[torch.optim.Optimizer], group: int) -> tuple[Any, ...]:
    """Every member's options in group ``group``: the coefficients change only when this does."""
    return tuple(option_values(shadow.param_groups[group]) for shadow in shadows)


class StackedRMSprop(torch.optim.Optimizer):
    """RMSprop on stacked parameters [P, ...]: member ``i`` steps as its shadow ``shadows[i]`` would.

    Options (all of RMSprop's, ``maximize`` included) are read from the shadows' groups at every
    step, so schedulers act on the shadows. State under torch's names: ``step`` ([P]),
    ``square_avg``, ``grad_avg`` when some member is centered, ``momentum_buffer`` when some
    member has momentum (zero for the others). A member's step is accepted when it is
    :attr:`alive` and its gradients and new parameters are all finite; a rejected member keeps
    its parameters and states and is frozen: it is never alive again, so it never changes again
    (:attr:`frozen_at` holds the :attr:`step_count` of the step that froze it, -1 while alive).
    With ``skip_nonfinite`` a rejected member only skips that step, counted in :attr:`skipped`.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        shadows: Sequence[torch.optim.Optimizer],
        *,
        skip_nonfinite: bool = False,
    ) -> None:
        check_alignment(param_groups, shadows)
        super().__init__(param_groups, {})
        self.shadows = list(shadows)
        self.skip_nonfinite = skip_nonfinite
        device = self.param_groups[0]["params"][0].device
        members = len(self.shadows)
        self.alive = torch.ones(members, dtype=torch.bool, device=device)
        self.frozen_at = torch.full((members,), -1, dtype=torch.int64, device=device)
        self.skipped = torch.zeros(members, dtype=torch.int64, device=device)
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
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every alive member; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        accepted = self.alive.clone()
        candidates = []
        for index, group in enumerate(self.param_groups):
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            k, shaped, changed = self.coefficients_for(index)
            for param in params:
                state = (
                    self._init_state(param, k, index)
                    if changed or not self.state.get(param)
                    else self.state[param]
                )
                new = candidate(param, param.grad, state, k, shaped[param])
                accepted &= finite(param.grad) & finite(new["param"])
                candidates.append((param, state, new))
        for param, state, new in candidates:
            for key, value in new.items():
                old = param if key == "param" else state[key]
                old.copy_(torch.where(broadcast(accepted, old), value, old))
        rejected = self.alive & ~accepted
        if self.skip_nonfinite:
            self.skipped += rejected
        else:
            self.frozen_at.masked_fill_(rejected, self.step_count)
            self.alive = accepted
        self.step_count += 1
        return loss

    def _init_state(self, param: Tensor, k: MemberCoefficients, group: int) -> dict[str, Any]:
        """``param``'s state with the entries it lacks added, as init_state adds them for each member."""
        options = [member_options(shadow, group) for shadow in self.shadows]
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.zeros(len(self.shadows), dtype=state_dtype(), device=param.device)
        if "square_avg" not in state:
            state["square_avg"] = torch.empty_like(param).copy_(broadcast(k.initial_square_avg, param))
        for key in STATE_KEYS[1:]:
            if key not in state and any(key in member_keys(member) for member in options):
                state[key] = torch.zeros_like(param)
        return state

    def member_state_dict(self, member: int) -> dict[str, Any]:
        """The state dict member ``member``'s shadow optimizer would have after the same steps.

        Only the states its variant keeps; no state for a parameter the member has not stepped.
        """
        shadow = self.shadows[member]
        for index, (group, shadow_group) in enumerate(
            zip(self.param_groups, shadow.param_groups, strict=True)
        ):
            keys = member_keys(member_options(shadow, index))
            for param, member_param in zip(group["params"], shadow_group["params"], strict=True):
                shadow.state.pop(member_param, None)
                state = self.state.get(param, {})
                if "step" not in state or state["step"][member] == 0:
                    continue
                own = {"step": state["step"][member].cpu().clone()}
                own.update(
                    (key, state[key][member].clone(memory_format=torch.contiguous_format)) for key in keys
                )
                shadow.state[member_param] = own
        return shadow.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """Torch's state dict, plus the members' fates under ``"population"``."""
        state_dict = super().state_dict()
        state_dict["population"] = {
            "alive": self.alive.clone(),
            "frozen_at": self.frozen_at.clone(),
            "skipped": self.skipped.clone(),
            "step_count": self.step_count,
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads :meth:`state_dict`'s output; the step counters go to their parameters' devices."""
        state_dict = dict(state_dict)
        population = state_dict.pop("population")
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            state["step"] = state["step"].to(param.device)
        device = self.alive.device
        self.alive = population["alive"].to(device)
        self.frozen_at = population["frozen_at"].to(device)
        self.skipped = population["skipped"].to(device)
        self.step_count = population["step_count"]


def inverse_step_sizes_(out: Tensor, state: Mapping[str, Tensor], k: MemberCoefficients) -> Tensor:
    """Writes into ``out`` every member's inverse step sizes ``1/s`` of ``state``, in the operations of
    StateNorms' :func:`~rmsprop_lightning.callbacks.state_norms.inverse_step_sizes_`."""

    def each(values: Tensor) -> Tensor:
        return coefficient(values, out)

    correction = corrections(k, state["step"])
    out.copy_(state["square_avg"]).mul_(each(correction))
    if "grad_avg" in state:
        grad_avg = state["grad_avg"]
        out.addcmul_(grad_avg, grad_avg * each(-k.centered)).clamp_min_(0.0)
    out.div_(each(correction.square())).add_(each(k.eps_in)).sqrt_().add_(each(k.eps_out))
    return out.div_(each(k.lr))


class StackedStateNorms:
    """What ``StateNorms(shadow, "optim/", {}, None)`` measures for each member's own optimizer, all at once.

    :attr:`names` is the union of the members' keys, :attr:`applies` [P, K] (on the host) says
    which of them member ``i``'s own optimizer has. Build it after a step; rebuild it when the
    states change (a new state, a member's first accepted step).
    """

    def __init__(self, optimizer: StackedRMSprop) -> None:
        self.optimizer = optimizer
        groups, shadows = optimizer.param_groups, optimizer.shadows
        self.params = params = [param for group in groups for param in group["params"]]
        self.group_of = group_of = [index for index, group in enumerate(groups) for _ in group["params"]]
        states = [optimizer.state.get(param, {}) for param in params]
        self.rms = rms = [
            j for j, state in enumerate(states) if "step" in state
        ]  # those with RMSprop's states
        if not rms:
            raise ValueError("StackedStateNorms needs the optimizer's states: build it after a step")
        # has[i, j]: member i's own optimizer holds a state for params[j], having stepped it
        has = torch.zeros(len(shadows), len(params), dtype=torch.bool)
        for j in rms:
            has[:, j] = states[j]["step"].cpu() > 0
        self.keys = keys = [key for key in STATE_KEYS if any(key in state for state in states)]
        # owns[i, k, j]: that state holds keys[k] too (member i's variant keeps it)
        kept_keys = [[member_keys(member_options(shadow, g)) for g in group_of] for shadow in shadows]
        owns = has.unsqueeze(1) & torch.tensor(
            [
                [[key in state and key in own[j] for j, state in enumerate(states)] for key in keys]
                for own in kept_keys
            ]
        )
        infixes, scopes = [""], [[1.0] * len(params)]
        for index, infix in enumerate(group_scopes(shadows[0].param_groups)):
            if index in group_of:
                infixes.append(infix)
                scopes.append([float(g == index) for g in group_of])
        scope_matrix = torch.tensor(scopes)  # [scope, J]

        quantities = [*BASE_QUANTITIES, *keys]
        names = [f"optim/{infix}{quantity}_norm" for quantity in quantities for infix in infixes]
        names += [f"optim/{infix}effective_lr_mean" for infix in infixes]
        names += [f"optim/{infix}update_to_param_ratio" for infix in infixes]
        names += ["optim/effective_lr_max", "optim/effective_lr_min"]
        norm_mask = torch.cat(
            [torch.ones(len(shadows), len(BASE_QUANTITIES), len(params), dtype=torch.bool), owns], 1
        )
        applies = torch.cat(
            [
                (norm_mask.float() @ scope_matrix.T > 0).flatten(1),
                has.float() @ scope_matrix.T > 0,
                torch.ones(len(shadows), len(infixes), dtype=torch.bool),
                has.any(1, keepdim=True).expand(-1, 2),
            ],
            1,
        )
        kept = applies.any(0)  # the union of the members' keys
        self.names = [name for name, keep in zip(names, kept.tolist(), strict=True) if keep]
        self.applies = applies[:, kept]

        device = params[0].device
        self.kept = kept.nonzero().squeeze(1).to(device)
        self.missing = ~self.applies.to(device)
        self.norm_mask = norm_mask.to(device)
        self.scopes = scope_matrix.to(device)
        self.rms_has = has[:, rms].to(device)
        self.rms_scopes = scope_matrix[:, rms].to(device)
        numels = torch.tensor([float(params[j][0].numel()) for j in rms])
        self.counts = (has[:, rms].float() * numels @ scope_matrix[:, rms].T).to(device)  # elements per scope

    @torch.no_grad()
    def values(self, minus_before: Sequence[Tensor]) -> Tensor:
        """The values of :attr:`names` [P, K] (float32, NaN where a key does not apply), right after a step;
        ``minus_before`` holds the stacked −θ before it, and becomes the updates."""
        params, optimizer, members = self.params, self.optimizer, len(self.optimizer.shadows)
        updates = list(minus_before)
        torch._foreach_add_(updates, params)
        states = [optimizer.state.get(param, {}) for param in params]
        zero = params[0].new_zeros(members)

        def norm(tensor: Tensor | None) -> Tensor:
            return zero if tensor is None else torch.linalg.vector_norm(per_member(tensor), dim=1)

        columns = [norm(param.grad) for param in params] + [norm(param) for param in params]
        columns += [norm(update) for update in updates]
        columns += [norm(state.get(key)) for key in self.keys for state in states]
        squares = torch.stack(columns, 1).float().square().view(members, -1, len(params))
        norms = (torch.where(self.norm_mask, squares, 0.0) @ self.scopes.T).sqrt_()  # [P, quantity, scope]

        groups: dict[int, MemberCoefficients] = {}
        size_sums, highest, inverse_highest = [], [], []  # per tensor and member: Σ s, max s, max 1/s
        for j in self.rms:
            group = self.group_of[j]
            if group not in groups:
                groups[group] = optimizer.member_coefficients(group)
            # the update's norm is taken: its memory holds the step sizes now
            sizes = per_member(inverse_step_sizes_(updates[j], states[j], groups[group]))
            inverse_highest.append(sizes.amax(1))
            sizes.reciprocal_()
            highest.append(sizes.amax(1))
            size_sums.append(sizes.sum(1))
        sums, highest_, inverse_ = (
            torch.stack(part, 1).float() for part in (size_sums, highest, inverse_highest)
        )
        means = (torch.where(self.rms_has, sums, 0.0) @ self.rms_scopes.T) / self.counts
        extremes = [
            torch.where(self.rms_has, highest_, 0.0).amax(1),
            torch.where(self.rms_has, inverse_, 0.0).amax(1).reciprocal(),
        ]
        values = torch.cat([norms.flatten(1), means, norms[:, 2] / norms[:, 1], torch.stack(extremes, 1)], 1)
        return values[:, self.kept].masked_fill_(self.missing, torch.nan)
