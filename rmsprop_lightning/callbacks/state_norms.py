"""The measurement behind the OptimizerStateMonitor: the values of logged steps, computed on the device.

A logged step copies its tensors of at most :data:`SMALL_NUMEL` elements (on the canonical
net, all of them) into one row of a preallocated history in one call
(:class:`~rmsprop_lightning.callbacks.row_copy.RowCopy`); the norms and step sizes of all
rows are computed together, with whole-matrix operations, when the monitor collects them (at
its flushes). Larger tensors are reduced at once with multi-tensor norms, so the history stays
small. Nothing is read back to the host.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from rmsprop_lightning.callbacks.row_copy import FlatViews, RowCopy, version_total

# tensors up to this size are copied into the history; above it a per-tensor reduction is cheaper
SMALL_NUMEL = 1 << 10
# the history of logged steps waiting for their reduction stays below this size
MAX_HISTORY_BYTES = 64 << 20
# quantities every parameter has; the optimizer's states follow under their own keys
BASE_QUANTITIES = ("grad", "param", "update")


def is_monitored_state(key: str, value: Any) -> bool:
    """A state is monitored when it is a tensor of several elements, or a floating one but ``step``."""
    if not isinstance(value, Tensor):
        return False
    return value.numel() > 1 or (value.is_floating_point() and key != "step")


def is_rmsprop_like(group: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether ``lr / (sqrt(square_avg) + eps)`` is the group's per-element step size."""
    return "square_avg" in state and all(key in group for key in ("lr", "eps", "alpha"))


def group_scopes(groups: Sequence[dict[str, Any]]) -> list[str]:
    """Key infixes of the parameter groups: their distinct ``name``s, else ``pg1/``, ``pg2/``, …"""
    if len(groups) < 2:
        return []
    names = [group.get("name") for group in groups]
    if all(isinstance(name, str) and name for name in names) and len(set(names)) == len(names):
        return [f"{name}/" for name in names]
    return [f"pg{index}/" for index in range(1, len(groups) + 1)]


def common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """The floating dtype all of ``tensors`` fit in, at least float32."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` copied from the CPU to ``device`` without making the host wait (pinned, non-blocking)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class ParameterSnapshot:
    """The parameters of an optimizer just before its step: copied, or known from the last captured step.

    Small parameters are concatenated into one flat buffer; large ones have a copy
    each, which :meth:`large_updates` turns into ``θ_before − θ_after`` in place. When
    no small parameter changed since the last captured step (their version counters,
    bumped by every in-place operation of torch, are as that step left them), the step
    starts from the values that step captured, and :meth:`take` copies nothing for them.
    Changes made through ``.data`` bypass version counters and count as part of the next
    update. The counters are added up by one C++ call where it is built, unless
    ``native_versions`` is false.
    """

    def __init__(self, param_groups: Sequence[dict[str, Any]], native_versions: bool = True) -> None:
        self.groups = len(param_groups)
        self.params = params = [param for group in param_groups for param in group["params"]]
        self.small = [p for p in params if p.numel() <= SMALL_NUMEL]
        self.large = [p for p in params if p.numel() > SMALL_NUMEL]
        size = sum(p.numel() for p in self.small)
        self.flat = torch.empty(size, dtype=common_dtype(self.small), device=params[0].device)
        # the small parameters as the last step reduced by a probe left them
        self.carry = torch.empty_like(self.flat)
        self.large_before = [torch.empty_like(p) for p in self.large]
        self.reused = False  # whether the last take found the small parameters as the last capture left them
        self._views = FlatViews(self.small)
        self._version_total = version_total(self.small, native_versions)
        self._versions: int | None = None  # the small parameters' version total at the last capture

    def take(self) -> None:
        """Copies the parameters the step is about to change (small ones unless the last capture has them)."""
        # version counters only grow: an unchanged total means no in-place write to any of them
        self.reused = bool(self.small) and self._versions == self._version_total()
        if self.small and not self.reused:
            torch.cat(self._views(), out=self.flat)
        if self.large:
            with torch.no_grad():
                torch._foreach_copy_(self.large_before, self.large)

    def seal(self) -> None:
        """Notes a step just captured: until the small parameters change, it is where the next one starts."""
        self._versions = self._version_total()

    @torch.no_grad()
    def large_updates(self) -> list[Tensor]:
        """``θ_before − θ_after`` of the large parameters, computed in place of their copies."""
        if self.large:
            torch._foreach_sub_(self.large_before, self.large)
        return self.large_before


def structure(groups: Sequence[dict[str, Any]]) -> tuple[tuple[bool, bool, bool], ...]:
    """``(eps_in_sqrt, centered, bias_correction)`` of each group: the form of its step size."""
    return tuple(
        (
            bool(g.get("eps_in_sqrt", False)),
            bool(g.get("centered", False)),
            bool(g.get("bias_correction", False)),
        )
        for g in groups
    )


SETTINGS = ("lr", "eps", "alpha")  # the numbers a group's step size depends on, read at every logged step
group_settings = operator.itemgetter(*SETTINGS)


class StepSizeJob(NamedTuple):
    """The step sizes of one large tensor: an output and the state it is computed from."""

    out: Tensor
    param: Tensor
    group: int


@torch.no_grad()
def step_sizes_(
    out: Tensor,
    grad_avg: Tensor | None,
    lr: float | Tensor,
    eps: float | Tensor,
    correction: Tensor | None,
    eps_in_sqrt: bool | Tensor,
) -> None:
    """Turns ``out``, holding ``square_avg``, into the step size ``lr / (sqrt(v) + eps)`` in place.

    ``v`` is ``square_avg / correction`` with bias correction (``correction = 1 − alphaᵗ``),
    minus ``(grad_avg / correction)²`` for centered groups, clamped at 0; with ``eps_in_sqrt``
    (a bool, or a mask per element) the step size is ``lr / sqrt(v + eps)``. ``lr`` and
    ``eps`` are numbers or tensors broadcasting against ``out``; nothing goes to the host.
    """
    if correction is not None:
        out.div_(correction)
    if grad_avg is not None:
        mean = grad_avg / correction if correction is not None else grad_avg
        out.addcmul_(mean, mean, value=-1).clamp_min_(0.0)
    if eps_in_sqrt is True:
        out.add_(eps).sqrt_()
    elif eps_in_sqrt is False:
        out.sqrt_().add_(eps)
    else:
        torch.where(eps_in_sqrt, (out + eps).sqrt_(), out.sqrt().add_(eps), out=out)
    if isinstance(lr, Tensor):
        torch.div(lr, out, out=out)
    else:
        out.reciprocal_().mul_(lr)


class OptimizerProbe:
    """The keys of one optimizer, and the history and maps that turn its logged steps into their values.

    Built from the optimizer's current state; :meth:`matches` tells when it is stale. With
    ``<s>`` running over the scopes (total, each group when there are several, each
    selected parameter) the keys are ``<s><quantity>_norm`` quantity by quantity (grad,
    param, update, then each state in order of appearance), ``<s>effective_lr_mean``,
    ``<s>update_to_param_ratio``, and over the whole optimizer ``effective_lr_max`` and
    ``effective_lr_min``. :meth:`capture` keeps a step right after the optimizer stepped,
    and :meth:`compute` turns the captured steps into one row of values each.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        snapshot: ParameterSnapshot,
        prefix: str,
        param_names: dict[int, str],
        per_parameter: re.Pattern[str] | None,
        capacity: int,
        native_copy: bool = True,
    ) -> None:
        self.optimizer = optimizer
        self._native_copy = native_copy
        self.snapshot = snapshot
        self.state_count = len(optimizer.state)
        groups = optimizer.param_groups
        self.structure = structure(groups)
        params = self.params = snapshot.params
        group_of = [index for index, group in enumerate(groups) for _ in group["params"]]
        names = [param_names.get(id(p), f"param{index}") for index, p in enumerate(params)]
        scopes: list[tuple[str, set[int]]] = [("", set(range(len(params))))]
        for index, infix in enumerate(group_scopes(groups)):
            scopes.append((infix, {i for i, g in enumerate(group_of) if g == index}))
        if per_parameter is not None:
            scopes += [(f"param/{name}/", {i}) for i, name in enumerate(names) if per_parameter.search(name)]
        states = [optimizer.state.get(p, {}) for p in params]
        keys: list[str] = []
        for state in states:
            keys += [
                key for key, value in state.items() if is_monitored_state(key, value) and key not in keys
            ]

        def tensor(quantity: str, i: int) -> Tensor:
            return params[i] if quantity in BASE_QUANTITIES else states[i][quantity]

        def small(quantity: str, i: int) -> bool:
            return tensor(quantity, i).numel() <= SMALL_NUMEL

        # history rows: small gradients, small parameters and states, parameters before the step, a zero
        state_columns = [(key, i) for key in keys for i, state in enumerate(states) if key in state]
        every = [(q, i) for q in ("grad", "param") for i in range(len(params))] + state_columns
        every += [("update", i) for i in range(len(params))]
        small_params = [i for i in range(len(params)) if params[i].numel() <= SMALL_NUMEL]
        rms = [i for i, state in enumerate(states) if is_rmsprop_like(groups[group_of[i]], state)]
        small_rms = [i for i in rms if small("square_avg", i)]
        large_rms = [i for i in rms if not small("square_avg", i)]
        self.step_groups = sorted({group_of[i] for i in rms})
        # the step count of each bias-corrected group (from its first parameter) rides along in the rows
        counters = {}
        for i in rms:
            if self.structure[group_of[i]][2] and isinstance(states[i].get("step"), Tensor):
                counters.setdefault(group_of[i], ("step", i))
        self.copied = [c for c in every if small(*c) and c[0] not in ("grad", "update")]
        self.copied += list(counters.values())
        row_columns = (
            [("grad", i) for i in small_params] + self.copied + [("update", i) for i in small_params]
        )
        self.large_columns = [c for c in every if not small(*c)]

        dtype = common_dtype([tensor(*c) for c in every])
        device = self.device = params[0].device
        # settings and 1 − alphaᵗ are worked out in float64 where the device has it, as optimizers do
        self.precise = torch.float32 if device.type == "mps" else torch.float64
        offset, offsets = 0, {}
        for column in row_columns:
            offsets[column] = offset
            offset += tensor(*column).numel()
        width = self.width = offset
        steps_width = sum(tensor("square_avg", i).numel() for i in small_rms)
        # a history row, and its work row of squares and step sizes
        row_bytes = (width + 1) * dtype.itemsize + (width + 1 + steps_width) * self.precise.itemsize
        self.capacity = max(1, min(capacity, MAX_HISTORY_BYTES // row_bytes))
        self.history = torch.zeros(self.capacity, width + 1, dtype=dtype, device=device)
        # squares and step sizes, summed and reduced in the precise dtype (float32 sums of thousands
        # of terms drift by 1e-6)
        self.work = torch.empty(self.capacity, width + 1 + steps_width, dtype=self.precise, device=device)
        # small parameters are in a row twice: after the step, and before it (turned into updates)
        self._param_start = offsets[("param", small_params[0])] if small_params else 0
        self._update_start = offsets[("update", small_params[0])] if small_params else 0
        self._small_params = [params[i] for i in small_params]
        self._state = optimizer.state
        self._copy = self._row_copy()

        # the column vector of a row: small norms², a dummy for the zero, small step-size sums, large ones
        columns = [*row_columns, ("zero", -1), *(("steps", i) for i in small_rms)]
        columns += [*self.large_columns, *(("steps", i) for i in large_rms)]
        column_of = {c: k for k, c in enumerate(columns)}
        ids = [column_of[c] for c in row_columns for _ in range(tensor(*c).numel())] + [
            column_of[("zero", -1)]
        ]
        ids += [column_of[("steps", i)] for i in small_rms for _ in range(tensor("square_avg", i).numel())]
        num_small = len(row_columns) + 1 + len(small_rms)
        num_large = len(self.large_columns)
        # the large columns are reduced at the step; the small ones are the elements of the work rows
        self.columns = torch.zeros(self.capacity, len(columns) - num_small, dtype=dtype, device=device)
        self._large_norms = list(self.columns[:, :num_large].unbind(0))
        self._large_sums = list(self.columns[:, num_large:].unbind(0))
        self._plan_step_sizes(small_rms, large_rms, offsets, group_of, tensor, counters)

        # weight rows: norm keys (sums of squares), then step-size means (sums / counts)
        self.names: list[str] = []
        rows: list[dict[int, float]] = []
        for quantity in (*BASE_QUANTITIES, *keys):
            for infix, members in scopes:
                row = {column_of[(q, i)]: 1.0 for q, i in every if q == quantity and i in members}
                if row:
                    rows.append(row)
                    self.names.append(f"{prefix}{infix}{quantity}_norm")
        self.num_norms = len(rows)
        for infix, members in scopes:
            chosen = [i for i in rms if i in members]
            if chosen:
                count = sum(tensor("square_avg", i).numel() for i in chosen)
                rows.append({column_of[("steps", i)]: 1.0 / count for i in chosen})
                self.names.append(f"{prefix}{infix}effective_lr_mean")
        self.names += [f"{prefix}{infix}update_to_param_ratio" for infix, _ in scopes]
        if rms:
            self.names += [f"{prefix}effective_lr_max", f"{prefix}effective_lr_min"]
        weights = torch.zeros(len(columns), len(rows), dtype=torch.float64)
        for r, row in enumerate(rows):
            weights[list(row), r] = torch.tensor(list(row.values()), dtype=torch.float64)
        # an element of a work row counts with the weights of its column: one product gives every sum
        self.element_weights = to_device(weights[torch.tensor(ids)].to(self.precise), device)
        self.large_weights = to_device(weights[num_small:].to(self.precise), device)
        self.out = torch.empty(self.capacity, len(self.names), dtype=self.precise, device=device)
        self.num_sums, self.num_scopes = len(rows), len(scopes)
        self.steps: list[int] = []
        self._settings: list[tuple[Any, ...]] = []  # the captured settings of the rows, group by group
        self._reused: list[bool] = []  # per row: whether θ before its step is the previous row's θ after

    def _plan_step_sizes(self, small_rms, large_rms, offsets, group_of, tensor, counters) -> None:
        """Per-element maps for the small step sizes; scratch tensors and per-row extremes for large ones."""
        position = {g: k for k, g in enumerate(self.step_groups)}
        v_index, m_index, element_group, in_sqrt = [], [], [], []
        for i in small_rms:
            size = tensor("square_avg", i).numel()
            start = offsets[("square_avg", i)]
            v_index += range(start, start + size)
            eps_in_sqrt, is_centered, _ = self.structure[group_of[i]]
            mean = offsets.get(("grad_avg", i)) if is_centered else None
            # grad_avg of centered groups; the zero at the end of the row for the others
            m_index += range(mean, mean + size) if mean is not None else [self.width] * size
            element_group += [position[group_of[i]]] * size
            in_sqrt += [eps_in_sqrt] * size
        device = self.device
        self.v_index = to_device(torch.tensor(v_index, dtype=torch.long), device)
        centered = any(index != self.width for index in m_index)
        self.m_index = to_device(torch.tensor(m_index, dtype=torch.long), device) if centered else None
        group_elements = torch.zeros(len(self.step_groups), len(element_group), dtype=torch.float64)
        group_elements[element_group, range(len(element_group))] = 1.0
        self.group_elements = to_device(group_elements.to(self.precise), device)
        self.in_sqrt: bool | Tensor = (
            all(in_sqrt) if len(set(in_sqrt)) < 2 else to_device(torch.tensor(in_sqrt), device)
        )
        # per step group: where its step count sits in a row (the zero when it has no bias correction)
        self.counter_index = to_device(
            torch.tensor([offsets[counters[g]] if g in counters else self.width for g in self.step_groups]),
            device,
        )
        self.corrected = (
            to_device(torch.tensor([g in counters for g in self.step_groups]), device) if counters else None
        )
        self.large_jobs = [
            StepSizeJob(torch.empty_like(tensor("square_avg", i)), self.params[i], group_of[i])
            for i in large_rms
        ]
        self.large_extremes = torch.empty(self.capacity, 2, dtype=self.history.dtype, device=device)
        self._large_extremes = list(self.large_extremes.unbind(0))

    def _row_copy(self) -> RowCopy:
        """The copy of a step's small gradients, parameters and states (and θ before it) into a row."""
        copied = [self._tensor(q, i) for q, i in self.copied]
        return RowCopy(self._small_params, copied, self.snapshot.flat, self.history, self._native_copy)

    def matches(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether the probe still describes ``optimizer``: no parameter gained state since it was made.

        A group switching ``centered`` or ``eps_in_sqrt`` is seen by :meth:`same_structure`,
        which the monitor asks at each flush (it is not worth a check per step).
        """
        return len(optimizer.state) == self.state_count

    def same_structure(self) -> bool:
        return structure(self.optimizer.param_groups) == self.structure

    def _tensor(self, quantity: str, index: int) -> Tensor:
        """The current tensor of a column; a missing gradient counts as zero."""
        param = self.params[index]
        if quantity == "param":
            return param
        if quantity == "grad":
            return param.grad if param.grad is not None else param.new_zeros(())
        return self.optimizer.state[param][quantity]

    def capture(self, step: int) -> bool:
        """Keeps the state right after optimizer step ``step`` (the snapshot has the one before) in a row.

        Returns whether the history is full now: the next capture needs :meth:`compute` first.
        """
        row = len(self.steps)
        reused = self.snapshot.reused
        if self.width:
            if self.optimizer.state is not self._state:  # reloaded: the states are other tensors now
                self._state = self.optimizer.state
                self._copy = self._row_copy()
            self._copy(row, not reused)  # θ before the step is the previous row's θ after when reused
        self.snapshot.seal()
        groups = self.optimizer.param_groups
        self._settings += [group_settings(groups[g]) for g in self.step_groups]
        if self.large_columns or self.large_jobs:
            with torch.no_grad():
                self._capture_large(row, groups)
        self._reused.append(reused)
        self.steps.append(step)
        return row + 1 == self.capacity

    def _capture_large(self, row: int, groups: Sequence[dict[str, Any]]) -> None:
        """Norms and step-size sums and extremes of the large tensors, reduced at once into ``row``."""
        if self.large_columns:
            updates = iter(self.snapshot.large_updates())
            tensors = [next(updates) if q == "update" else self._tensor(q, i) for q, i in self.large_columns]
            norms = torch._foreach_norm(tensors, 2, dtype=self.columns.dtype)
            torch.stack(norms, out=self._large_norms[row]).square_()
        if self.large_jobs:
            state = self.optimizer.state
            for job in self.large_jobs:
                group, param_state = groups[job.group], state[job.param]
                eps_in_sqrt, centered, bias_correction = self.structure[job.group]
                job.out.copy_(param_state["square_avg"])
                correction = 1 - group["alpha"] ** param_state["step"] if bias_correction else None
                means = param_state.get("grad_avg") if centered else None
                step_sizes_(job.out, means, float(group["lr"]), float(group["eps"]), correction, eps_in_sqrt)
            torch.stack([job.out.sum() for job in self.large_jobs], out=self._large_sums[row])
            extremes = [torch.aminmax(job.out) for job in self.large_jobs]
            highest = torch.stack([high for _, high in extremes]).amax()
            lowest = torch.stack([low for low, _ in extremes]).amin()
            torch.stack([highest, lowest], out=self._large_extremes[row])

    @torch.no_grad()
    def compute(self) -> tuple[list[int], Tensor]:
        """The captured steps and their values, a row each in the order of :attr:`names`; clears them."""
        rows, steps = len(self.steps), self.steps
        history, work, out = self.history[:rows], self.work[:rows], self.out[:rows]
        width = self.width
        if self.snapshot.small:
            count = self.snapshot.flat.numel()
            params = history[:, self._param_start : self._param_start + count]
            updates = history[:, self._update_start : self._update_start + count]
            if all(self._reused):  # every row starts from the previous row's parameters
                updates[0].copy_(self.snapshot.carry)
                updates[1:].copy_(params[:-1])
            elif any(self._reused):
                previous = torch.cat([self.snapshot.carry[None], params[:-1]])
                reused = to_device(torch.tensor(self._reused)[:, None], self.device)
                torch.where(reused, previous, updates, out=updates)
            self.snapshot.carry.copy_(params[-1])
            torch.sub(params, updates, out=updates)
        torch.mul(history, history, out=work[:, : width + 1])
        step_sizes = work[:, width + 1 :]
        if step_sizes.shape[1]:
            self._step_sizes(history, step_sizes)
        sums = out[:, : self.num_sums]
        torch.matmul(work, self.element_weights, out=sums)
        if self.columns.shape[1]:
            sums.addmm_(self.columns[:rows].to(self.precise), self.large_weights)
        out[:, : self.num_norms].sqrt_()
        scopes = self.num_scopes
        torch.div(
            out[:, 2 * scopes : 3 * scopes],
            out[:, scopes : 2 * scopes],
            out=out[:, self.num_sums : self.num_sums + scopes],
        )
        if len(self.names) > self.num_sums + scopes:
            self._extremes(step_sizes, out[:, -2], out[:, -1])
        values = out.clone()
        self.steps, self._settings, self._reused = [], [], []
        return steps, values

    def _step_sizes(self, history: Tensor, out: Tensor) -> None:
        """The step sizes of each small element of each captured row, into ``out``.

        The settings, ``1 − alphaᵗ`` and the step sizes are worked out in :attr:`precise`, as
        optimizers work the settings out in Python.
        """
        precise, rows, groups = self.precise, len(out), len(self.step_groups)
        # NumPy reads the numbers faster than torch; in a row they go setting by setting, then by group
        count = rows * groups * len(SETTINGS)
        numbers = np.fromiter(itertools.chain.from_iterable(self._settings), np.float64, count)
        numbers = numbers.reshape(rows, groups, len(SETTINGS))
        numbers = torch.from_numpy(numbers.transpose(0, 2, 1).reshape(rows * len(SETTINGS), groups))
        settings = to_device(numbers.to(precise), self.device)
        # a group's numbers spread over its elements: a product with the groups' one-hot rows
        lr, eps, _ = (settings @ self.group_elements).view(rows, len(SETTINGS), -1).unbind(1)
        correction = None
        if self.corrected is not None:
            steps = history.index_select(1, self.counter_index).to(precise)
            alpha = settings.view(rows, len(SETTINGS), groups)[:, 2]
            correction = torch.where(self.corrected, 1 - alpha.pow(steps), 1.0)
            correction = correction @ self.group_elements
        out.copy_(history.index_select(1, self.v_index))
        means = history.index_select(1, self.m_index) if self.m_index is not None else None
        step_sizes_(out, means, lr, eps, correction, self.in_sqrt)

    def _extremes(self, step_sizes: Tensor, highest: Tensor, lowest: Tensor) -> None:
        """The largest and smallest step size of each row, over small and large tensors."""
        if step_sizes.shape[1]:
            torch.amax(step_sizes, 1, out=highest)
            torch.amin(step_sizes, 1, out=lowest)
            if self.large_jobs:
                rows = len(highest)
                torch.maximum(highest, self.large_extremes[:rows, 0], out=highest)
                torch.minimum(lowest, self.large_extremes[:rows, 1], out=lowest)
        else:
            highest.copy_(self.large_extremes[: len(highest), 0])
            lowest.copy_(self.large_extremes[: len(lowest), 1])
