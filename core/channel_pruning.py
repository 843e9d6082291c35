"""Which channels of a CNN can be pruned together, what removing them saves, and removing them (Torch-Pruning).

    analysis = analyse_pruning(model, example_inputs)       # the groups, the MACs model
    removal, macs = select_channels(analysis, importance, 0.5)
    prune_channels(model, example_inputs, removal)          # in place

Torch-Pruning's DependencyGraph ties channels across layers (residual sums,
concatenated or multiplied maps) into groups removed together; a group is
named after the conv whose output channels root it. Not every group it finds
is safe. Torch-Pruning 1.6.1 models `F.pad` (the channel zero padding of
ResNetCifar's option-A shortcuts) as an element-wise op, so it couples the
16-, 32- and 64-channel residual streams of the three stages into one group
with 16 indices: pruning it would cut the wrong channels and break the pad
arithmetic. It likewise couples a 1-channel attention mask with the
2C-channel map it multiplies by broadcasting (AR-CDNet's knowledge review).
Every group is therefore checked before use (`analyse_pruning`, `check_group`):
each conv/linear/norm whose output channels the group prunes must lose
exactly one channel per root channel, no channel-padding op may be in it, it
may not reach a model output (the classifier, 1-channel heads) and it may not
touch grouped (non-depthwise) convs. Groups that fail stay unpruned, and the
analysis says why (`PruneAnalysis.skipped`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import RSLabError

if TYPE_CHECKING:  # torch is imported lazily
    import torch
    from torch import nn

MIN_KEEP_FRACTION, MIN_KEEP = 0.10, 2  # a group keeps at least 10 % and at least 2 of its channels


@dataclass
class PruneGroup:
    """Channels Torch-Pruning removes together, named after the conv whose outputs root them."""

    root: str
    channels: int
    keep_min: int
    scored: Dict[str, List[int]]  # conv layer -> its output channel for each root channel (for FP lookup)
    out_share: Dict[str, float]  # conv/linear layer -> output channels removed per root channel
    in_share: Dict[str, float]  # conv/linear layer -> input channels removed per root channel


@dataclass
class LayerShape:
    """What a conv/linear layer costs: MACs = unit * out * (in / groups), depthwise: unit * out."""

    unit: float
    out_channels: int
    in_channels: int
    groups: int
    depthwise: bool

    def macs(self, out: float, inp: float) -> float:
        return self.unit * out * (1.0 if self.depthwise else inp / self.groups)


@dataclass
class PruneAnalysis:
    """The prunable groups of a model and the MACs model used to meet a FLOPs target."""

    groups: List[PruneGroup]
    shapes: Dict[str, LayerShape]
    macs: int  # conv/linear MACs of the example input, unpruned
    skipped: Dict[str, str] = field(default_factory=dict)  # layer -> why its output channels stay

    @property
    def scored_layers(self) -> List[str]:
        seen: Dict[str, None] = {}
        for g in self.groups:
            for name in g.scored:
                seen.setdefault(name, None)
        return list(seen)

    def estimate_macs(self, removed: Mapping[str, int]) -> float:
        """Conv/linear MACs after removing `removed[root]` channels from each group."""
        out = {n: float(s.out_channels) for n, s in self.shapes.items()}
        inp = {n: float(s.in_channels) for n, s in self.shapes.items()}
        for g in self.groups:
            k = removed.get(g.root, 0)
            for n, share in g.out_share.items():
                if n in out:  # layers that did not run on the example input cost nothing
                    out[n] -= k * share
            for n, share in g.in_share.items():
                if n in inp:
                    inp[n] -= k * share
        return sum(s.macs(out[n], inp[n]) for n, s in self.shapes.items())


def build_graph(model: "nn.Module", example_inputs: Sequence[Any]) -> Any:
    """A Torch-Pruning DependencyGraph of `model` (traced in eval mode; the training mode is restored)."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=tuple(example_inputs), verbose=False)
    finally:
        model.train(was_training)


def layer_channels(module: Any, out: bool) -> Optional[int]:
    """A conv's, linear's or norm's output (`out`) or input channel count; None for other modules."""
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels if out else module.in_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features if out else module.in_features)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return int(module.num_features)
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels)
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


def check_group(graph: Any, group: Any, channels: int, names: Mapping[Any, str]) -> Optional[str]:
    """Why the group cannot be pruned safely, or None if it can."""
    import torch_pruning as tp
    from torch import nn

    scored = 0
    for dep, idxs in group:
        node = dep.target
        module = node.module
        if node.type == tp.ops.OPTYPE.OUTPUT:
            return "its channels are model outputs"
        if isinstance(module, tp.ops._ElementWiseOp) and "Pad" in str(module._grad_fn):
            return "a channel padding (e.g. option-A shortcut) ties it to other widths"
        if not isinstance(module, nn.Module) or module not in names:
            continue
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups and not (
                module.groups == module.in_channels == module.out_channels):
            return f"it touches the grouped conv {names[module]}"
        if graph.is_out_channel_pruning_fn(dep.handler):
            own = layer_channels(module, out=True)
            if own is not None and (own != channels or len(idxs) != channels):
                return f"the traced graph ties {len(idxs)} of {names[module]}'s {own} channels to {channels} root channels"
            if isinstance(module, nn.modules.conv._ConvNd):
                scored += 1
        elif graph.is_in_channel_pruning_fn(dep.handler):
            own = layer_channels(module, out=False)
            if own is not None and len(idxs) > own:
                return f"it maps {len(idxs)} channels onto {names[module]}'s {own} inputs"
    if not scored:
        return "no conv scores its channels"
    return None


def analyse_pruning(model: "nn.Module", example_inputs: Sequence[Any]) -> PruneAnalysis:
    """Find the channel groups of `model` that can be pruned safely (the module docstring says which).

    Groups are rooted at each conv (in definition order) whose output channels
    no earlier group covers; a group that fails `check_group` stays unpruned and
    its layers are listed in `skipped` with the reason.
    """
    from torch import nn

    from .bops import count_bops

    report = count_bops(model, example_inputs)
    modules = dict(model.named_modules())
    shapes: Dict[str, LayerShape] = {}
    for layer in report.layers:
        m = modules[layer.name]
        groups = int(getattr(m, "groups", 1))
        depthwise = groups > 1 and groups == layer.in_channels == layer.out_channels
        per_group_in = 1 if depthwise else layer.in_channels / groups
        denominator = layer.out_channels * per_group_in
        shapes[layer.name] = LayerShape(unit=layer.macs / denominator if denominator else 0.0,
                                        out_channels=layer.out_channels, in_channels=layer.in_channels,
                                        groups=groups, depthwise=depthwise)

    graph = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    covered: set = set()
    groups: List[PruneGroup] = []
    skipped: Dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.conv._ConvNd) or module in covered or module not in graph.module2node:
            continue
        pruner = graph.get_pruner_of_module(module)
        channels = int(module.out_channels)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        pruned_outputs = [item for item in group if graph.is_out_channel_pruning_fn(item.dep.handler)
                          and isinstance(item.dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))
                          and item.dep.target.module in names]
        covered.update(item.dep.target.module for item in pruned_outputs)
        reason = check_group(graph, group, channels, names)
        keep_min = max(MIN_KEEP, math.ceil(MIN_KEEP_FRACTION * channels))
        if reason is None and channels <= keep_min:
            reason = f"{channels} channels: at least {keep_min} must stay"
        if reason is not None:
            for item in pruned_outputs:
                skipped.setdefault(names[item.dep.target.module], reason)
            continue
        scored: Dict[str, List[int]] = {}
        out_share: Dict[str, float] = {}
        in_share: Dict[str, float] = {}
        for item in group:
            target = item.dep.target.module
            if not isinstance(target, (nn.modules.conv._ConvNd, nn.Linear)) or target not in names:
                continue
            layer, idxs = names[target], list(item.idxs)
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                out_share[layer] = out_share.get(layer, 0.0) + len(idxs) / channels
                if isinstance(target, nn.modules.conv._ConvNd):
                    order = [0] * channels  # the layer's own channel behind each root channel
                    for own, root in zip(idxs, item.root_idxs):
                        order[int(root)] = int(own)
                    scored[layer] = order
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                if layer in shapes and shapes[layer].depthwise:
                    continue  # a depthwise conv's inputs follow its outputs: counted once, as outputs
                in_share[layer] = in_share.get(layer, 0.0) + len(idxs) / channels
        groups.append(PruneGroup(root=name, channels=channels, keep_min=keep_min, scored=scored,
                                 out_share=out_share, in_share=in_share))
    return PruneAnalysis(groups=groups, shapes=shapes, macs=int(report.total_macs), skipped=skipped)


def group_importance(analysis: PruneAnalysis, fp: Mapping[str, "torch.Tensor"], a: Mapping[str, float],
                     b: Mapping[str, float]) -> Dict[str, np.ndarray]:
    """{group root: importance per root channel}: the sum over the group's convs of a_l FP_l + b_l."""
    out: Dict[str, np.ndarray] = {}
    for g in analysis.groups:
        total = np.zeros(g.channels, dtype=np.float64)
        for layer, order in g.scored.items():
            values = fp[layer].detach().double().cpu().numpy()[order]
            total += a.get(layer, 1.0) * values + b.get(layer, 0.0)
        out[g.root] = total
    return out


def select_channels(analysis: PruneAnalysis, importance: Mapping[str, np.ndarray],
                    reduction: float) -> Tuple[Dict[str, List[int]], float]:
    """({group root: root channels to remove}, estimated MACs after) for a MACs reduction target.

    Channels go in global order of importance, lowest first, until the estimated
    MACs are at most (1 - reduction) of the unpruned ones; a group never drops
    below its `keep_min`. Ties are broken by group order then channel index.
    """
    target = (1.0 - reduction) * analysis.macs
    out = {n: float(s.out_channels) for n, s in analysis.shapes.items()}
    inp = {n: float(s.in_channels) for n, s in analysis.shapes.items()}
    macs = sum(s.macs(out[n], inp[n]) for n, s in analysis.shapes.items())
    by_root = {g.root: g for g in analysis.groups}
    order = sorted(((float(v), gi, ch, g.root) for gi, g in enumerate(analysis.groups)
                    for ch, v in enumerate(importance[g.root])))
    removed: Dict[str, List[int]] = {g.root: [] for g in analysis.groups}
    for _, _, ch, root in order:
        if macs <= target:
            break
        g = by_root[root]
        if g.channels - len(removed[root]) <= g.keep_min:
            continue
        removed[root].append(ch)
        touched = [n for n in set(g.out_share) | set(g.in_share) if n in analysis.shapes]
        before = sum(analysis.shapes[n].macs(out[n], inp[n]) for n in touched)
        for n, share in g.out_share.items():
            if n in out:
                out[n] -= share
        for n, share in g.in_share.items():
            if n in inp:
                inp[n] -= share
        after = sum(analysis.shapes[n].macs(out[n], inp[n]) for n in touched)
        macs += after - before
    return {r: sorted(c) for r, c in removed.items() if c}, macs


def prune_channels(model: "nn.Module", example_inputs: Sequence[Any], removal: Mapping[str, Sequence[int]]) -> None:
    """Physically remove the root channels `removal[root]` (and everything tied to them) from `model`, in place."""
    if not any(removal.values()):
        return
    graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    for root, idxs in removal.items():
        if not idxs:
            continue
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, sorted(int(i) for i in idxs))
        if not graph.check_pruning_group(group):
            raise RSLabError(f"pruning {len(idxs)} channels of {root} would leave a layer empty")
        group.prune()


def max_reduction(analysis: PruneAnalysis) -> float:
    """The largest MACs reduction reachable with every group at its `keep_min`."""
    if not analysis.macs:
        return 0.0
    floor = analysis.estimate_macs({g.root: g.channels - g.keep_min for g in analysis.groups})
    return 1.0 - floor / analysis.macs
