"""Training, evaluation, conversion and checkpoints — the engine behind ``na-kernels``.

- :class:`TrainConfig` holds the published recipe as defaults (SGD, momentum 0.9,
  lr 0.1, weight decay 5e-4, cosine schedule, random crop + flip) plus p and noise.
- :func:`fit` trains one model (single process, or DistributedDataParallel when launched
  by ``torchrun``: env ``RANK``/``WORLD_SIZE``), with bf16 autocast on GPU, a checkpoint
  after every epoch (``last.pt``; ``best.pt`` for the best test accuracy so far;
  ``metrics.json`` with every epoch's loss, accuracy and learning rate) and exact resume.
- :func:`evaluate` (ANN accuracy) and :func:`evaluate_snn` (accuracy at every t <= T of
  a converted network).
- :func:`progress` (from ``na_kernels._progress``): tqdm when installed, else a plain stderr line.

Randomness is a pure function of ``(seed, epoch, rank)``: the data order and the
augmentation come from generators seeded by it, and torch's global generator (which the
NoisyQuant noise seeds and dropout draw from) is re-seeded with it at the start of every
epoch. So a resumed run continues exactly as the uninterrupted one would, and every DDP
rank draws its own noise stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from .._progress import progress
from .._validation import (
    check_bool,
    check_clip_level,
    check_int,
    check_levels,
    check_noise,
    check_optional_int,
    check_positive,
    check_real,
)
from ..nn.noisy_quant import NoisyQuant
from .datasets import BatchLoader, ImageData, load_dataset
from .models import build_model, check_image_size

__all__ = [
    "TrainConfig",
    "progress",
    "build_network",
    "make_optimizer",
    "fit",
    "evaluate",
    "evaluate_snn",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "ConfigError",
    "parse_device",
    "check_run_seed",
    "check_output_path",
    "network_from_checkpoint",
    "check_weights",
    "epoch_seed",
    "dist_info",
]

# the networks' NoisyQuant floor for λ (its min_lam default): an initial λ must lie above it
_MIN_LAM = inspect.signature(NoisyQuant).parameters["min_lam"].default


class ConfigError(ValueError):
    """A run's settings do not fit its data, its machine or its output folder."""


def check_run_seed(seed, name: str = "seed") -> int:
    """A run's seed: an int in 0 .. 2**32 - 1 (the data order, augmentation and noise generators
    are seeded with multiples of it, which must fit in 64 bits)."""
    seed = check_int(name, seed, minimum=0)
    if seed >= 2**32:
        raise ValueError(f"{name} must be an int in 0 .. 2**32 - 1, got {seed}")
    return seed


@dataclass
class TrainConfig:
    """A training run: the published recipe as defaults, plus p and noise. Checked on creation
    with the rules of ``na_kernels._validation`` (``noise=None`` is stored as ``"none"``)."""

    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    arch: str = "resnet20"
    p: int = 3  # quantization levels (3, 7, 15: 2-, 3-, 4-bit)
    noise: Optional[str] = "uniform"  # "uniform" (Noise Adaptor), "gaussian", "none" or None (QCFS)
    lam: Union[float, str] = "auto"  # initial clip λ of every activation, or "auto": set from the first batch
    epochs: int = 300
    batch_size: int = 128  # per process
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    augment: bool = True
    amp: bool = True  # bf16 autocast, on GPU only
    seed: int = 0
    out: str = "runs/na_kernels"
    resume: Optional[str] = None
    device: Optional[str] = None  # default: cuda if available else cpu
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None  # for smoke tests
    stop_after: Optional[int] = None  # stop after this epoch (split a run into jobs; --resume continues)
    overwrite: bool = False  # start over in an ``out`` that already holds a checkpoint

    def __post_init__(self):
        self.p = check_levels(self.p)
        self.noise = check_noise(self.noise).label
        self.lam = check_clip_level(self.lam, min_lam=_MIN_LAM)
        self.epochs = check_int("epochs", self.epochs, minimum=1)
        self.batch_size = check_int("batch_size", self.batch_size, minimum=1)
        self.lr = check_positive("lr", self.lr)
        self.momentum = check_real("momentum", self.momentum, minimum=0.0)
        self.weight_decay = check_real("weight_decay", self.weight_decay, minimum=0.0)
        self.warmup_epochs = check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs}): "
                "the learning rate would never reach its peak"
            )
        self.seed = check_run_seed(self.seed)
        for flag in ("augment", "amp", "progress", "overwrite"):
            check_bool(flag, getattr(self, flag))
        self.max_steps_per_epoch = check_optional_int("max_steps_per_epoch", self.max_steps_per_epoch, minimum=1)
        self.stop_after = check_optional_int("stop_after", self.stop_after, minimum=1)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------
# model / optimizer
# ----------------------------------------------------------------------------------------


def build_network(arch: str, num_classes: int, in_channels: int, p: int, noise, lam=8.0) -> nn.Module:
    """``arch`` with every activation a :class:`na_kernels.nn.NoisyQuant` (p levels, clip λ or "auto", noise)."""
    return build_model(arch, num_classes, in_channels, act=lambda: NoisyQuant(p, lam=lam, noise=noise))


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    # biases, BatchNorm affine parameters and the clip λ of each activation: no weight decay
    return param.ndim <= 1


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD with ``weight_decay`` on the weights and none on biases, BatchNorm affines and λ."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not _is_no_decay(n, p)]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and _is_no_decay(n, p)]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
    )


def make_scheduler(optimizer, total_steps: int, warmup_steps: int = 0):
    """Cosine decay to 0 over ``total_steps`` optimizer steps (after a linear warmup)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of torch's global generator during ``epoch`` on ``rank``."""
    return (seed * 1_000_003 + epoch * 8191 + rank * 131 + 17) % (2**63 - 1)


# ----------------------------------------------------------------------------------------
# distributed
# ----------------------------------------------------------------------------------------


def dist_info() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def _init_distributed(device: torch.device) -> Tuple[int, int]:
    rank, world, _ = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def parse_device(device: Optional[str], name: str = "device") -> Optional[str]:
    """``device`` checked: None (the default), ``cpu``, ``cuda`` or ``cuda:<index>`` of a GPU
    this machine has; a ConfigError saying what is available otherwise. Returns the text."""
    if device is None:
        return None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = f"this machine has {gpus} CUDA GPU(s)" if gpus else "no CUDA GPU is available here"
    what = f"{name} {device!r}".strip()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what} is not a device; use cpu, cuda or cuda:<index> ({have})") from None
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        raise ConfigError(f"{what}: na_kernels runs on cpu or cuda; use cpu, cuda or cuda:<index> ({have})")
    if not gpus:
        raise ConfigError(f"{what}: {have} (torch.cuda.is_available() is False); use cpu")
    if dev.index is not None and dev.index >= gpus:
        raise ConfigError(f"{what}: {have} (indices 0..{gpus - 1}); use one of them")
    return device


def _pick_device(device: Optional[str]) -> torch.device:
    """``device`` as given (``cuda`` without an index: this process's LOCAL_RANK GPU);
    default: the LOCAL_RANK GPU if there is one, else the CPU."""
    dev = (
        torch.device(parse_device(device))
        if device is not None
        else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    )
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", dist_info()[2])
        torch.cuda.set_device(dev)
    return dev


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


# ----------------------------------------------------------------------------------------
# one epoch / evaluation
# ----------------------------------------------------------------------------------------


def train_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer,
    scheduler=None,
    *,
    amp: bool = True,
    desc: str = "train",
    show_progress: bool = True,
    max_steps: Optional[int] = None,
) -> Dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy (summed over DDP ranks)."""
    model.train()
    device = loader.device
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    bar = progress(_take(loader, steps), total=steps, desc=desc, enabled=show_progress)
    for i, (x, y) in enumerate(bar):
        with _autocast(device, amp):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            stats += torch.stack(
                [
                    loss.detach().double() * y.numel(),
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(y.numel()), dtype=torch.float64, device=device),
                ]
            )
        if show_progress and (i % 20 == 0 or i == steps - 1):  # .item() syncs the GPU: not every step
            s = stats.tolist()
            bar.set_postfix_str(f"loss {s[0] / s[2]:.3f} acc {100 * s[1] / s[2]:.1f}%")
    stats = _all_reduce_sum(stats)
    n = max(stats[2].item(), 1.0)
    return {"loss": stats[0].item() / n, "acc": stats[1].item() / n}


def _take(it: Iterable, n: int) -> Iterator:
    for i, item in enumerate(it):
        if i >= n:
            break
        yield item


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, *, amp: bool = True, desc: str = "eval", show_progress: bool = True
) -> float:
    """Top-1 accuracy of ``model`` in eval mode (no noise), summed over DDP ranks."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=loader.device)
    for x, y in progress(loader, desc=desc, enabled=show_progress):
        with _autocast(loader.device, amp):
            logits = model(x)
        correct += torch.tensor(
            [(logits.argmax(1) == y).sum().item(), y.numel()], dtype=torch.float64, device=loader.device
        )
    correct = _all_reduce_sum(correct)
    model.train(was_training)
    return correct[0].item() / max(correct[1].item(), 1.0)


@torch.no_grad()
def evaluate_snn(
    snn: nn.Module, loader: BatchLoader, *, T: Optional[int] = None, desc: str = "snn", show_progress: bool = True
) -> List[float]:
    """Accuracy at every time step: ``acc[t-1]`` is the accuracy of the mean output over
    steps 1..t (summed over DDP ranks). ``snn(x)`` (``snn(x, T=T)`` when T is given) must
    return ``[T, B, K]`` per-step running-mean outputs."""
    snn.eval()
    run = {} if T is None else {"T": T}
    correct, total = None, 0
    for x, y in progress(loader, desc=desc, enabled=show_progress):
        out = snn(x, **run)
        if out.dim() != 3:
            raise ValueError(f"the SNN must return [T, B, K]; got shape {tuple(out.shape)}")
        hits = (out.argmax(-1) == y.unsqueeze(0)).sum(1).double()  # [T]
        correct = hits if correct is None else correct + hits
        total += y.numel()
    stats = _all_reduce_sum(
        torch.cat([correct, torch.tensor([float(total)], dtype=torch.float64, device=correct.device)])
    )
    return (stats[:-1] / stats[-1]).tolist()


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------


def check_output_path(path: str, name: str = "out", folder: bool = True, purpose: str = "the checkpoints") -> str:
    """``path`` checked as a place to write: a folder (``folder``, for ``purpose``) or a file there.
    A ConfigError if it (or the nearest existing folder above it) is a file of the wrong kind. Returns it."""
    target = os.path.abspath(path)
    what = f"{name} {path}".strip()
    if folder and os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"{what} is a file, not a folder: choose a folder for {purpose}")
    if not folder and os.path.isdir(target):
        raise ConfigError(f"{what} is a folder: give a file name, e.g. {os.path.join(path, 'report.json')}")
    above = os.path.dirname(target) if not folder else target
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ConfigError(f"{what} cannot be created: {above} is a file, not a folder; choose another path")
    if not os.access(above, os.W_OK):
        raise ConfigError(f"{what} cannot be written: no write permission in {above}; choose another path")
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(
    path: str,
    model: nn.Module,
    optimizer=None,
    scheduler=None,
    *,
    epoch: int,
    config: Dict[str, Any],
    meta: Dict[str, Any],
    history: Sequence[Dict[str, Any]] = (),
) -> None:
    """Atomically write ``{model, optimizer, scheduler, epoch, config, meta, history}``."""
    state = {
        "format": "na_kernels-checkpoint-1",
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "config": dict(config),
        "meta": dict(meta),
        "history": list(history),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the run."""


_WRITTEN_BY = "a last.pt or best.pt written by `na-kernels train`"
# what network_from_checkpoint and --resume read: key -> (type, the keys it must hold)
_CHECKPOINT_KEYS = {
    "model": (dict, ()),
    "epoch": (int, ()),
    "config": (dict, ("arch", "p", "noise", "lam", "dataset")),
    "meta": (dict, ("num_classes", "in_channels")),
}


def _first_line(error: BaseException) -> str:
    """An exception's message on one line without terminal colour codes (torch.load's weights_only
    errors are several paragraphs of advice around the one line that says what failed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        text = re.split(r"(?<=\.)\s", " ".join(text.split()))[0]
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """The dict ``save_checkpoint`` wrote, plus ``"path"`` (where it was read, for error messages);
    CheckpointError (one line) if it is missing, unreadable, not a na_kernels checkpoint, or lacks
    what a network is rebuilt from (``model``, ``epoch``, ``config``, ``meta``)."""
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint not found: {path}"
            + (" (a folder; pass the last.pt or best.pt in it)" if os.path.isdir(path) else "")
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable na_kernels checkpoint ({_first_line(e)}); pass {_WRITTEN_BY}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "na_kernels-checkpoint-1":
        raise CheckpointError(f"{path} is not a na_kernels checkpoint; pass {_WRITTEN_BY}")
    for key, (kind, inner) in _CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            what = "has no" if key not in state else f"has a {type(state[key]).__name__} as its"
            raise CheckpointError(
                f"{path} {what} '{key}' ({kind.__name__} expected): the file is damaged or "
                f"from another program; pass {_WRITTEN_BY}"
            )
        missing = [k for k in inner if k not in state[key]]
        if missing:
            raise CheckpointError(
                f"{path}: its '{key}' lacks {', '.join(map(repr, missing))}: the file is damaged "
                f"or from another program; pass {_WRITTEN_BY}"
            )
    state["path"] = path
    return state


def check_weights(weights: Dict[str, Any], where: str) -> None:
    """Every entry of a checkpoint's weights is a tensor, and a floating one is finite (a NaN λ
    or weight is a damaged file or a diverged run, not something to convert); CheckpointError
    naming the first that is not."""
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{where}: the weights' entry {key!r:.80} is a {type(value).__name__}, not a "
                "tensor; the checkpoint is damaged or from another program"
            )
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{where}: tensor {key!r:.80} holds NaN or infinite values; the checkpoint is "
                "damaged or its training diverged"
            )


def _load_weights(model: nn.Module, weights: Dict[str, Any], where: str, arch: str) -> None:
    """``model.load_state_dict(weights)``, a one-line CheckpointError naming the first mismatch
    (a missing, unexpected, non-tensor, misshapen or non-finite tensor)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        k for k in own if k in weights and isinstance(weights[k], torch.Tensor) and weights[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = (
            ([f"missing {len(missing)} (e.g. {missing[0]})"] if missing else [])
            + ([f"unexpected {len(unexpected)} (e.g. {unexpected[0]})"] if unexpected else [])
            + (
                [
                    f"{len(shapes)} of another shape (e.g. {shapes[0]}: {tuple(weights[shapes[0]].shape)} "
                    f"vs {tuple(own[shapes[0]].shape)})"
                ]
                if shapes
                else []
            )
        )
        raise CheckpointError(
            f"{where}: the weights do not fit arch {arch!r}: {'; '.join(parts)}; "
            f"the checkpoint is damaged or its config does not match its weights"
        )
    check_weights(weights, where)  # after the shapes: a huge declared view is refused before it is read
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the weights do not load into arch {arch!r} ({_first_line(e)})") from None


def network_from_checkpoint(state: Dict[str, Any]) -> nn.Module:
    """Rebuild the trained network of a checkpoint (on CPU, eval mode); CheckpointError if the
    checkpoint's config names no known architecture or its weights do not fit it."""
    cfg, meta = state["config"], state["meta"]
    where = state.get("path", "checkpoint")
    try:
        model = build_network(cfg["arch"], meta["num_classes"], meta["in_channels"], cfg["p"], cfg["noise"], cfg["lam"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{where}: cannot rebuild its network ({e}); it was written by another version of na_kernels or is damaged"
        ) from None
    _load_weights(model, state["model"], where, cfg["arch"])
    return model.eval()


# ----------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------


def _resume(cfg: TrainConfig, model: nn.Module, optimizer, scheduler, device) -> Tuple[int, List[Dict[str, Any]]]:
    """Load ``cfg.resume`` into the model, optimizer and schedule; ``(epochs done, history)``."""
    state = load_checkpoint(cfg.resume, map_location=device)
    for key in ("arch", "p", "noise", "dataset"):
        if state["config"].get(key) != getattr(cfg, key):
            raise CheckpointError(
                f"--resume {cfg.resume}: checkpoint has {key}={state['config'].get(key)!r}, "
                f"this run has {getattr(cfg, key)!r}"
            )
    for key in ("optimizer", "scheduler"):
        if not isinstance(state.get(key), dict):
            raise CheckpointError(
                f"--resume {cfg.resume}: the checkpoint holds no {key} state, so the run cannot "
                "continue exactly; start a new run from it with another --out instead"
            )
    _load_weights(model, state["model"], f"--resume {cfg.resume}", cfg.arch)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"--resume {cfg.resume}: its optimizer / schedule state does not fit this run ({_first_line(e)})"
        ) from None
    return int(state["epoch"]), list(state.get("history") or [])


def fit(
    cfg: TrainConfig,
    train_data: Optional[ImageData] = None,
    test_data: Optional[ImageData] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.dataset`` with the recipe in ``cfg``; returns a summary.

    Writes, after every epoch (rank 0), into ``cfg.out``: ``last.pt``; ``best.pt`` when the
    test accuracy is the best so far (the earliest such epoch on ties; the selection is on the
    test split, as the papers report it, so its accuracy is an optimistic estimate); and
    ``metrics.json``: ``{"config", "epochs": [{epoch, train_loss, train_acc, test_acc, lr,
    time_s}, ...], "best": {epoch, test_acc, checkpoint}, "last": {...}}``.
    ``cfg.resume`` (a checkpoint path) continues from its epoch with its optimizer and schedule
    state. An ``out`` that already holds a checkpoint is refused (ConfigError) unless
    ``cfg.resume`` or ``cfg.overwrite`` is set. Everything the run needs (device, output
    folder, data, architecture vs image size, batch size) is checked before the first step.
    """
    check_output_path(cfg.out)
    device = _pick_device(cfg.device)
    if not cfg.resume and not cfg.overwrite:
        _refuse_existing_run(cfg.out)
    rank, world = _init_distributed(device)
    is_main = rank == 0
    say = log if is_main else (lambda *_: None)
    if train_data is None:
        train_data = load_dataset(cfg.dataset, cfg.data_dir, train=True)
    if test_data is None:
        test_data = load_dataset(cfg.dataset, cfg.data_dir, train=False)
    try:
        check_image_size(cfg.arch, train_data.image_size, cfg.dataset)
    except ValueError as e:
        raise ConfigError(str(e)) from None

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = build_network(cfg.arch, train_data.num_classes, train_data.in_channels, cfg.p, cfg.noise, cfg.lam)
    model.to(device)
    train_loader = BatchLoader(
        train_data,
        cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        drop_last=True,
        device=device,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
    )
    test_loader = BatchLoader(test_data, max(cfg.batch_size, 256), device=device, rank=rank, world_size=world)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(
            f"batch size {cfg.batch_size} x {world} process(es) is larger than the "
            f"{len(train_data)} training images of {cfg.dataset}: one epoch would take no step; "
            f"use a batch size of at most {len(train_data) // world}"
        )
    optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.epochs * steps, cfg.warmup_epochs * steps)

    start_epoch, history = 0, []
    if cfg.resume:
        start_epoch, history = _resume(cfg, model, optimizer, scheduler, device)
        say(f"resumed from {cfg.resume} after epoch {start_epoch}")

    net = model
    if world > 1:
        # conv weights with one input channel get grads in another stride layout: harmless
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    meta = {
        "num_classes": train_data.num_classes,
        "in_channels": train_data.in_channels,
        "image_size": train_data.image_size,
        "world_size": world,
    }
    ckpt = os.path.join(cfg.out, "last.pt")
    best_ckpt = os.path.join(cfg.out, "best.pt")
    best = _best_epoch(history)
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))  # this rank's own noise stream
        tr = train_epoch(
            net,
            train_loader,
            optimizer,
            scheduler,
            amp=cfg.amp,
            max_steps=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            show_progress=cfg.progress and is_main,
        )
        acc = evaluate(net, test_loader, amp=cfg.amp, desc="test", show_progress=False)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": tr["loss"],
                "train_acc": tr["acc"],
                "test_acc": acc,
                "lr": optimizer.param_groups[0]["lr"],
                "time_s": time.time() - t0,
            }
        )
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {tr['loss']:.4f} train {100 * tr['acc']:.2f}% test {100 * acc:.2f}%")
        if is_main:
            save_checkpoint(
                ckpt, model, optimizer, scheduler, epoch=epoch + 1, config=cfg.to_dict(), meta=meta, history=history
            )
            if best is None or acc > best["test_acc"]:
                best = history[-1]
                save_checkpoint(
                    best_ckpt,
                    model,
                    optimizer,
                    scheduler,
                    epoch=epoch + 1,
                    config=cfg.to_dict(),
                    meta=meta,
                    history=history,
                )
            _write_metrics(os.path.join(cfg.out, "metrics.json"), cfg, history, best_ckpt)
        if cfg.stop_after is not None and epoch + 1 >= cfg.stop_after:
            say(f"stopping after epoch {epoch + 1} (--stop-after); continue with --resume {ckpt}")
            break
    return {
        "model": model,
        "history": history,
        "checkpoint": ckpt,
        "rank": rank,
        "world_size": world,
        "test_acc": history[-1]["test_acc"] if history else None,
        "best": None
        if best is None
        else {"epoch": best["epoch"], "test_acc": best["test_acc"], "checkpoint": best_ckpt},
    }


def _refuse_existing_run(out: str) -> None:
    for name in ("last.pt", "best.pt"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            raise ConfigError(
                f"{out} already holds a run ({path}): continue it with --resume (TrainConfig.resume), "
                "replace it with --overwrite (TrainConfig.overwrite=True), or choose another --out"
            )


def _best_epoch(history: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The epoch with the highest test accuracy (the earliest on ties), or None."""
    best = None
    for h in history:
        if best is None or h["test_acc"] > best["test_acc"]:
            best = h
    return best


def _write_metrics(path: str, cfg: TrainConfig, history: Sequence[Dict[str, Any]], best_checkpoint: str) -> None:
    """Atomically write the run's metrics JSON (see :func:`fit`)."""
    best = _best_epoch(history)
    report = {
        "config": cfg.to_dict(),
        "epochs": list(history),
        "best": None
        if best is None
        else {"epoch": best["epoch"], "test_acc": best["test_acc"], "checkpoint": best_checkpoint},
        "last": history[-1] if history else None,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)
