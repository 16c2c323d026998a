"""``fastcnn train``: fine-tune (or train) a fastcnn model-zoo network on an image-classification dataset.

Data: a folder in torchvision ``ImageFolder`` layout (``root/<class>/<image>``, or ``root/train/<class>``
and ``root/val/<class>``), or ``digits``, the built-in dataset: scikit-learn's 8x8 handwritten digits
(1,797 images, 10 classes, shipped with scikit-learn) upscaled to RGB ``--image-size`` squares.

Each epoch trains, then validates; the checkpoint (``state_dict``, optimizer and scheduler state, epoch,
best validation accuracy, class names, the run's settings) is written whenever validation accuracy
improves, and training stops early after ``--patience`` epochs without improvement. ``--resume`` continues
a run from its checkpoint. The same run is available from Python as :func:`run` with a
:class:`TrainConfig`.

An image that cannot be decoded stops the run with one line naming the file; ``--skip-bad-images``
decodes every image once before training and leaves out (and lists) the ones that fail.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .. import models, transfer
from ..convert import convert as fastcnn_convert
from .devices import resolve_device

__all__ = [
    "TrainConfig",
    "TrainResult",
    "UnreadableImageError",
    "add_arguments",
    "build_datasets",
    "evaluate",
    "main",
    "run",
]

logger = logging.getLogger(__name__)

BUILTIN_DATASET = "digits"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    """Settings of one training run (the command-line flags of ``fastcnn train``)."""

    model: str = "resnet18"
    data: str = BUILTIN_DATASET
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 32
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "bfloat16"
    patience: int = 3
    checkpoint: str = "fastcnn_checkpoint.pt"
    weights: str | None = None
    freeze_backbone: bool = False
    #: "train": BatchNorm normalises by batch statistics and updates its running ones (torch's train
    #: mode); "frozen": every BatchNorm stays in eval mode, normalising by its running statistics and
    #: leaving them untouched, while its affine parameters still train.
    batchnorm: str = "train"
    backbone_lr_mult: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    image_size: int = 32
    val_fraction: float = 0.2
    limit: int | None = None
    workers: int = 0
    seed: int = 0
    progress: bool = True
    #: Decode every image before training and leave out those that fail (else the first one stops the run).
    skip_bad_images: bool = False
    #: A checkpoint written by a previous run to continue from (model, optimizer, scheduler, epoch).
    resume: str | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`run`: best validation accuracy and its epoch, one dict per epoch in
    ``history``, whether early stopping ended the run, and the checkpoint's path."""

    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    checkpoint: str
    history: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------


def digits_dataset(image_size: int = 32) -> tuple[TensorDataset, list[str]]:
    """scikit-learn's handwritten digits as a ``TensorDataset`` of normalised ``[3, S, S]`` images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the built-in dataset needs scikit-learn (pip install scikit-learn)") from exc
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.int64)
    return TensorDataset(images, labels), [str(i) for i in range(10)]


class UnreadableImageError(ValueError):
    """An image of the dataset that PIL cannot decode (truncated, or not an image at all)."""


def _load_image(path: str):
    """ImageFolder's loader, with a decoding failure turned into one line naming the file: PIL's own
    errors (``image file is truncated``, ``cannot identify image file``) surface deep in a DataLoader
    traceback, and the truncated-file one names no file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three for damaged files
        raise UnreadableImageError(
            f"cannot read image {path} ({exc}); --skip-bad-images leaves such files out"
        ) from None


def _skip_unreadable(dataset: Dataset, also: Dataset | None = None) -> list[str]:
    """Decodes every image of an ImageFolder and removes those PIL cannot read (from ``also`` too, a
    second ImageFolder over the same files); returns their paths."""
    bad = []
    for path, _ in dataset.samples:
        try:
            _load_image(path)
        except UnreadableImageError:
            bad.append(path)
    drop = set(bad)
    for folder in (dataset, also):
        if folder is not None and bad:
            folder.samples = [s for s in folder.samples if s[0] not in drop]
            folder.imgs = folder.samples
            folder.targets = [target for _, target in folder.samples]
    return bad


def _image_folder(root: Path, image_size: int, train: bool):
    try:
        from torchvision import datasets, transforms
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("image folders need torchvision") from exc
    normalize = transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    if train:
        tf = [transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip()]
    else:
        tf = [transforms.Resize(math.ceil(image_size * 8 / 7)), transforms.CenterCrop(image_size)]
    return datasets.ImageFolder(
        str(root), transform=transforms.Compose([*tf, transforms.ToTensor(), normalize]), loader=_load_image
    )


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"{n} samples are too few to split off a validation set")
    return order[n_val:], order[:n_val]


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return Subset(dataset, list(range(limit)))


def build_datasets(
    config: TrainConfig, skipped: list[str] | None = None
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, validation, class names) for ``config.data``: the built-in ``digits`` or an ImageFolder
    root (with ``train/`` and ``val/`` subfolders, or split ``val_fraction`` off at random).

    With ``config.skip_bad_images`` every image is decoded once first; those that fail are left out and
    their paths appended to ``skipped``.
    """
    skipped = [] if skipped is None else skipped
    if config.data == BUILTIN_DATASET:
        full, classes = digits_dataset(config.image_size)
        train_idx, val_idx = _split(len(full), config.val_fraction, config.seed)
        train_set, val_set = Subset(full, train_idx), Subset(full, val_idx)
    else:
        root = Path(config.data)
        if not root.is_dir():
            raise FileNotFoundError(
                f"--data must be {BUILTIN_DATASET!r} or an ImageFolder-layout folder; {root} is not a folder"
            )
        if (root / "train").is_dir() and (root / "val").is_dir():
            train_set = _image_folder(root / "train", config.image_size, train=True)
            val_set = _image_folder(root / "val", config.image_size, train=False)
            if train_set.classes != val_set.classes:
                raise ValueError(f"{root}/train and {root}/val have different class folders")
            if config.skip_bad_images:
                skipped += _skip_unreadable(train_set) + _skip_unreadable(val_set)
        else:
            train_full = _image_folder(root, config.image_size, train=True)
            val_full = _image_folder(root, config.image_size, train=False)
            if config.skip_bad_images:
                # One set of files seen through two transforms: decode each once, drop it from both.
                skipped += _skip_unreadable(train_full, also=val_full)
            train_idx, val_idx = _split(len(train_full), config.val_fraction, config.seed)
            train_set, val_set = Subset(train_full, train_idx), Subset(val_full, val_idx)
        classes = (train_set.dataset if isinstance(train_set, Subset) else train_set).classes
    return _limit(train_set, config.limit), _limit(val_set, config.limit), list(classes)


# ----------------------------------------------------------------------------------------------------------
# model, device, precision
# ----------------------------------------------------------------------------------------------------------


#: ``--model torchvision.<name>``: a torchvision classifier (random init), converted to fastcnn layers.
TORCHVISION_PREFIX = "torchvision."


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The zoo model (or ``torchvision.<name>``, converted with :func:`fastcnn.convert`) with a
    ``num_classes`` head; ``config.weights`` (if any) loads every layer whose shape fits, so a checkpoint
    trained for other classes supplies the backbone and the head is new."""
    if config.model.startswith(TORCHVISION_PREFIX):
        import torchvision

        name = config.model[len(TORCHVISION_PREFIX) :]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"{name!r} is not a torchvision classification model")
        model = fastcnn_convert(torchvision.models.get_model(name, weights=None, num_classes=num_classes))
    else:
        model = models.get_model(config.model, num_classes=num_classes)
    if config.weights is None:
        return model
    state = models.read_state_dict(config.weights)
    head_name, _ = transfer.find_head(model)
    own = model.state_dict()
    dropped = [
        k
        for k in (f"{head_name}.weight", f"{head_name}.bias")
        if k in state and k in own and state[k].shape != own[k].shape
    ]
    for k in dropped:
        del state[k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(dropped):
        missing_keys = sorted(set(missing) - set(dropped))
        raise ValueError(
            f"{config.weights} does not fit {config.model}: missing {missing_keys[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if dropped:
        logger.info(
            "fastcnn train: new %d-class head %s (the weights had another size)", num_classes, head_name
        )
    return model


def _autocast(device: torch.device, config: TrainConfig) -> Callable[[], contextlib.AbstractContextManager]:
    if not config.amp:
        return contextlib.nullcontext
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[config.amp_dtype]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _progress(iterable: Iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------
# loop
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, autocast=contextlib.nullcontext
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` (put in eval mode) over ``loader``."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
    return total_loss / max(count, 1), correct / max(count, 1)


def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def check_config(config: TrainConfig) -> None:
    """Refuses settings no run can use, naming the flag (ValueError), before any data is read."""
    for flag, value in (
        ("--epochs", config.epochs),
        ("--batch-size", config.batch_size),
        ("--image-size", config.image_size),
        ("--patience", config.patience),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not config.lr > 0:  # also refuses NaN
        raise ValueError(f"--lr must be > 0, got {config.lr}")
    if config.batchnorm not in ("train", "frozen"):
        raise ValueError(f"--batchnorm must be 'train' or 'frozen', got {config.batchnorm!r}")
    if config.amp and config.device.split(":")[0] == "cpu":
        raise ValueError(
            "--amp needs a CUDA device (fastcnn's CPU kernels are float32/float64); drop --amp on the CPU"
        )


def _short_paths(paths: list[str], root: str, shown: int = 5) -> str:
    names = [os.path.relpath(p, root) for p in paths[:shown]]
    return ", ".join(names) + (f", ... ({len(paths)} in all)" if len(paths) > shown else "")


def _load_resume(path: str, config: TrainConfig, classes: list[str]) -> dict:
    """The checkpoint ``--resume`` names, checked against this run's model and classes."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint file {file}")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds for a file it cannot read
        raise ValueError(f"--resume: {file} is not a checkpoint of fastcnn train ({exc})") from None
    keys = ("model_name", "state_dict", "optimizer", "scheduler", "epoch", "classes")
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in keys):
        raise ValueError(f"--resume: {file} is not a checkpoint of fastcnn train (it has no {keys})")
    if ckpt["model_name"] != config.model:
        raise ValueError(f"--resume: {file} holds a {ckpt['model_name']}, not --model {config.model}")
    if list(ckpt["classes"]) != classes:
        raise ValueError(
            f"--resume: {file} was trained on classes {list(ckpt['classes'])[:10]}, but {config.data} has "
            f"{classes[:10]}"
        )
    if ckpt["epoch"] >= config.epochs:
        raise ValueError(
            f"--resume: {file} is at epoch {ckpt['epoch']} already; --epochs (the total, counted from the "
            f"first run) must be more than that"
        )
    return ckpt


def run(
    config: TrainConfig, log: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr
) -> TrainResult:
    """Trains ``config.model`` on ``config.data`` and returns the :class:`TrainResult`. ``log`` receives
    one line per epoch and a closing summary; ``warn`` (default: stderr) the warnings.

    Raises:
        ValueError: a setting no run can use (named by its flag), a dataset of fewer than two classes, a
            ``--resume`` checkpoint of another model or other classes; :class:`UnreadableImageError` (a
            ValueError) for an image PIL cannot decode, without ``skip_bad_images``.
        FileNotFoundError: ``data`` or ``resume`` is not there.
    """
    check_config(config)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    amp = config.amp
    if amp and device.type != "cuda":
        # --device auto on a machine without a GPU: the same command line works on both.
        warn(
            "fastcnn train: --amp needs CUDA (fastcnn's CPU kernels are float32/float64); training in float32"
        )
        amp = False
    run_config = dataclasses.replace(config, amp=amp)
    if config.freeze_backbone and config.weights is None and config.resume is None:
        warn("fastcnn train: --freeze-backbone without --weights trains a head on a random, frozen backbone")

    skipped: list[str] = []
    train_set, val_set, classes = build_datasets(run_config, skipped)
    if skipped:
        warn(
            f"fastcnn train: skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: "
            + _short_paths(skipped, config.data)
        )
    if len(classes) < 2:
        found = f"1 class ({classes[0]!r})" if classes else "no classes"
        raise ValueError(f"--data {config.data} has {found}; a classifier needs at least two class folders")
    resume = _load_resume(config.resume, config, classes) if config.resume else None
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.workers,
        pin_memory=pin,
        drop_last=len(train_set) > config.batch_size,  # a batch of 1 breaks BatchNorm in train mode
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=config.workers, pin_memory=pin)

    model = build_model(run_config, len(classes)).to(device)
    if config.freeze_backbone:
        transfer.freeze_backbone(model)
    groups = transfer.param_groups(
        model, config.lr, backbone_lr_mult=config.backbone_lr_mult, weight_decay=config.weight_decay
    )
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        raise ValueError(f"optimizer must be sgd or adamw, got {config.optimizer!r}")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    autocast = _autocast(device, run_config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and config.amp_dtype == "float16")
    best, best_epoch, first_epoch = -math.inf, 0, 1
    if resume is not None:
        try:
            model.load_state_dict(resume["state_dict"])
            optimizer.load_state_dict(resume["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            message = str(exc).strip().splitlines()[0]
            raise ValueError(
                f"--resume: {config.resume} does not fit this run ({message}); resume with the first "
                "run's --model, --freeze-backbone and --optimizer"
            ) from None
        scheduler.load_state_dict(resume["scheduler"])
        first_epoch = resume["epoch"] + 1
        best, best_epoch = resume.get("best_metric", -math.inf), resume["epoch"]

    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"fastcnn train: {config.model} on {config.data} ({len(train_set)} train / {len(val_set)} val, "
        f"{len(classes)} classes), {device.type}{' amp ' + config.amp_dtype if amp else ''}, "
        f"{n_trainable:,} trainable parameters"
        + (f"; resuming {config.resume} after epoch {first_epoch - 1}" if resume is not None else "")
    )
    checkpoint = Path(config.checkpoint)
    since_best, history = 0, []
    stopped_early = False
    epoch = first_epoch - 1
    for epoch in range(first_epoch, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        if config.freeze_backbone:
            transfer.eval_frozen_batchnorm(model)
        if config.batchnorm == "frozen":
            transfer.eval_batchnorm(model)
        total_loss, correct, count = 0.0, 0, 0
        bar = _progress(train_loader, config.progress, f"epoch {epoch}/{config.epochs}", len(train_loader))
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * labels.numel()
            correct += (logits.argmax(1) == labels).sum().item()
            count += labels.numel()
            if bar is not train_loader:
                bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{correct / count:.3f}")
        scheduler.step()
        val_loss, val_acc = evaluate(model, val_loader, device, autocast)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / max(count, 1),
            "train_acc": correct / max(count, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        improved = val_acc > best
        if improved:
            best, best_epoch, since_best = val_acc, epoch, 0
            _save_checkpoint(
                checkpoint,
                {
                    "model_name": config.model,
                    "state_dict": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_metric": best,
                    "metric": "val_acc",
                    "num_classes": len(classes),
                    "classes": classes,
                    "config": dataclasses.asdict(run_config),
                },
            )
        else:
            since_best += 1
        log(
            f"epoch {epoch:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.3f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.3f}  {record['seconds']:.1f}s"
            + ("  *saved" if improved else "")
        )
        if since_best >= config.patience and epoch < config.epochs:
            stopped_early = True
            log(f"early stop: no val_acc improvement in {config.patience} epoch(s)")
            break
    log(f"best val_acc {best:.4f} at epoch {best_epoch}; checkpoint {checkpoint}")
    return TrainResult(best, best_epoch, epoch - first_epoch + 1, stopped_early, str(checkpoint), history)


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------


def _model_name(value: str) -> str:
    if value in models.list_models() or value.startswith(TORCHVISION_PREFIX):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r}: choose a zoo model ({', '.join(models.list_models())}) or {TORCHVISION_PREFIX}<name>"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``fastcnn train``'s flags to ``parser``."""
    d = TrainConfig()
    parser.add_argument(
        "--model",
        type=_model_name,
        default=d.model,
        help=f"zoo model ({', '.join(models.list_models())}) or {TORCHVISION_PREFIX}<name>, a torchvision "
        "classifier converted to fastcnn layers (e.g. torchvision.mobilenet_v2)",
    )
    parser.add_argument(
        "--data",
        default=d.data,
        help=f"ImageFolder root (class subfolders, or train/ and val/), or {BUILTIN_DATASET!r} (built in)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="epochs in all, a resumed run's included (default: %(default)s)",
    )
    parser.add_argument(
        "--lr", type=float, default=d.lr, help="learning rate of the head (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    parser.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision, CUDA only: refused with --device cpu; --device auto without a GPU trains in "
        "float32",
    )
    parser.add_argument(
        "--amp-dtype", choices=["bfloat16", "float16"], default=d.amp_dtype, help="default: %(default)s"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early-stopping patience in epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint", default=d.checkpoint, help="where the best model is saved (default: %(default)s)"
    )
    parser.add_argument(
        "--resume",
        metavar="PATH",
        default=None,
        help="continue from a checkpoint of fastcnn train (model, optimizer, scheduler, epoch; the best "
        "epoch's, the one it saved) with the same --model and classes",
    )
    parser.add_argument("--weights", default=None, help="initial weights (path); the head is resized")
    parser.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train only the classifier head; meant with --weights (without them it warns: random backbone)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="decode every image before training and leave out (and list) the unreadable ones; without it "
        "the first one stops the run",
    )
    parser.add_argument(
        "--batchnorm",
        choices=["train", "frozen"],
        default=d.batchnorm,
        help="train: batch statistics, running ones updated; frozen: running statistics, left as they are",
    )
    parser.add_argument(
        "--backbone-lr-mult", type=float, default=d.backbone_lr_mult, help="backbone lr = lr * this"
    )
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default=d.optimizer)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="side of the square inputs (default: %(default)s)",
    )
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many train/val samples")
    parser.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Runs ``fastcnn train`` from parsed arguments; returns the exit status."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    try:
        run(config)
    except UnreadableImageError as exc:
        # From a DataLoader worker the message arrives with the worker's traceback; its last line is ours.
        lines = [line for line in str(exc).splitlines() if line.strip()]
        message = lines[-1].removeprefix(f"{UnreadableImageError.__name__}: ") if lines else str(exc)
        print(f"fastcnn train: {message}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastcnn train: {exc}", file=sys.stderr)
        return 2
    return 0
