"""Slimmable training of a :class:`~slimrt.train.supernet.Supernet`: every width accurate.

One readable loop, ``train_one_epoch`` / ``evaluate``, driven by :func:`fit` with a
:class:`TrainConfig`. Methods:

``sandwich``  Slimmable Networks / US-Nets: each step runs the largest width, the smallest and
              ``num_random`` random widths on the whole batch, one backward pass each, and
              takes one optimiser step on the summed gradients.
``parallel``  PSE-Net parallel sub-networks: the same widths, but the batch is cut into one
              slice per width and ONE forward/backward runs them all (batch norm per slice).
``fixed``     one width only (``profile``): plain training of the full net, or of one
              sub-network on its own (the per-width reference).

Distillation (``distill``): ``inplace`` (the largest width's soft output teaches the others;
in parallel mode a no-grad full-width pass of the batch gives it), ``ema`` (DS-Net's in-place
ensemble bootstrapping: an exponential moving average of the supernet teaches every width but
the largest), or ``none`` (labels for every width). Random widths are uniform multipliers in
``[min_multiplier, 1]`` (``sampling="uniform"``, US-Nets) or named profiles
(``sampling="profiles"``, S-Net; also the pruned, non-uniform ones).

After training, every named profile's batch-norm statistics are recalibrated on training data
(post-statistics), so each profile runs with its own.

Data-parallel: when ``torch.distributed`` is initialised (``torchrun``), each rank trains on its
shard of every batch, the model is wrapped in DistributedDataParallel (gradients averaged), and
every rank draws the same widths.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .supernet import ProfileKey, Supernet, Widths

__all__ = ["TrainConfig", "EpochResult", "History", "fit", "train_one_epoch", "evaluate", "Ema", "batches"]

METHODS = ("sandwich", "parallel", "fixed")
DISTILL = ("inplace", "ema", "none")


@dataclass
class TrainConfig:
    """Every knob of :func:`fit`, with defaults that work on the bundled data sets."""

    method: str = "sandwich"
    distill: str = "inplace"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"          # "adamw" | "sgd" (momentum 0.9, nesterov)
    num_random: int = 2               # random widths per step besides the largest and smallest
    sampling: str = "uniform"         # "uniform" multipliers | named "profiles"
    profile: ProfileKey | None = None  # method "fixed": the width trained (default: the largest)
    label_smoothing: float = 0.0
    ema_decay: float = 0.998
    temperature: float = 1.0
    label_weight: float = 0.5         # share of the label loss for distilled widths (0: teacher only)
    largest_share: float | None = None  # parallel: share of the batch for the largest width (None: equal)
    parallel_impl: str = "slice"      # parallel: "slice" (each slice on its own prefix) | "mask" (one masked pass)
    bn_l1: float = 0.0                # L1 penalty on batch-norm scales (network slimming, SP-Net)
    augment: int = 1                  # random shifts of up to this many pixels (0: none)
    calibration_samples: int = 2048   # training samples for the final BN recalibration
    seed: int = 0
    threads: int | None = None
    eval_profiles: Sequence[ProfileKey] | None = None  # accuracy per epoch (default: named profiles)

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.distill not in DISTILL:
            raise ValueError(f"unknown distillation '{self.distill}'; choose one of {', '.join(DISTILL)}")
        if self.sampling not in ("uniform", "profiles"):
            raise ValueError(f"sampling must be 'uniform' or 'profiles', got '{self.sampling}'")
        if self.parallel_impl not in ("slice", "mask"):
            raise ValueError(f"parallel_impl must be 'slice' or 'mask', got '{self.parallel_impl}'")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got '{self.optimizer}'")
        if self.epochs < 1 or self.batch_size < 2 or self.num_random < 0 or not self.lr > 0:
            raise ValueError("epochs >= 1, batch_size >= 2, num_random >= 0 and lr > 0 are required")


@dataclass
class EpochResult:
    epoch: int
    loss: float
    seconds: float
    images_per_second: float
    accuracy: dict[str, float] = field(default_factory=dict)  # profile -> test accuracy, %


@dataclass
class History:
    """What a run did: its config, every epoch, and the widths it sampled with their losses
    (the prior of PSE-Net's search: which sub-networks trained well)."""

    config: dict[str, Any]
    epochs: list[EpochResult] = field(default_factory=list)
    samples: list[tuple[Widths, float]] = field(default_factory=list)

    MAX_SAMPLES = 20000

    def record(self, widths: Sequence[Widths], losses: Sequence[float]) -> None:
        if len(self.samples) < self.MAX_SAMPLES:
            self.samples.extend((tuple(w), float(v)) for w, v in zip(widths, losses))

    def to_json(self) -> dict[str, Any]:
        return {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.items()},
                "epochs": [asdict(e) for e in self.epochs],
                "samples": [{"widths": list(w), "loss": v} for w, v in self.samples]}

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.median([e.seconds for e in self.epochs]))


class Ema:
    """Exponential moving average of a module's parameters and buffers (the EMA teacher)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up: early steps move fast
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(m.detach(), alpha=1 - d)
            else:
                e.copy_(m)


# -- data ---------------------------------------------------------------------------------------


def batches(x: np.ndarray, y: np.ndarray | None, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False,
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Mini-batches of numpy arrays as tensors; ``shard=(rank, world)`` takes a rank's part of each."""
    n = len(x)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    rank, world = shard
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size][rank::world]
        if len(idx) == 0:
            continue
        yield torch.from_numpy(x[idx]), (None if y is None else torch.from_numpy(y[idx]))


def _shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by a random offset of up to ``pixels`` in each direction (zero fill)."""
    if pixels <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    oy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w)
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    flat = padded.reshape(n, c, -1)
    index = rows * (w + 2 * pixels) + cols
    return flat.gather(2, index.reshape(n, c, -1)).reshape(n, c, h, w)


# -- losses -------------------------------------------------------------------------------------


def _soft_ce(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Cross-entropy against the teacher's soft output (in-place distillation, as US-Nets)."""
    target = F.softmax(teacher / t, dim=1)
    return -(target * F.log_softmax(student / t, dim=1)).sum(1).mean() * (t * t)


# -- one epoch ----------------------------------------------------------------------------------


def _step_widths(net: Supernet, cfg: TrainConfig, gen: torch.Generator) -> list[Widths]:
    if cfg.method == "fixed":
        return [net.widths(cfg.profile if cfg.profile is not None else net.largest_profile)]
    largest = net.widths(net.largest_profile) if cfg.sampling == "profiles" else net.full_widths
    smallest = net.widths(0) if cfg.sampling == "profiles" else net.widths(net.min_multiplier)
    return [largest, smallest] + [net.sample_widths(gen, cfg.sampling) for _ in range(cfg.num_random)]


def train_one_epoch(model: torch.nn.Module, net: Supernet, data: tuple[np.ndarray, np.ndarray],
                    optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainConfig,
                    gen: torch.Generator, ema: Ema | None = None, shard: tuple[int, int] = (0, 1),
                    bar: Any = None, history: History | None = None) -> tuple[float, int]:
    """One pass over ``data``; ``model`` is ``net`` or its DDP wrapper. Returns (mean loss, images).
    With ``history``, every sampled width and its loss are recorded there."""
    model.train()
    total, count, images = 0.0, 0, 0
    for x, y in batches(*data, cfg.batch_size, shuffle=True, generator=gen, drop_last=True, shard=shard):
        x = _shift(x, cfg.augment, gen)
        widths = _step_widths(net, cfg, gen)
        optimizer.zero_grad(set_to_none=True)
        losses = _parallel_step(model, net, x, y, widths, cfg, ema) if cfg.method == "parallel" \
            else _sandwich_step(model, x, y, widths, cfg, ema)
        loss = float(sum(losses))
        if history is not None:
            history.record(widths, losses)
        if cfg.bn_l1 > 0:  # subgradient of bn_l1 * sum |gamma|
            for bn in net.bn_layers():
                if bn.weight.grad is not None:
                    bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=cfg.bn_l1)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(net)
        total, count, images = total + loss, count + 1, images + len(x) * shard[1]
        if bar is not None:
            bar.update(len(x) * shard[1])
            bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
    return total / max(count, 1), images


def _sandwich_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, widths: list[Widths],
                   cfg: TrainConfig, ema: Ema | None) -> list[float]:
    teacher = None
    if cfg.distill == "ema" and ema is not None and len(widths) > 1:
        with torch.no_grad():
            teacher = ema.module(x, widths[0])
    losses = []
    for i, w in enumerate(widths):
        sync = getattr(model, "no_sync", None)
        context = sync() if sync is not None and i < len(widths) - 1 else _null()
        with context:
            out = model(x, w)
            if i == 0 or cfg.distill == "none" or teacher is None:
                loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            else:
                loss = _distilled(out, teacher, y, cfg)
            if i == 0 and cfg.distill == "inplace":
                teacher = out.detach()
            loss.backward()
        losses.append(float(loss.detach()))
    return losses


def slice_sizes(n: int, slices: int, largest_share: float | None = None) -> list[int]:
    """Samples per slice of a batch of ``n``: equal, or ``largest_share`` of it for the first
    (largest) width and equal parts of the rest; every slice gets at least one sample."""
    if n < slices:
        raise ValueError(f"a batch of {n} cannot be cut into {slices} slices; raise the batch size")
    if largest_share is None or slices == 1:
        base, extra = divmod(n, slices)
        return [base + (i < extra) for i in range(slices)]
    first = min(max(int(round(n * largest_share)), 1), n - (slices - 1))
    return [first] + slice_sizes(n - first, slices - 1)


def _distilled(out: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """A narrower width's loss: the teacher's soft output, plus ``label_weight`` of the labels."""
    loss = _soft_ce(out, teacher, cfg.temperature)
    if cfg.label_weight > 0:
        loss = (1 - cfg.label_weight) * loss + cfg.label_weight * F.cross_entropy(
            out, y, label_smoothing=cfg.label_smoothing)
    return loss


def _parallel_step(model: torch.nn.Module, net: Supernet, x: torch.Tensor, y: torch.Tensor,
                   widths: list[Widths], cfg: TrainConfig, ema: Ema | None) -> list[float]:
    teacher = None
    if cfg.distill == "ema" and ema is not None:
        with torch.no_grad():
            teacher = ema.module(x, widths[0])
    elif cfg.distill == "inplace":
        with torch.no_grad():
            teacher = net(x, widths[0], bn_stats="none")
    sizes = slice_sizes(len(x), len(widths), cfg.largest_share)
    out = model(x, slices=widths, sizes=sizes, impl=cfg.parallel_impl)
    losses = []
    start = 0
    for i, size in enumerate(sizes):
        part, target = out[start:start + size], y[start:start + size]
        if i == 0 or teacher is None:
            losses.append(F.cross_entropy(part, target, label_smoothing=cfg.label_smoothing))
        else:
            losses.append(_distilled(part, teacher[start:start + size], target, cfg))
        start += size
    torch.stack(losses).sum().backward()  # one mean loss per width, as the sandwich sums them
    return [float(v.detach()) for v in losses]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(net: Supernet, x: np.ndarray, y: np.ndarray, profiles: Sequence[ProfileKey],
             batch_size: int = 256) -> dict[str, float]:
    """Top-1 accuracy (%) of the supernet in eval mode at each profile."""
    was = net.training
    net.eval()
    result = {}
    for key in profiles:
        correct = 0
        for xb, yb in batches(x, y, batch_size):
            correct += int((net(xb, key).argmax(1) == yb).sum())
        result[str(key)] = 100.0 * correct / len(x)
    net.train(was)
    return result


# -- the whole run ------------------------------------------------------------------------------


def fit(net: Supernet, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None = None,
        config: TrainConfig | None = None, *, progress: bool = True,
        log: Callable[[str], None] | None = None) -> History:
    """Train ``net`` in place with ``config`` and recalibrate every profile's BN statistics.

    ``train`` and ``test`` are (x float32 NCHW, y int64) arrays. With ``test``, the accuracy of
    every evaluated profile is reported at each epoch's end. Returns the :class:`History`.
    """
    cfg = config or TrainConfig()
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    say = log or (lambda message: print(message, file=sys.stderr))
    rank, world = _distributed()
    model: torch.nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, broadcast_buffers=False)
    params = [p for p in net.parameters() if p.requires_grad]
    steps = cfg.epochs * max(len(train[0]) // cfg.batch_size, 1)
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                                                           weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps,
                                                    pct_start=0.15, anneal_strategy="cos")
    ema = Ema(net, cfg.ema_decay) if cfg.distill == "ema" else None
    history = History(config=asdict(cfg))
    eval_keys = list(cfg.eval_profiles) if cfg.eval_profiles is not None else list(net.profile_names)
    show = progress and rank == 0
    for epoch in range(1, cfg.epochs + 1):
        bar = _bar(len(train[0]) - len(train[0]) % cfg.batch_size, f"epoch {epoch}/{cfg.epochs}") if show else None
        t0 = time.perf_counter()
        loss, images = train_one_epoch(model, net, train, optimizer, scheduler, cfg, gen, ema,
                                       (rank, world), bar, history)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        result = EpochResult(epoch, loss, seconds, images / max(seconds, 1e-9))
        if test is not None and rank == 0 and (epoch == cfg.epochs or show):
            result.accuracy = evaluate(net, test[0], test[1], eval_keys)
            if show:
                say(f"epoch {epoch}: loss {loss:.3f}, {result.images_per_second:.0f} img/s, accuracy "
                    + ", ".join(f"{k} {v:.1f}%" for k, v in result.accuracy.items()))
        history.epochs.append(result)
    calibrate_supernet(net, train[0], cfg.calibration_samples, cfg.batch_size, cfg.seed)
    if test is not None and rank == 0:
        history.epochs[-1].accuracy = evaluate(net, test[0], test[1], eval_keys)
    return history


def calibrate_supernet(net: Supernet, x: np.ndarray, samples: int = 2048, batch_size: int = 256,
                       seed: int = 0, profiles: Sequence[ProfileKey] | None = None, shared: bool = True) -> None:
    """Recompute the BN statistics of ``profiles`` (default: every named one) on up to
    ``samples`` images of ``x``; ``shared``: the largest profile's become the shared ones."""
    rng = np.random.default_rng(seed)
    take = rng.permutation(len(x))[:samples] if len(x) > samples else np.arange(len(x))
    data = [xb for xb, _ in batches(x[np.sort(take)], None, batch_size)]
    net.recalibrate(data, profiles, shared=shared)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _bar(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; training goes on without it
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True, file=sys.stderr)

