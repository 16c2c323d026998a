"""The emulator's work counters (torch.ops.fastcnn_emu.counters_*, csrc/emu/README.md "Counters") on
cases whose figures follow by hand: single instructions of the self-test kernels, ldmatrix rows at chosen
addresses for the bank-conflict count, and convolutions whose GEMM is one block tile. Every block runs
here: block sampling (counters_enable's sample_blocks) leaves outputs unwritten, so no test enables it;
it is for benchmarks/emu_counters.py only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EMULATED

pytestmark = pytest.mark.skipif(not EMULATED, reason="needs the emulation build (FASTCNN_BACKEND=cuda-emu)")

emu = torch.ops.fastcnn_emu if EMULATED else None


@pytest.fixture
def counting():
    """Counters on (every block) for the test, then off and cleared; yields a reader of the records."""
    emu.counters_reset()
    emu.counters_enable(True)
    try:
        yield lambda: json.loads(emu.counters_read())
    finally:
        emu.counters_enable(False)
        emu.counters_reset()


def _only(records: list[dict], name: str) -> dict:
    hits = [r for r in records if name in r["kernel"]]
    assert len(hits) == 1, [r["kernel"] for r in records]
    return hits[0]


def test_counters_off_by_default_and_when_disabled():
    emu.counters_reset()
    x = torch.randn(1, 16, 4, 4).half().contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 16, 1, 1).half().contiguous(memory_format=torch.channels_last)
    torch.ops.fastcnn.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, 0, None)
    assert json.loads(emu.counters_read()) == []
    emu.counters_enable(True)
    emu.counters_enable(False)
    torch.ops.fastcnn.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, 0, None)
    assert json.loads(emu.counters_read()) == []


def test_sampling_needs_the_first_and_last_block():
    with pytest.raises(RuntimeError, match="sample_blocks"):
        emu.counters_enable(True, 1)
    emu.counters_enable(False)


@pytest.mark.parametrize(
    "pitch, conflicts_per_matrix",
    [
        (16, 0),  # eight consecutive 16-byte rows: one 128-byte line, every bank once
        (32, 1),  # rows 0 and 4 of each matrix share banks: two wavefronts
        (80, 0),  # the GEMM tiles' K-major pitch (32 + 8 fp16): banks 0, 20, 8, 28, ... apart
        (128, 7),  # every row in banks 0-3: eight wavefronts
        (0, 0),  # one address for every row: a broadcast
    ],
)
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix_bank_conflicts(counting, pitch, conflicts_per_matrix, num):
    offsets = torch.tensor([(lane % (8 * num)) * pitch for lane in range(32)], dtype=torch.int32)
    emu.test_ldmatrix_rows(offsets, num)
    rec = _only(counting(), "ldmatrix_rows_kernel")["raw"]
    assert rec["ldmatrix"] == 1
    assert rec["ldmatrix_bytes"] == 128 * num
    assert rec["bank_conflicts"] == conflicts_per_matrix * num
    assert rec["ldmatrix_wavefronts"] == (conflicts_per_matrix + 1) * num
    assert rec["mma_issued"] == 0 and rec["cp_async"] == 0
    assert rec["barriers"] == 1


@pytest.mark.parametrize("k_major", [True, False])
def test_mma_chain_useful_macs(counting, k_major):
    rng = np.random.default_rng(17)
    a = rng.uniform(0.5, 1.5, (16, 16)).astype(np.float32)
    b = rng.uniform(0.5, 1.5, (8, 16)).astype(np.float32)  # [n, k]
    a[rng.random((16, 16)) < 0.3] = 0
    b[rng.random((8, 16)) < 0.3] = 0
    a[:, 5] = 0  # a whole K column of A: nothing of k = 5 is useful
    useful = int(sum(np.count_nonzero(a[:, k]) * np.count_nonzero(b[:, k]) for k in range(16)))
    # K-major: A [16 m, 16 k] and B [8 n, 16 k]; MN-major: A [16 k, 16 m] and B [16 k, 8 n].
    at = torch.from_numpy(a if k_major else a.T.copy()).half()
    bt = torch.from_numpy(b if k_major else b.T.copy()).half()
    emu.test_mma_chain(at, bt, torch.zeros(16, 8), k_major)
    rec = _only(counting(), "mma_chain_test_kernel")
    raw = rec["raw"]
    assert raw["mma_issued"] == 1
    assert raw["macs_issued"] == 16 * 8 * 16
    assert raw["useful_macs"] == useful
    assert raw["ldmatrix"] == 2  # A x4, B x2
    assert raw["ldmatrix_bytes"] == 512 + 256
    if k_major:
        # Rows 32 bytes apart (instruction_tests.cuh kPitch): every 8-row phase is two-way conflicted.
        assert raw["bank_conflicts"] == 6
    assert rec["blocks"] == 1 and rec["blocks_run"] == 1 and rec["sampled"] is False
    assert rec["raw"] == rec["scaled"]


def test_mma_tf32_macs(counting):
    a = torch.rand(16, 8) + 0.5
    b = torch.rand(8, 8) + 0.5
    a[3, :] = 0  # one row of A: 8 columns lose one product each
    emu.test_mma_chain(a, b, torch.zeros(16, 8), True)
    raw = _only(counting(), "mma_tf32_chain_test_kernel")["raw"]
    assert raw["mma_issued"] == 1
    assert raw["macs_issued"] == 16 * 8 * 8
    assert raw["useful_macs"] == 15 * 8 * 8


def test_cp_async_requests_sectors_and_zero_fill(counting):
    src = torch.arange(128, dtype=torch.int32)
    emu.test_cp_async(src)
    raw = _only(counting(), "cp_async_test_kernel")["raw"]
    valid = [lane for lane in range(32) if lane % 3 != 2]  # instruction_tests.cuh: lane % 3 == 2 zero-fills
    base = src.data_ptr()
    assert raw["cp_async"] == 32
    assert raw["cp_async_warp_instructions"] == 1
    assert raw["cp_async_zero_fill"] == 32 - len(valid)
    assert raw["cp_async_bytes"] == 16 * len(valid)
    assert raw["cp_async_sectors"] == len({(base + 16 * lane) // 32 for lane in valid})
    assert raw["barriers"] == 1


def _pixel_taps(h: int, w: int, k: int, pad: int) -> int:
    """(output pixel, kernel tap) pairs that read the input, not the padding (stride 1)."""
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return sum(
        1
        for y in range(oh)
        for x in range(ow)
        for ky in range(k)
        for kx in range(k)
        if 0 <= y + ky - pad < h and 0 <= x + kx - pad < w
    )


@pytest.mark.parametrize("kernel, pad", [(1, 0), (3, 1)])
def test_forward_conv_one_tile(counting, kernel, pad):
    # GEMM M = 16 pixels, N = 8 output channels, K = kernel^2 * 16: one 64x64 block tile (4 warps of
    # 32x32, BK = 32), whose K tiles each take 2 k-steps x 2 x 4 m16n8k16 per warp.
    c, oc, h = 16, 8, 4
    x = (torch.rand(1, c, h, h) + 0.5).half().contiguous(memory_format=torch.channels_last)
    wt = (torch.rand(oc, c, kernel, kernel) + 0.5).half().contiguous(memory_format=torch.channels_last)
    y = torch.ops.fastcnn.conv2d(x, wt, None, [1, 1], [pad, pad], [1, 1], 1, 0, None)
    ref = torch.nn.functional.conv2d(x.float(), wt.float(), padding=pad)
    torch.testing.assert_close(y.float(), ref, rtol=2e-3, atol=2e-2)
    rec = _only(counting(), "conv_gemm_kernel")
    raw = rec["raw"]
    k_tiles = -(-kernel * kernel * c // 32)
    assert rec["grid"] == [1, 1, 1] and rec["block"] == [128, 1, 1]
    assert rec["blocks"] == 1 and rec["waves"] == 1 and rec["sampled"] is False
    assert raw["mma_issued"] == k_tiles * 4 * 2 * 2 * 4
    assert raw["macs_issued"] == raw["mma_issued"] * 16 * 8 * 16
    taps = _pixel_taps(h, h, kernel, pad)
    assert raw["useful_macs"] == taps * c * oc
    # Each K tile: A and B tiles of 64 rows x 4 chunks of 8 channels, one 16-byte request per chunk;
    # those of real pixels and taps (A) or real output channels (B) read, the others zero-fill.
    requests = k_tiles * 2 * 64 * 4
    valid = taps * (c // 8) + oc * kernel * kernel * (c // 8)
    assert raw["cp_async"] == requests
    assert raw["cp_async_warp_instructions"] == requests // 32
    assert raw["cp_async_bytes"] == 16 * valid
    assert raw["cp_async_zero_fill"] == requests - valid
    # Per K tile and warp: 2 k-steps x (2 A + 2 B) ldmatrix.x4, conflict-free at the 80-byte pitch.
    assert raw["ldmatrix"] == k_tiles * 4 * 2 * 4
    assert raw["bank_conflicts"] == 0
    # The mainloop: one barrier per K tile, after the tile lands and before its stage is refilled; the
    # epilogue: two around the C tile it stages in shared memory.
    assert raw["barriers"] == k_tiles + 2


def _strided_pairs(h: int, k: int, stride: int, pad: int) -> int:
    """(output position, tap) pairs along one axis that read the input, not its padding."""
    oh = (h + 2 * pad - k) // stride + 1
    return sum(1 for o in range(oh) for t in range(k) if 0 <= o * stride - pad + t < h)


@pytest.mark.parametrize("kernel, pad, phase_taps", [(1, 0, [1, 0, 0, 0]), (3, 1, [1, 2, 2, 4])])
def test_strided_dgrad_multiplies_no_zero_taps(counting, kernel, pad, phase_taps):
    # Stride 2 on an 8x8 input: one GEMM per stride phase (y % 2, x % 2) of grad_input, each over only
    # the taps that reach it (3x3, pad 1: kh = 1 for even y, kh = 0 and 2 for odd y), so the MMAs meet
    # no tap that a strided dgrad would gather as zeros. Each phase: 16 pixels and 16 channels in one
    # 64x64 tile; K = taps * 16 in ceil(K / 32) K tiles of 4 warps x 2 k-steps x 2 x 4 m16n8k16.
    c, oc, h = 16, 16, 8
    x = (torch.rand(1, c, h, h) + 0.5).half().contiguous(memory_format=torch.channels_last)
    wt = (torch.rand(oc, c, kernel, kernel) + 0.5).half().contiguous(memory_format=torch.channels_last)
    oh = (h + 2 * pad - kernel) // 2 + 1
    gy = (torch.rand(1, oc, oh, oh) + 0.5).half().contiguous(memory_format=torch.channels_last)
    gx, _, _ = torch.ops.fastcnn.conv2d_backward(
        gy, x, wt, None, [2, 2], [pad, pad], [1, 1], 1, 0, [True, False, False]
    )
    xr = x.double().requires_grad_()
    torch.nn.functional.conv2d(xr, wt.double(), stride=2, padding=pad).backward(gy.double())
    torch.testing.assert_close(gx.double(), xr.grad, rtol=2e-3, atol=5e-2)
    gemms = [r for r in counting() if "conv_gemm_kernel" in r["kernel"]]
    assert len(gemms) == 4  # one launch per phase, a tapless phase included (it writes the zeros)
    mma = sum(r["raw"]["mma_issued"] for r in gemms)
    assert mma == sum(-(-t * oc // 32) for t in phase_taps) * 4 * 2 * 2 * 4
    assert sum(r["raw"]["macs_issued"] for r in gemms) == mma * 16 * 8 * 16
    pairs = _strided_pairs(h, kernel, 2, pad) ** 2
    assert sum(r["raw"]["useful_macs"] for r in gemms) == pairs * c * oc
    assert [r["barriers_per_block"] for r in gemms] == [-(-t * oc // 32) + 2 for t in phase_taps]


def test_small_forward_and_dgrad_split_k_and_match_torch(counting):
    # 2 output tiles of 64x64 and 18 K tiles (3x3 x 64 channels): far below two waves of 132 SMs, so K is
    # split 4 ways (>= 4 K tiles each) into fp32 partials that a second kernel adds in split order before
    # the epilogue (bias, residual, ReLU) runs once. dgrad at stride 2 splits each phase likewise.
    c, oc, h = 64, 64, 8
    x = (torch.rand(2, c, h, h) - 0.5).half().contiguous(memory_format=torch.channels_last)
    wt = (torch.rand(oc, c, 3, 3) - 0.5).half().contiguous(memory_format=torch.channels_last)
    b = (torch.rand(oc) - 0.5).half()
    r = (torch.rand(2, oc, h, h) - 0.5).half().contiguous(memory_format=torch.channels_last)
    y = torch.ops.fastcnn.conv2d(x, wt, b, [1, 1], [1, 1], [1, 1], 1, 1, r)
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), wt.double(), b.double(), padding=1) + r.double())
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)
    records = counting()
    gemm = _only(records, "conv_gemm_kernel")
    assert gemm["grid"] == [2, 1, 4]
    assert len([r_ for r_ in records if "reduce_split_partials_kernel" in r_["kernel"]]) == 1

    emu.counters_reset()
    gy = (torch.rand(2, oc, h // 2, h // 2) - 0.5).half().contiguous(memory_format=torch.channels_last)
    gx, _, _ = torch.ops.fastcnn.conv2d_backward(
        gy, x, wt, None, [2, 2], [1, 1], [1, 1], 1, 0, [True, False, False]
    )
    xr = x.double().requires_grad_()
    torch.nn.functional.conv2d(xr, wt.double(), stride=2, padding=1).backward(gy.double())
    torch.testing.assert_close(gx.double(), xr.grad, rtol=1e-2, atol=1e-2)
    records = counting()
    gemms = [r_ for r_ in records if "conv_gemm_kernel" in r_["kernel"]]
    reduces = [r_ for r_ in records if "reduce_split_partials_kernel" in r_["kernel"]]
    # phase taps 1, 2, 2, 4 x 64 channels = 2, 4, 4, 8 K tiles: split when >= 8 (4 per split)
    assert [g_["grid"][2] for g_ in gemms] == [1, 1, 1, 2] and len(reduces) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_big_tiles_on_a_one_sm_device_match_torch(counting, dtype):
    # On a one-SM device a 128-channel conv's GEMMs fill the machine with 128x128 tiles in every pass:
    # the 4-stage pipeline and the 64 KB staged C tile that small test shapes never reach otherwise.
    arch, sms, _ = emu.properties()
    c, oc, h = 128, 128, 16
    x = (torch.rand(1, c, h, h) - 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    wt = (torch.rand(oc, c, 3, 3) - 0.5).to(dtype).div(8).contiguous(memory_format=torch.channels_last)
    b = (torch.rand(oc) - 0.5).to(dtype)
    r = (torch.rand(1, oc, h, h) - 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    gy = (torch.rand(1, oc, h, h) - 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        emu.configure(arch, 1, -1)
        torch.backends.cudnn.allow_tf32 = True
        y = torch.ops.fastcnn.conv2d(x, wt, b, [1, 1], [1, 1], [1, 1], 1, 1, r)
        gx, gw, _ = torch.ops.fastcnn.conv2d_backward(
            gy, x, wt, None, [1, 1], [1, 1], [1, 1], 1, 0, [True, True, False]
        )
    finally:
        emu.configure(arch, sms, -1)
        torch.backends.cudnn.allow_tf32 = tf32
    kernels = [r_["kernel"] for r_ in counting() if "conv_gemm_kernel" in r_["kernel"]]
    assert len(kernels) == 3 and all("128, 128, 2, 4, 4>" in k for k in kernels), kernels
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    ref = torch.relu(torch.nn.functional.conv2d(xr, wr, b.double(), padding=1) + r.double())
    torch.nn.functional.conv2d(xr, wr, padding=1).backward(gy.double())
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype != torch.float32 else {"rtol": 2e-3, "atol": 2e-3}
    for got, want in ((y, ref), (gx, xr.grad), (gw, wr.grad)):
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.double(), want, **tol)
