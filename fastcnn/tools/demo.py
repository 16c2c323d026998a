"""``fastcnn demo``: train a small fastcnn CNN on scikit-learn's handwritten digits, end to end.

The 1,797 8x8 digit images (10 classes) are upscaled to 32x32 uint8 images and split into a training
and a held-out test set with a fixed seed. A CNN built from ``fastcnn.nn`` only (convolutions with the
ReLU fused in, max pooling, a residual block whose add+ReLU is fused into its second convolution,
flatten, a fully connected layer) is trained with SGD + momentum on batches augmented on the device by
:class:`fastcnn.augment.RandomAffineAugment` (random resized crop, rotation and zoom, normalisation:
one fused kernel per batch). The test set is then scored with :mod:`fastcnn.metrics` (accuracy,
per-class precision/recall/F1, one-vs-rest ROC AUC, confusion matrix; ``roc.png`` and
``confusion_matrix.png`` are written to the output folder) and the same training step is timed on the
fastcnn model and on an identical ``torch.nn`` model with the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import metrics
from .. import nn as fnn
from ..augment import RandomAffineAugment
from .bench.timing import time_wall
from .devices import resolve_device

__all__ = ["DemoConfig", "DemoResult", "DigitNet", "add_arguments", "load_digits", "main", "run"]

NUM_CLASSES = 10


@dataclasses.dataclass
class DemoConfig:
    """Settings of one demo run (the CLI flags of ``fastcnn demo``)."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    image_size: int = 32
    test_fraction: float = 0.25
    out_dir: str = "out"
    device: str = "auto"
    train_subset: int | None = None  # use only this many training images (smoke tests)
    bench_steps: int = 15  # timed steps per model for the speed comparison (0: skip it)
    progress: bool = True


@dataclasses.dataclass
class DemoResult:
    """What a demo run measured."""

    device: str
    test_accuracy: float
    report: metrics.ClassificationReport
    epoch_losses: list[float]
    train_seconds: float
    total_seconds: float
    files: list[str]
    step_ms: dict[str, float]  # median training-step time per model ("fastcnn", "torch.nn")


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------


def load_digits(
    image_size: int = 32, test_fraction: float = 0.25, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's digits as ``uint8 [N, 1, S, S]`` images (bilinear upscaling of the 0..16 pixels to
    0..255) and int64 labels: ``(x_train, y_train, x_test, y_test)``, a stratified split by ``seed``."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(labels.shape[0]).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


# ----------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------


class DigitNet(nn.Module):
    """conv-ReLU → max-pool → residual block → conv-ReLU → max-pool → conv-ReLU → max-pool → flatten → FC.

    ``backend="fastcnn"`` builds it from ``fastcnn.nn`` (activations and the residual add fused into the
    convolutions); ``backend="torch"`` builds the same network from ``torch.nn`` with separate ReLU and
    add. Both have identical parameter names, so one's ``state_dict`` loads into the other.
    """

    def __init__(self, backend: str = "fastcnn", width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if backend not in ("fastcnn", "torch"):
            raise ValueError(f"backend must be 'fastcnn' or 'torch', got {backend!r}")
        self.fused = backend == "fastcnn"
        relu = {"activation": "relu"} if self.fused else {}
        conv = fnn.Conv2d if self.fused else nn.Conv2d
        pool = fnn.MaxPool2d if self.fused else nn.MaxPool2d
        linear = fnn.Linear if self.fused else nn.Linear
        flatten = fnn.Flatten if self.fused else nn.Flatten
        w = width
        self.stem = conv(1, w, 3, padding=1, **relu)
        self.block_conv1 = conv(w, w, 3, padding=1, **relu)
        self.block_conv2 = conv(w, w, 3, padding=1, **relu)  # fused: relu(conv(x) + identity)
        self.conv3 = conv(w, 2 * w, 3, padding=1, **relu)
        self.conv4 = conv(2 * w, 2 * w, 3, padding=1, **relu)
        self.pool = pool(2)
        self.flatten = flatten()
        self.fc = linear(2 * w * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            x = self.pool(self.stem(x))  # 32 -> 16
            x = self.block_conv2(self.block_conv1(x), residual=x)
            x = self.pool(self.conv3(x))  # 16 -> 8
            x = self.pool(self.conv4(x))  # 8 -> 4
        else:
            x = self.pool(F.relu(self.stem(x)))
            x = F.relu(self.block_conv2(F.relu(self.block_conv1(x))) + x)
            x = self.pool(F.relu(self.conv3(x)))
            x = self.pool(F.relu(self.conv4(x)))
        return self.fc(self.flatten(x))


def make_augment(image_size: int, seed: int) -> RandomAffineAugment:
    """The demo's augmentation: mild crop, rotation and zoom (no flips: digits are not symmetric)."""
    return RandomAffineAugment(
        image_size,
        hflip=0.0,
        crop_scale=(0.8, 1.0),
        crop_ratio=(0.85, 1.15),
        degrees=12.0,
        scale=(0.9, 1.1),
        mean=0.3,
        std=0.4,
        seed=seed,
    )


# ----------------------------------------------------------------------------------------------------------
# training, evaluation, timing
# ----------------------------------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False, dynamic_ncols=True)


def train(
    model: nn.Module,
    augment: RandomAffineAugment,
    x: Tensor,
    y: Tensor,
    cfg: DemoConfig,
    log: Callable[[str], None] = print,
) -> list[float]:
    """SGD with momentum and a cosine learning-rate schedule; returns the mean loss of each epoch."""
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )
    steps_per_epoch = (x.shape[0] + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )
    order_gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    augment.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=order_gen).to(x.device)
        total, count = torch.zeros((), device=x.device), 0
        with _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress) as bar:
            for start in range(0, x.shape[0], cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                inputs, target = augment(x[idx]), y[idx]
                loss = F.cross_entropy(model(inputs), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * idx.shape[0]
                count += idx.shape[0]
                bar.update(1)
        losses.append(float(total) / count)
        log(f"epoch {epoch + 1:>2}/{cfg.epochs}  loss {losses[-1]:.4f}  lr {sched.get_last_lr()[0]:.4f}")
    return losses


@torch.no_grad()
def evaluate(
    model: nn.Module, augment: RandomAffineAugment, x: Tensor, y: Tensor, batch_size: int = 256
) -> metrics.ClassificationReport:
    """Scores ``model`` on ``(x, y)`` with :class:`fastcnn.metrics.ClassificationMetrics`."""
    model.eval()
    augment.eval()
    stream = metrics.ClassificationMetrics(NUM_CLASSES, top_k=(1, 2))
    for start in range(0, x.shape[0], batch_size):
        logits = model(augment(x[start : start + batch_size]))
        stream.update(logits.softmax(dim=1), y[start : start + batch_size])
    return stream.compute()


def time_training_step(
    models: dict[str, nn.Module], inputs: Tensor, target: Tensor, steps: int, warmup: int = 3
) -> dict[str, float]:
    """Median milliseconds of one SGD step (forward, loss, backward, update) for each model, measured
    alternately on the same batch so that both see the same machine load."""

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss = F.cross_entropy(model(inputs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    steps_by_name = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        steps_by_name[name] = functools.partial(step, model, optimizer)
    times = time_wall(list(steps_by_name.values()), inputs.device, steps, warmup)
    return dict(zip(steps_by_name, times, strict=True))


def run(cfg: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    """Trains, evaluates, plots and times the demo model; see the module docstring."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    x_train, y_train, x_test, y_test = load_digits(cfg.image_size, cfg.test_fraction, cfg.seed)
    if cfg.train_subset is not None:
        x_train, y_train = x_train[: cfg.train_subset], y_train[: cfg.train_subset]
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)
    log(
        f"fastcnn demo on {device}: digits {x_train.shape[0]} train / {x_test.shape[0]} test images, "
        f"{cfg.image_size}x{cfg.image_size}, {cfg.epochs} epochs, batch {cfg.batch_size}, seed {cfg.seed}"
    )

    model = DigitNet("fastcnn").to(device)
    augment = make_augment(cfg.image_size, cfg.seed)
    t_train = time.perf_counter()
    losses = train(model, augment, x_train, y_train, cfg, log)
    train_seconds = time.perf_counter() - t_train

    report = evaluate(model, augment, x_test, y_test)
    names = [str(c) for c in range(NUM_CLASSES)]
    log("")
    log(f"test accuracy {report.accuracy:.4f}  (top-2 {report.top_k_accuracy[2]:.4f})")
    log(f"macro ROC AUC {report.macro['auc']:.5f}")
    log(report.format(names))
    log("confusion matrix (row = true digit, column = predicted):")
    log(_format_matrix(report.confusion_matrix))

    os.makedirs(cfg.out_dir, exist_ok=True)
    files = [
        metrics.plot_roc(
            report.roc,
            os.path.join(cfg.out_dir, "roc.png"),
            labels=[f"digit {n}" for n in names],
            aucs=report.auc,
            title=f"fastcnn digits: one-vs-rest ROC (macro AUC {report.macro['auc']:.4f})",
        ),
        metrics.plot_confusion_matrix(
            report.confusion_matrix,
            os.path.join(cfg.out_dir, "confusion_matrix.png"),
            class_names=names,
            title=f"fastcnn digits: test accuracy {report.accuracy:.4f}",
        ),
    ]
    log(f"wrote {', '.join(files)}")

    step_ms: dict[str, float] = {}
    if cfg.bench_steps > 0:
        twin = DigitNet("torch").to(device)
        fast = DigitNet("fastcnn").to(device)
        fast.load_state_dict(model.state_dict())
        twin.load_state_dict(model.state_dict())
        augment.train()
        inputs = augment(x_train[: cfg.batch_size])
        step_ms = time_training_step(
            {"fastcnn": fast, "torch.nn": twin}, inputs, y_train[: cfg.batch_size], cfg.bench_steps
        )
        log("")
        log(f"training step, batch {inputs.shape[0]}, median of {cfg.bench_steps} on {device}:")
        for name, ms in step_ms.items():
            log(f"  {name:<8} {ms:8.2f} ms")
        log(f"  fastcnn / torch.nn time ratio: {step_ms['fastcnn'] / step_ms['torch.nn']:.2f}")

    total = time.perf_counter() - t_start
    log(f"done in {total:.1f} s (training {train_seconds:.1f} s)")
    return DemoResult(
        device=str(device),
        test_accuracy=report.accuracy,
        report=report,
        epoch_losses=losses,
        train_seconds=train_seconds,
        total_seconds=total,
        files=files,
        step_ms=step_ms,
    )


def _format_matrix(cm: Tensor) -> str:
    rows = cm.cpu().tolist()
    width = max(3, *(len(str(v)) for row in rows for v in row))
    header = "    " + " ".join(f"{c:>{width}}" for c in range(len(rows)))
    return "\n".join(
        [header] + [f"{i:>3} " + " ".join(f"{v:>{width}}" for v in row) for i, row in enumerate(rows)]
    )


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastcnn demo`` flags."""
    d = DemoConfig()
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the split, init and augmentation")
    parser.add_argument(
        "--out", default=d.out_dir, help=f"folder for roc.png, confusion_matrix.png ({d.out_dir})"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: GPU if any"
    )
    parser.add_argument(
        "--bench-steps", type=int, default=d.bench_steps, help="timed steps per model (0: skip)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Runs the demo from parsed CLI arguments; exit status 0."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"fastcnn demo: --{name.replace('_', '-')} must be positive")
    cfg = DemoConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out_dir=args.out,
        device=args.device,
        bench_steps=args.bench_steps,
        progress=not args.no_progress,
    )
    run(cfg)
    return 0
