"""What the OptimizerStateMonitor measures on a logged step: norms and step sizes, reduced on the device."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

# quantities every parameter has; the optimizer's states follow under their own keys
BASE_QUANTITIES = ("grad", "param", "update")


def is_monitored_state(key: str, value: Any) -> bool:
    """A state is monitored when it is a tensor of several elements, or a floating one but ``step``."""
    return isinstance(value, Tensor) and (value.numel() > 1 or (value.is_floating_point() and key != "step"))


def is_rmsprop_like(group: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether ``lr / (sqrt(square_avg) + eps)`` is the group's per-element step size."""
    return "square_avg" in state and all(key in group for key in ("lr", "eps", "alpha"))


def as_real(tensor: Tensor) -> Tensor:
    """A complex tensor as its real and imaginary parts, which RMSprop scales apart; others as they are."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def stored_values(tensor: Tensor) -> Tensor:
    """The values whose norm is the tensor's: a sparse gradient's (an embedding's), coalesced."""
    return tensor.coalesce().values() if tensor.is_sparse else tensor


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where ``device`` has it (MPS has not): the precision of the optimizer's Python arithmetic."""
    return torch.float32 if device.type == "mps" else torch.float64


def step_form(group: dict[str, Any]) -> tuple[bool, bool, bool]:
    """``(eps_in_sqrt, centered, bias_correction)``: the form of the group's step size."""
    return bool(group.get("eps_in_sqrt")), bool(group.get("centered")), bool(group.get("bias_correction"))


def group_scopes(groups: Sequence[dict[str, Any]]) -> list[str]:
    """Key infixes of the parameter groups: their distinct ``name``s, else ``pg1/``, ``pg2/``, …"""
    if len(groups) < 2:
        return []
    names = [group.get("name") for group in groups]
    if all(isinstance(name, str) and name for name in names) and len(set(names)) == len(names):
        return [f"{name}/" for name in names]
    return [f"pg{index}/" for index in range(1, len(groups) + 1)]


def signature(optimizer: torch.optim.Optimizer) -> Hashable:
    """What :class:`StateNorms` depends on: each group's parameters and step form, the state entries."""
    state, groups = optimizer.state, optimizer.param_groups
    params = tuple((tuple(map(id, group["params"])), step_form(group)) for group in groups)
    return params, id(state), len(state), sum(map(len, state.values()))


def inverse_step_sizes_(
    out: Sequence[Tensor], groups: Sequence[dict[str, Any]], states: Sequence[dict[str, Any]]
) -> None:
    """Writes into ``out`` the inverses ``1/s`` of the per-element step sizes of RMSprop-like tensors.

    ``s = lr / (sqrt(v) + eps)`` (``lr / sqrt(v + eps)`` with ``eps_in_sqrt``), ``v`` being
    ``square_avg``, or ``square_avg − grad_avg²`` when centered, both divided by ``c = 1 − alphaᵗ``
    with ``bias_correction``. ``groups[k]`` holds ``states[k]``; all share one step form (and
    ``alpha`` with bias correction). Everything happens in place, allocating nothing of their size.
    """
    eps_in_sqrt, centered, bias_correction = step_form(groups[0])
    torch._foreach_copy_(out, [as_real(state["square_avg"]) for state in states])
    if bias_correction:
        # c in the precision the optimizer works it out in
        steps = torch.stack([state["step"] for state in states])
        corrections = 1 - groups[0]["alpha"] ** steps.to(precise_dtype(steps.device))
        torch._foreach_mul_(out, list(corrections.unbind()))  # v·c² = square_avg·c − grad_avg²
    if centered:
        means = [as_real(state["grad_avg"]) for state in states]
        torch._foreach_addcmul_(out, means, means, value=-1)
        torch._foreach_clamp_min_(out, 0.0)
    if bias_correction:
        torch._foreach_div_(out, list(corrections.square().unbind()))
    eps = [float(group["eps"]) for group in groups]
    if eps_in_sqrt:
        torch._foreach_add_(out, eps)
    torch._foreach_sqrt_(out)
    if not eps_in_sqrt:
        torch._foreach_add_(out, eps)
    torch._foreach_div_(out, [float(group["lr"]) for group in groups])  # a tensor lr is read here


class StateNorms:
    """The keys of one optimizer as it is now, and how a logged step's tensors reduce to their values.

    With ``<s>`` running over the scopes (the whole optimizer, each group when there are
    several, each parameter ``per_parameter`` selects), the keys are ``<s><quantity>_norm``
    (grad, param, update, then each state in order of appearance), ``<s>effective_lr_mean``,
    ``<s>update_to_param_ratio`` and, over the whole optimizer, ``effective_lr_max``/``_min``.
    A missing gradient counts as zero. :meth:`matches` tells when the plan is stale. A step reduces with
    ``torch._foreach_*`` and one weighted sum with a fixed matrix; nothing is read back to the host.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        prefix: str,
        param_names: dict[int, str],
        per_parameter: re.Pattern[str] | None,
    ) -> None:
        self.signature = signature(optimizer)
        groups = optimizer.param_groups
        self.params = params = [param for group in groups for param in group["params"]]
        self.group_of = group_of = [index for index, group in enumerate(groups) for _ in group["params"]]
        states = [optimizer.state.get(param, {}) for param in params]
        scopes = [("", set(range(len(params))))]
        for index, infix in enumerate(group_scopes(groups)):
            members = {i for i, g in enumerate(group_of) if g == index}
            if members:  # so that every scope has a row of each base quantity
                scopes.append((infix, members))
        if per_parameter is not None:
            for i, param in enumerate(params):
                name = param_names.get(id(param), f"param{i}")
                if per_parameter.search(name):
                    scopes.append((f"param/{name}/", {i}))
        keys: list[str] = []
        for state in states:
            keys += [k for k, value in state.items() if is_monitored_state(k, value) and k not in keys]
        # the tensors whose squared norms start a step's vector; the sums of their step sizes follow
        self.state_columns = [(key, i) for key in keys for i, state in enumerate(states) if key in state]
        columns = [(q, i) for q in BASE_QUANTITIES for i in range(len(params))] + self.state_columns
        # RMSprop-like tensors, by step form (and group, for its alpha, with bias correction)
        buckets: dict[tuple[Any, ...], list[int]] = {}
        for i, state in enumerate(states):
            group = groups[group_of[i]]
            if is_rmsprop_like(group, state):
                form = step_form(group)
                buckets.setdefault((*form, group_of[i] if form[2] else None), []).append(i)
        self.buckets = list(buckets.values())
        rms = [i for members in self.buckets for i in members]  # in the order their sums come

        self.names: list[str] = []
        rows: list[dict[int, float]] = []
        for quantity in (*BASE_QUANTITIES, *keys):
            for infix, members in scopes:
                row = {c: 1.0 for c, (q, i) in enumerate(columns) if q == quantity and i in members}
                if row:
                    rows.append(row)
                    self.names.append(f"{prefix}{infix}{quantity}_norm")
        self.num_norms = len(rows)
        for infix, members in scopes:
            chosen = [k for k, i in enumerate(rms) if i in members]
            if chosen:
                count = sum(as_real(params[rms[k]]).numel() for k in chosen)
                rows.append({len(columns) + k: 1.0 / count for k in chosen})
                self.names.append(f"{prefix}{infix}effective_lr_mean")
        self.names += [f"{prefix}{infix}update_to_param_ratio" for infix, _ in scopes]
        if rms:
            self.names += [f"{prefix}effective_lr_max", f"{prefix}effective_lr_min"]
        device = params[0].device
        # the tensors' norms summed as squares in float64 where the device has it: in float32 the squares of
        # several norms near 1.8e19 would sum to inf
        self.dtype = dtype = precise_dtype(device)
        weights = torch.zeros(len(rows), len(columns) + len(rms), dtype=dtype)
        for r, row in enumerate(rows):
            weights[r, list(row)] = torch.tensor(list(row.values()), dtype=dtype)
        self.weights = weights.to(device)
        self.used = self.weights != 0  # a row's columns: an inf elsewhere must not turn it into NaN (inf × 0)
        self.num_scopes = len(scopes)  # grad_norm, param_norm and update_norm take that many rows each
        self.zero = torch.zeros((), device=device)
        self.exponents = torch.tensor(
            [0.5] * self.num_norms + [1.0] * (len(rows) - self.num_norms), dtype=dtype, device=device
        )
        self.signs = torch.tensor([1.0, -1.0], dtype=dtype, device=device)

    def matches(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether the plan still describes ``optimizer``: the same parameters and forms, the same states."""
        return signature(optimizer) == self.signature

    @torch.no_grad()
    def values(self, optimizer: torch.optim.Optimizer, updates: Sequence[Tensor]) -> Tensor:
        """The values of :attr:`names` right after a step; ``updates`` holds −θ before it, and becomes
        the updates."""
        params, state, groups = self.params, optimizer.state, optimizer.param_groups
        torch._foreach_add_(updates, params)
        grads = [self.zero if param.grad is None else stored_values(param.grad) for param in params]
        tensors = [*grads, *params, *updates, *(state[params[i]][key] for key, i in self.state_columns)]
        norms = torch._foreach_norm(tensors)  # in each tensor's dtype, as torch's clip_grad_norm_ computes
        size_sums, highest, inverse_highest = [], [], []  # per tensor: Σ s, max s, max 1/s
        for members in self.buckets:
            # the updates' norms are taken: their memory holds the step sizes now
            sizes = [as_real(updates[i]) for i in members]
            inverse_step_sizes_(
                sizes, [groups[self.group_of[i]] for i in members], [state[params[i]] for i in members]
            )
            inverse_highest += torch._foreach_max(sizes)
            torch._foreach_reciprocal_(sizes)
            highest += torch._foreach_max(sizes)
            size_sums += [size.sum() for size in sizes]
        count, width = len(norms), self.weights.shape[1]
        columns = torch.stack([*norms, *size_sums, *highest, *inverse_highest]).to(self.dtype)
        columns[:count].square_()
        terms = torch.where(self.used, self.weights * columns[:width], 0.0)
        sums = terms.sum(1).pow_(self.exponents)  # norms: roots of sums of squares
        scopes = self.num_scopes
        parts = [sums, sums[2 * scopes : 3 * scopes] / sums[scopes : 2 * scopes]]
        if highest:  # max s, and min s = 1 / max(1/s)
            parts.append(columns[width:].view(2, -1).amax(1).pow_(self.signs))
        return torch.cat(parts)
