"""Tensors with more than 2^31 elements: every offset a kernel computes must be int64.

Each case needs ~9.5 GiB of host memory (CPU) and runs only when asked for (`-m large` or
FASTCNN_RUN_LARGE=1), serially (no `-n`): `python -m pytest -q -m large -p no:xdist tests/test_large.py`.
The cases are the cheapest that still cross 2^31:
  * conv2d: a depthwise 1x1, stride 3, on [1, 2049, 1024, 1024] (2^31 + 2^20 elements): the last channel
    starts exactly at element 2^31, where an int32 offset wraps to a negative number;
  * max_pool2d: 4x4, stride 4, on one [46500, 46500] plane (2.16e9 elements): the flat in-plane indices
    of the last ~300 rows exceed 2^31 - 1, so they must be computed and returned as int64.
The reference is PyTorch's op run chunk by chunk (channels for the conv, row bands for the pool), so
that it never holds a second full-size tensor. Inputs are filled chunk by chunk from a fixed generator.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA

from fastcnn import ops

pytestmark = pytest.mark.large

TWO_POW_31 = 2**31


def fill_uniform(t: torch.Tensor, seed: int, chunk: int = 1 << 26) -> torch.Tensor:
    """Fills a (contiguous) tensor with U(-1, 1) values, chunk by chunk, without a second full copy."""
    flat = t.view(-1)
    gen = torch.Generator(device=t.device).manual_seed(seed)
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        part.uniform_(-1.0, 1.0, generator=gen)
    return t


def depthwise_conv_case(device):
    channels, size = 2049, 1024
    x = torch.empty(1, channels, size, size, device=device)
    assert x.numel() > TWO_POW_31 and (channels - 1) * size * size == TWO_POW_31
    fill_uniform(x, seed=1)
    gen = torch.Generator().manual_seed(2)
    w = (torch.rand(channels, 1, 1, 1, generator=gen) * 2 - 1).to(device)
    b = (torch.rand(channels, generator=gen) * 2 - 1).to(device)
    return x, w, b


def check_depthwise_conv(device):
    x, w, b = depthwise_conv_case(device)
    channels = x.shape[1]
    out = ops.conv2d(x, w, b, stride=3, groups=channels, activation="relu")
    assert out.shape == (1, channels, 342, 342)
    # Chunks of channels, always including the last ones (past element 2^31 of the input).
    for c0 in range(0, channels, 256):
        c1 = min(channels, c0 + 256)
        ref = F.relu(F.conv2d(x[:, c0:c1], w[c0:c1], b[c0:c1], stride=3, groups=c1 - c0))
        torch.testing.assert_close(
            out[:, c0:c1], ref, rtol=1e-6, atol=1e-6, msg=lambda m, c0=c0: f"{c0}: {m}"
        )


def check_max_pool(device):
    size = 46500
    x = torch.empty(1, 1, size, size, device=device)
    assert x.numel() > TWO_POW_31
    fill_uniform(x, seed=3)
    out, indices = ops.max_pool2d(x, 4, stride=4, return_indices=True)
    out_rows = (size - 4) // 4 + 1
    assert out.shape == indices.shape == (1, 1, out_rows, out_rows)
    assert indices.dtype == torch.int64
    assert indices.max().item() > TWO_POW_31 - 1, "the case no longer reaches an index past 2^31"
    band = 1536  # output rows per reference chunk (4x4 windows at stride 4 never straddle two chunks)
    for r0 in range(0, out_rows, band):
        r1 = min(out_rows, r0 + band)
        ref, ref_idx = F.max_pool2d(x[:, :, 4 * r0 : 4 * r1], 4, stride=4, return_indices=True)
        assert torch.equal(out[:, :, r0:r1], ref), f"output rows {r0}:{r1} differ"
        assert torch.equal(indices[:, :, r0:r1], ref_idx + 4 * r0 * size), f"indices rows {r0}:{r1} differ"


def test_depthwise_conv2d_over_2pow31_elements_cpu():
    check_depthwise_conv("cpu")


def test_max_pool2d_over_2pow31_elements_cpu():
    check_max_pool("cpu")


@pytest.mark.cuda
def test_depthwise_conv2d_over_2pow31_elements_cuda():
    check_depthwise_conv(CUDA)


@pytest.mark.cuda
def test_max_pool2d_over_2pow31_elements_cuda():
    check_max_pool(CUDA)


def check_depthwise_nhwc_near_int32(device):
    """A channels_last depthwise 1x1 conv whose image has just under 2^31 elements: the NHWC kernels index
    within an image in int32 (checked by the host), but their grid-stride increment must not overflow.
    On the emulated H100 (132 SMs) the stride is 4,224 blocks x 256 threads = 1,081,344 elements, so the
    last strides of this 2,147,441,940-element image pass 2^31 - 1."""
    channels, h, w = 3, 23170, 30894
    assert TWO_POW_31 - 1 - 1_081_344 < channels * h * w <= TWO_POW_31 - 1
    x = torch.empty(1, h, w, channels, device=device)
    fill_uniform(x, seed=4)
    x = x.permute(0, 3, 1, 2)  # channels_last view of the NHWC buffer
    weight = torch.tensor([0.5, -2.0, 1.25], device=device).view(channels, 1, 1, 1)
    bias = torch.tensor([0.25, 0.0, -0.5], device=device)
    out = ops.conv2d(x, weight, bias, groups=channels)
    assert out.is_contiguous(memory_format=torch.channels_last)
    rows = 512  # reference chunk: each output element is x * w[c] + b[c]
    for r0 in range(0, h, rows):
        ref = x[:, :, r0 : r0 + rows] * weight.view(1, channels, 1, 1) + bias.view(1, channels, 1, 1)
        torch.testing.assert_close(out[:, :, r0 : r0 + rows], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
def test_depthwise_conv2d_nhwc_image_near_2pow31_elements_cuda():
    check_depthwise_nhwc_near_int32(CUDA)
