"""DistributedDataParallel: a ResNet-18 on fastcnn layers trains over 2 processes exactly as one process
does on the same global batch.

torchvision's resnet18 has its Conv2d, Linear, MaxPool2d, AdaptiveAvgPool2d and ReLU modules swapped for
fastcnn.nn's (fastcnn.convert when the package has it, else the local helper below, which copies weights
unchanged). Two processes (gloo on the CPU; NCCL with one GPU each when there are two) each take half of
a global batch of 4 at 32x32, run STEPS SGD steps with momentum and write their parameters; a single
process runs the same steps on the whole batch. DDP averages the two halves' gradients, which equals the
whole batch's mean-loss gradient, so parameters must agree to float64 rounding (rtol 1e-9 after 3 steps:
the only difference is the order in which the allreduce sums two partial gradients).

BatchNorm uses running statistics (eval mode) in both runs: in training mode each process would normalise
with its own half batch's statistics, which is a different model, not a DDP defect.
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import fastcnn
import fastcnn.nn

torchvision = pytest.importorskip("torchvision")

STEPS = 3
GLOBAL_BATCH = 4
WORLD = 2


def to_fastcnn(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps torch.nn layers for fastcnn.nn ones with the same weights (in place)."""
    convert = getattr(fastcnn, "convert", None)
    if callable(convert):
        return convert(model, inplace=True)
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.Conv2d:
            new = fastcnn.nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                child.groups,
                child.bias is not None,
                child.padding_mode,
            )
        elif type(child) is torch.nn.Linear:
            new = fastcnn.nn.Linear(child.in_features, child.out_features, child.bias is not None)
        elif type(child) is torch.nn.MaxPool2d:
            new = fastcnn.nn.MaxPool2d(
                child.kernel_size, child.stride, child.padding, child.dilation, ceil_mode=child.ceil_mode
            )
        elif type(child) is torch.nn.AdaptiveAvgPool2d:
            new = fastcnn.nn.AdaptiveAvgPool2d(child.output_size)
        elif type(child) is torch.nn.ReLU:
            new = fastcnn.nn.ReLU()
        else:
            to_fastcnn(child)
            continue
        new.load_state_dict(child.state_dict())
        setattr(model, name, new)
    return model


def build_model(device):
    torch.manual_seed(0)
    model = to_fastcnn(torchvision.models.resnet18(num_classes=10)).to(device, torch.float64)
    with torch.no_grad():  # non-trivial running statistics, identical in every process
        gen = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


def global_batch(device):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(STEPS, GLOBAL_BATCH, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (STEPS, GLOBAL_BATCH), generator=gen)
    return x.to(device), y.to(device)


def train(model, xs, ys):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in zip(xs, ys, strict=True):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _uses_fastcnn(model):
    return any(type(m).__module__ == "fastcnn.nn" for m in model.modules())


def _ddp_worker(rank, world, port, backend, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # two processes on two cores
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        model = build_model(device)
        assert _uses_fastcnn(model)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rank] if backend == "nccl" else None
        )
        xs, ys = global_batch(device)
        per_rank = GLOBAL_BATCH // world
        shard = slice(rank * per_rank, (rank + 1) * per_rank)
        train(ddp, xs[:, shard], ys[:, shard])
        torch.save(
            {k: v.cpu() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_and_compare(backend, device):
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_ddp_worker, args=(WORLD, free_port(), backend, out_dir), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    model = build_model(device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    xs, ys = global_batch(device)
    train(model, xs, ys)
    single = {k: v.cpu() for k, v in model.state_dict().items()}
    moved = 0
    for name, value in single.items():
        for rank, result in enumerate(results):
            torch.testing.assert_close(
                result[name], value, rtol=1e-9, atol=1e-12, msg=lambda m, n=name, r=rank: f"rank {r} {n}: {m}"
            )
        moved += not torch.equal(value, start[name].cpu())
    assert moved > 60, "training did not change the parameters"  # resnet18 has 62 trainable tensors


def test_ddp_gloo_resnet18_matches_single_process():
    run_and_compare("gloo", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs two GPUs")
def test_ddp_nccl_resnet18_matches_single_process():
    run_and_compare("nccl", torch.device("cuda", 0))
