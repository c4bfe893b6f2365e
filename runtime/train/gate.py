"""DS-Net's dynamic gate, stage II: the model picks its own width per input.

A :class:`Gate` sits on one tensor of a trained slimmable :class:`Supernet` (stage I). Everything
before it runs at one shared width; the gate's double head looks at that tensor:

* the attention head (squeeze-and-excitation: global pool, a reduce layer with ReLU, an expand
  layer) rescales the tensor's channels by ``2 * sigmoid(.)`` (identity at initialisation) and
  stays in the model;
* the slimming head, a linear layer over the reduced features, gives one logit per width choice
  (the model's profiles, with the layers before the gate at the shared width).

:class:`GatedSupernet` runs the rest of the network at the chosen width, per sample. Training
(:func:`train_gate`) follows DS-Net: the sandwich gate sparsification target of a sample is the
narrowest choice when the narrowest sub-network classifies it correctly and the widest otherwise;
the gated output mixes the choices with Gumbel-softmax straight-through weights; a penalty
weighted by ``macs_weight`` on the expected MACs pushes towards narrow choices; batch norm frozen.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import format as fmt
from .slimmable import batches
from .supernet import Supernet, Widths

__all__ = ["Gate", "GatedSupernet", "GateReport", "default_gate_point", "evaluate_gate", "gumbel_temperature",
           "train_gate"]


class Gate(nn.Module):
    """The double-headed gate over a tensor of ``channels`` active channels."""

    def __init__(self, channels: int, choices: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)
        self.slim = nn.Linear(hidden, choices)
        nn.init.zeros_(self.expand.weight)  # attention starts as the identity
        nn.init.zeros_(self.expand.bias)
        nn.init.zeros_(self.slim.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x with its channels rescaled by the attention head, slimming logits [N, choices])."""
        h = F.relu(self.reduce(x.mean(dim=(2, 3))))
        attention = 2.0 * torch.sigmoid(self.expand(h))
        return x * attention[:, :, None, None], self.slim(h)


def default_gate_point(net: Supernet) -> str:
    """The first tensor after a spatial downsampling through which every path passes (the end of
    the first stage whose output feeds the rest)."""
    producer = {op.output: i for i, op in enumerate(net.ops)}
    input_hw = net.input_shape[2:]
    for i, op in enumerate(net.ops[:-1]):
        shape = net._shapes[op.output]
        if len(shape) != 4 or tuple(shape[2:]) == tuple(input_hw):
            continue
        later = [t for o in net.ops[i + 1:] for t in o.inputs]
        if all(t == op.output or producer.get(t, -1) > i for t in later):
            return op.output
    raise ValueError("found no tensor after a downsampling that every path passes through; name one with gate_at")


@dataclass
class GateReport:
    accuracy: float
    macs: float                       # average per sample
    counts: dict[str, int] = field(default_factory=dict)  # choice name -> samples


class GatedSupernet(nn.Module):
    """A supernet with a gate at tensor ``gate_at``; ``choices`` are profiles of ``net``.

    The choices' widths keep each profile's widths after the gate; every group produced before
    the gate (or by the gate's op) takes the widths of profile ``shared`` (default: the largest
    choice). The net's profiles are replaced by the choices (same names): recalibrate them
    (:meth:`prepare`) before training the gate.
    """

    def __init__(self, net: Supernet, gate_at: str | None = None, choices: Sequence[str] | None = None,
                 shared: str | None = None, reduction: int = 4) -> None:
        super().__init__()
        self.net = net
        self.gate_at = gate_at or default_gate_point(net)
        index = next((i for i, op in enumerate(net.ops) if op.output == self.gate_at), None)
        if index is None:
            raise ValueError(f"no op outputs tensor '{self.gate_at}'; gate points: "
                             f"{', '.join(op.output for op in net.ops[:-1])}")
        self.split = index + 1
        names = list(choices) if choices is not None else list(net.profile_names)
        unknown = [n for n in names if n not in net.profile_names]
        if unknown or not names:
            raise ValueError(f"gate choices {unknown or names} are not profiles of the model "
                             f"({', '.join(net.profile_names)})")
        before = {op.out_group for op in net.ops[:self.split] if op.out_group is not None}
        base = net.widths(shared if shared is not None else names[-1])
        widths = []
        for n in names:
            w = list(net.widths(n))
            for g in before:
                w[g] = base[g]
            widths.append(tuple(w))
        order = sorted(range(len(names)), key=lambda k: net.macs(widths[k]))
        self.choice_names = [names[k] for k in order]
        self.choice_widths: list[Widths] = [widths[k] for k in order]
        self.shared_groups = sorted(before)
        net.set_profiles(list(zip(self.choice_names, self.choice_widths)))
        self.choice_macs = torch.tensor([float(net.macs(w)) for w in self.choice_widths])
        channels = net.plan(self.choice_widths[0]).ops[index].out_width
        self.gate = Gate(channels, len(self.choice_widths), reduction)

    @property
    def full_macs(self) -> float:
        return float(self.net.macs(self.net.full_widths))

    def prepare(self, x: np.ndarray, samples: int = 2048) -> None:
        """Recalibrate the choices' batch norm on training images (their widths changed)."""
        from .slimmable import calibrate_supernet

        calibrate_supernet(self.net, x, samples)

    def head(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Run up to the gate and the gate itself: (tensors so far, slimming logits)."""
        values = {self.net.input_name: x}
        self.net.run_ops(values, self.choice_widths[0], 0, self.split)
        values[self.gate_at], logits = self.gate(values[self.gate_at])
        return values, logits

    def tail(self, values: dict[str, torch.Tensor], choice: int) -> torch.Tensor:
        vals = dict(values)
        self.net.run_ops(vals, self.choice_widths[choice], self.split, len(self.net.ops))
        return vals[self.net.meta["output"]]

    def forward(self, x: torch.Tensor, max_choice: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard gating: (outputs in batch order, chosen choice index per sample)."""
        values, logits = self.head(x)
        if max_choice is not None:
            logits = logits[:, :max_choice + 1]
        choice = logits.argmax(1)
        out = None
        for k in torch.unique(choice).tolist():
            rows = (choice == k).nonzero().squeeze(1)
            part = self.tail({n: (t.index_select(0, rows) if t.dim() and t.shape[0] == x.shape[0] else t)
                              for n, t in values.items()}, k)
            if out is None:
                out = part.new_zeros((x.shape[0],) + tuple(part.shape[1:]))
            out[rows] = part
        return out, choice

    def static(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        """The output when every sample takes ``choice`` (attention head included)."""
        values, _ = self.head(x)
        return self.tail(values, choice)

    def to_slim(self, name: str | None = None) -> fmt.SlimFile:
        """The gated model as a .slim file with a ``gate`` op (csrc/core/model.h) on ``gate_at``.

        The profiles are the choices, cheapest first (logit k chooses profile k). The ops before the
        gate run as :meth:`head` runs them, at the first choice's widths and batch-norm statistics:
        those become their shared epilogue, and they keep no per-profile ones. The engine then
        computes what this module computes in eval mode, gated or at any forced choice.
        """
        slim = self.net.to_slim(name)
        meta, tensors = copy.deepcopy(slim.meta), dict(slim.tensors)
        names = [p["name"] for p in meta["profiles"]]
        if names != self.choice_names:
            raise ValueError(f"the supernet's profiles {names} are not the gate's choices {self.choice_names} in "
                             "order; build the GatedSupernet again")
        infos = fmt.channel_maps(meta, meta["profiles"][0]["widths"])
        for op in meta["ops"][:self.split]:
            if op["op"] not in fmt.EPILOGUED:
                continue
            active = infos[op["output"]].channel_index()
            full = infos[op["output"]].shape[1]
            for which, default in (("scale", 1.0), ("bias", 0.0)):
                owns = [tensors.pop(fmt.epilogue_tensor_name(op["name"], which, n), None) for n in names]
                own = owns[0]  # the first choice's, as head() runs; the other choices' are dropped
                if own is None:
                    continue
                shared = tensors.get(f"{op['name']}.{which}", np.full(full, default, np.float32)).copy()
                shared[active] = own
                tensors[f"{op['name']}.{which}"] = shared
        taken = {op["name"] for op in meta["ops"]} | {op["output"] for op in meta["ops"]} | {meta["input"]["name"]}
        gate_name = next(n for n in ("gate", *(f"gate{i}" for i in range(1, len(taken) + 2))) if n not in taken)
        for op in meta["ops"][self.split:]:
            op["inputs"] = [gate_name if t == self.gate_at else t for t in op["inputs"]]
        if meta["output"] == self.gate_at:
            meta["output"] = gate_name
        g = self.gate
        meta["ops"].insert(self.split, {"op": "gate", "name": gate_name, "inputs": [self.gate_at],
                                        "output": gate_name, "channels": g.reduce.in_features,
                                        "hidden": g.reduce.out_features, "choices": g.slim.out_features})
        arrays = (g.reduce.weight.T, g.reduce.bias, g.expand.weight.T, g.expand.bias, g.slim.weight.T, g.slim.bias)
        for which, t in zip(fmt.GATE_TENSORS, arrays):
            tensors[f"{gate_name}.{which}"] = np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)
        for p in meta["profiles"]:
            p["macs"], p["params"] = fmt.profile_cost(meta, p["widths"], profile=p["name"], tensor_names=tensors)
        out = fmt.SlimFile(meta, tensors)
        fmt.validate(out)
        return out


def train_gate(gnet: GatedSupernet, train: tuple[np.ndarray, np.ndarray], *, epochs: int = 5,
               macs_weight: float = 1.0, lr: float = 1e-3, supernet_lr: float = 1e-4, batch_size: int = 64,
               tau: tuple[float, float] = (5.0, 0.5), seed: int = 0, progress: bool = True,
               log: Callable[[str], None] | None = None) -> list[float]:
    """DS-Net stage II; returns the mean loss per epoch. Batch norm stays frozen (eval mode);
    the Gumbel-softmax temperature falls from ``tau[0]`` to ``tau[1]`` over the epochs."""
    say = log or (lambda m: print(m, file=sys.stderr))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    gnet.net.eval()  # frozen batch norm: running statistics of each choice
    gate_params = list(gnet.gate.parameters())
    groups = [{"params": gate_params, "lr": lr}]
    if supernet_lr > 0:
        groups.append({"params": [p for p in gnet.net.parameters() if p.requires_grad], "lr": supernet_lr})
    opt = torch.optim.Adam(groups)
    macs = gnet.choice_macs / gnet.full_macs
    k_last = len(gnet.choice_widths) - 1
    losses = []
    for epoch in range(epochs):
        temperature = gumbel_temperature(epoch, epochs, *tau)
        total, count = 0.0, 0
        for x, y in batches(*train, batch_size, shuffle=True, generator=gen, drop_last=True):
            values, logits = gnet.head(x)
            outs = torch.stack([gnet.tail(values, k) for k in range(len(gnet.choice_widths))], 1)  # [N, K, C]
            with torch.no_grad():  # sandwich gate sparsification: narrowest if it is right, else widest
                target = torch.where(outs[:, 0].argmax(1) == y, 0, k_last)
            weights = F.gumbel_softmax(logits, tau=temperature, hard=True)
            gated = (weights[:, :, None] * outs).sum(1)
            expected = (torch.softmax(logits, 1) * macs).sum(1).mean()
            loss = F.cross_entropy(gated, y) + F.cross_entropy(logits, target) + macs_weight * expected
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()), count + 1
        losses.append(total / max(count, 1))
        if progress:
            say(f"gate epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}")
    return losses


@torch.no_grad()
def evaluate_gate(gnet: GatedSupernet, x: np.ndarray, y: np.ndarray, max_choice: int | None = None,
                  batch_size: int = 256) -> GateReport:
    """Accuracy (%), average MACs per sample and the count of each choice, hard gating."""
    gnet.eval()
    correct, macs = 0, 0.0
    counts = torch.zeros(len(gnet.choice_widths), dtype=torch.long)
    for xb, yb in batches(x, y, batch_size):
        out, choice = gnet(xb, max_choice)
        correct += int((out.argmax(1) == yb).sum())
        macs += float(gnet.choice_macs[choice].sum())
        counts += torch.bincount(choice, minlength=len(counts))
    return GateReport(100.0 * correct / len(x), macs / len(x),
                      {n: int(c) for n, c in zip(gnet.choice_names, counts)})


def gumbel_temperature(epoch: int, epochs: int, start: float = 5.0, end: float = 0.5) -> float:
    """An exponential annealing schedule for the Gumbel-softmax temperature."""
    return start * (end / start) ** (epoch / max(epochs - 1, 1)) if epochs > 1 else end

