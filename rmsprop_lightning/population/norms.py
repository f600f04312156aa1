"""The optimizer-state monitor's values for every member of a population, reduced on the device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from rmsprop_lightning.callbacks.state_norms import BASE_QUANTITIES, group_scopes, precise_dtype
from rmsprop_lightning.population.coefficients import (
    STATE_KEYS,
    MemberCoefficients,
    coefficient,
    corrections,
    member_keys,
    member_options,
    per_member,
)
from rmsprop_lightning.population.optim import StackedRMSprop


def inverse_step_sizes_(out: Tensor, state: Mapping[str, Tensor], k: MemberCoefficients) -> Tensor:
    """Writes into ``out`` every member's inverse step sizes ``1/s`` of ``state``, in the operations of
    StateNorms' :func:`~rmsprop_lightning.callbacks.state_norms.inverse_step_sizes_`."""
    correction = corrections(k, state["step"])
    out.copy_(state["square_avg"]).mul_(coefficient(correction, out))
    if "grad_avg" in state:
        grad_avg = state["grad_avg"]
        out.addcmul_(grad_avg, grad_avg * coefficient(-k.centered, out)).clamp_min_(0.0)
    out.div_(coefficient(correction.square(), out)).add_(coefficient(k.eps_in, out))
    return out.sqrt_().add_(coefficient(k.eps_out, out)).div_(coefficient(k.lr, out))


class StackedStateNorms:
    """What ``StateNorms(shadow, "optim/", {}, None)`` measures for each member's own optimizer, all at once:
    :attr:`names` (the union of the members' keys), :attr:`applies` [P, K] (host): which member ``i`` has.

    Build it after a step; rebuild it when the states change (a new state, a first accepted step).
    """

    def __init__(self, optimizer: StackedRMSprop) -> None:
        self.optimizer = optimizer
        groups, shadows = optimizer.param_groups, optimizer.shadows
        self.params = params = [param for group in groups for param in group["params"]]
        self.group_of = group_of = [index for index, group in enumerate(groups) for _ in group["params"]]
        states = [optimizer.state.get(param, {}) for param in params]
        # the parameters with RMSprop's states
        self.rms = rms = [j for j, state in enumerate(states) if "step" in state]
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
        self.dtype = precise_dtype(device)  # the squares', as StateNorms'
        self.kept = kept.nonzero().squeeze(1).to(device)
        self.missing = ~self.applies.to(device)
        # which tensors each scope sums (selected, not weighted: an overflow to inf must not make 0 × inf)
        in_scope = scope_matrix > 0
        self.norm_terms = (norm_mask.unsqueeze(2) & in_scope).to(device)  # [P, quantity, scope, J]
        self.rms_has = has[:, rms].to(device)
        self.rms_terms = (has[:, rms].unsqueeze(1) & in_scope[:, rms]).to(device)  # [P, scope, rms]
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
        squares = torch.stack(columns, 1).to(self.dtype).square().view(members, -1, len(params))
        norms = torch.where(self.norm_terms, squares.unsqueeze(2), 0.0).sum(3).sqrt_()  # [P, quantity, scope]

        k = {group: optimizer.member_coefficients(group) for group in {self.group_of[j] for j in self.rms}}
        size_sums, highest, inverse_highest = [], [], []  # per tensor and member: Σ s, max s, max 1/s
        for j in self.rms:
            # the update's norm is taken: its memory holds the step sizes now
            sizes = per_member(inverse_step_sizes_(updates[j], states[j], k[self.group_of[j]]))
            inverse_highest.append(sizes.amax(1))
            sizes.reciprocal_()
            highest.append(sizes.amax(1))
            size_sums.append(sizes.sum(1))
        sums, highest_, inverse_ = (
            torch.stack(part, 1).float() for part in (size_sums, highest, inverse_highest)
        )
        means = torch.where(self.rms_terms, sums.unsqueeze(1), 0.0).sum(2) / self.counts
        extremes = [
            torch.where(self.rms_has, highest_, 0.0).amax(1),
            torch.where(self.rms_has, inverse_, 0.0).amax(1).reciprocal(),
        ]
        values = torch.cat([norms.flatten(1), means, norms[:, 2] / norms[:, 1], torch.stack(extremes, 1)], 1)
        return values[:, self.kept].float().masked_fill_(self.missing, torch.nan)
