"""fastcnn's SIMT emulator (csrc/emu/), checked on its own: each emulated instruction against a plain
reference on lane-coded and random inputs, the faults it must report, and its scheduler's power to expose
a missing barrier. Runs with FASTCNN_BACKEND=cuda-emu (`make test-cuda-emu`); skipped otherwise.

When tests/data/emu_goldens.json exists (written on a GPU by scripts/emu_goldens.cu, run first by
scripts/gpu_check.sh), the instruction outputs are also compared with it bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EMULATED

pytestmark = pytest.mark.skipif(not EMULATED, reason="needs the emulation build (FASTCNN_BACKEND=cuda-emu)")

GOLDENS = Path(__file__).parent / "data" / "emu_goldens.json"

emu = torch.ops.fastcnn_emu if EMULATED else None


def _u32(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint32)


def _bits16(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    return torch.from_numpy(values.astype(np.float32)).to(dtype).view(torch.int16).numpy().view(np.uint16)


def _pack(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo.astype(np.uint32) | (hi.astype(np.uint32) << 16)


# ---- the PTX ISA fragment tables, written out independently of the emulator ------------------------------


def _lane_gt(lane: int) -> tuple[int, int]:
    return lane // 4, lane % 4


def expected_ldmatrix(mats: np.ndarray, trans: bool) -> np.ndarray:
    """mats [num, 8, 8] of b16 bits -> registers [32, num]: lane (g, t) gets elements (g, 2t), (g, 2t+1)
    of each matrix (transposed: (2t, g), (2t+1, g)), the first in the low half."""
    num = mats.shape[0]
    out = np.zeros((32, num), dtype=np.uint32)
    for lane in range(32):
        g, t = _lane_gt(lane)
        for m in range(num):
            if trans:
                lo, hi = mats[m, 2 * t, g], mats[m, 2 * t + 1, g]
            else:
                lo, hi = mats[m, g, 2 * t], mats[m, g, 2 * t + 1]
            out[lane, m] = _pack(np.array(lo), np.array(hi))
    return out


def mma_fragments(a: np.ndarray, b: np.ndarray, c: np.ndarray, kind: int):
    """Per-lane registers of A [16, K], B [K, 8] (bit patterns already) and C [16, 8] float32."""
    ra = np.zeros((32, 4), dtype=np.uint32)
    rb = np.zeros((32, 2), dtype=np.uint32)
    rc = np.zeros((32, 4), dtype=np.float32)
    for lane in range(32):
        g, t = _lane_gt(lane)
        if kind == 2:  # tf32 m16n8k8
            ra[lane] = [a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4]]
            rb[lane] = [b[t, g], b[t + 4, g]]
        else:
            ra[lane] = [
                _pack(a[g, 2 * t], a[g, 2 * t + 1]),
                _pack(a[g + 8, 2 * t], a[g + 8, 2 * t + 1]),
                _pack(a[g, 2 * t + 8], a[g, 2 * t + 9]),
                _pack(a[g + 8, 2 * t + 8], a[g + 8, 2 * t + 9]),
            ]
            rb[lane] = [_pack(b[2 * t, g], b[2 * t + 1, g]), _pack(b[2 * t + 8, g], b[2 * t + 9, g])]
        rc[lane] = [c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1]]
    return ra, rb, rc


def gather_d(rd: np.ndarray) -> np.ndarray:
    d = np.zeros((16, 8), dtype=np.float32)
    for lane in range(32):
        g, t = _lane_gt(lane)
        d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = rd[lane]
    return d


def tf32_rna(x: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 on float32 values, as bit patterns: nearest, ties away from zero, 13 bits dropped."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    special = (u & 0x7F800000) == 0x7F800000
    nan = special & ((u & 0x007FFFFF) != 0)
    r = ((u + 0x1000) & 0xFFFFE000).astype(np.uint32)
    r = np.where(special, u.astype(np.uint32), r)
    return np.where(nan, np.uint32(0x7FFFE000), r).astype(np.uint32)


# ---- instructions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
def test_ldmatrix_lane_coded(num, trans):
    # Element (matrix m, row r, column c) holds the code m * 64 + r * 8 + c.
    mats = np.arange(num * 64, dtype=np.uint16).reshape(num, 8, 8)
    out = emu.test_ldmatrix(torch.from_numpy(mats.reshape(-1).view(np.int16).copy()), num, trans)
    got = _u32(out).reshape(32, num)
    np.testing.assert_array_equal(got, expected_ldmatrix(mats, trans))


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["f16", "bf16", "tf32"])
def test_mma_registers_lane_coded(kind):
    # Small integers are exact in every operand type, so D must equal A @ B + C exactly.
    k = 8 if kind == 2 else 16
    rng = np.random.default_rng(kind)
    a = rng.integers(-8, 9, size=(16, k)).astype(np.float32)
    b = rng.integers(-8, 9, size=(k, 8)).astype(np.float32)
    c = (np.arange(128, dtype=np.float32).reshape(16, 8) - 64) / 4
    if kind == 2:
        abits, bbits = a.view(np.uint32), b.view(np.uint32)
    else:
        dt = torch.float16 if kind == 0 else torch.bfloat16
        abits, bbits = _bits16(a, dt), _bits16(b, dt)
    ra, rb, rc = mma_fragments(abits, bbits, c, kind)
    rd = emu.test_mma(
        torch.from_numpy(ra.view(np.int32).reshape(-1).copy()),
        torch.from_numpy(rb.view(np.int32).reshape(-1).copy()),
        torch.from_numpy(rc.reshape(-1).copy()),
        kind,
    )
    np.testing.assert_array_equal(gather_d(rd.numpy().reshape(32, 4)), a @ b + c)


def test_mma_tf32_ignores_the_low_mantissa_bits():
    # A tf32 operand register that was never rounded: the hardware reads its upper 19 bits only.
    a = np.full((16, 8), 1.0, dtype=np.float32).view(np.uint32) | np.uint32(0x1FFF)
    b = np.full((8, 8), 1.0, dtype=np.float32).view(np.uint32)
    ra, rb, rc = mma_fragments(a, b, np.zeros((16, 8), np.float32), 2)
    rd = emu.test_mma(
        torch.from_numpy(ra.view(np.int32).reshape(-1).copy()),
        torch.from_numpy(rb.view(np.int32).reshape(-1).copy()),
        torch.from_numpy(rc.reshape(-1).copy()),
        2,
    )
    np.testing.assert_array_equal(gather_d(rd.numpy().reshape(32, 4)), np.full((16, 8), 8.0, np.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("k_major", [True, False], ids=["kmajor", "mnmajor"])
def test_ldmatrix_mma_chain_matches_matrix_product(dtype, k_major):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(16, 16, generator=g).to(dtype)  # [m, k]
    b = torch.randn(8, 16, generator=g).to(dtype)  # [n, k]
    c = torch.randn(16, 8, generator=g)
    a_in = a if k_major else a.t().contiguous()  # MN-major: [k, m]
    b_in = b if k_major else b.t().contiguous()  # [k, n]
    d = emu.test_mma_chain(a_in.reshape(-1), b_in.reshape(-1), c.reshape(-1), k_major)
    ref = a.double() @ b.double().t() + c.double()
    # Exact products summed in double, one rounding to float32.
    torch.testing.assert_close(d.double(), ref, rtol=2**-23, atol=2**-23 * ref.abs().max().item())


def test_tf32_chain_matches_rounded_product():
    g = torch.Generator().manual_seed(8)
    a = torch.randn(16, 8, generator=g)
    b = torch.randn(8, 8, generator=g)  # [n, k]
    c = torch.randn(16, 8, generator=g)
    d = emu.test_mma_chain(a.reshape(-1), b.reshape(-1), c.reshape(-1), True)
    a32 = torch.from_numpy(tf32_rna(a.numpy()).view(np.float32)).double()
    b32 = torch.from_numpy(tf32_rna(b.numpy()).view(np.float32)).double()
    ref = a32 @ b32.t() + c.double()
    torch.testing.assert_close(d.double(), ref, rtol=2**-23, atol=2**-23 * ref.abs().max().item())


def test_cvt_rna_tf32():
    def f32(bits):
        return struct.unpack("<f", struct.pack("<I", bits))[0]

    special = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 3.4e38, 1e-40]
    ties = [f32(0x3F801000), f32(0xBF801000), f32(0x3F800FFF), f32(0x3F803000)]  # ties go away from 0
    nan_low_payload = [f32(0x7F800001)]
    rnd = torch.randn(200, generator=torch.Generator().manual_seed(9)).tolist()
    x = torch.tensor(special + ties + nan_low_payload + rnd, dtype=torch.float32)
    got = _u32(emu.test_cvt_tf32(x))
    np.testing.assert_array_equal(got, tf32_rna(x.numpy()))
    assert got[len(special)] == 0x3F802000 and got[len(special) + 1] == 0xBF802000
    assert (got[len(special) + len(ties)] & 0x7FFFFFFF) > 0x7F800000, "a NaN must stay a NaN"


def test_cp_async_copies_and_zero_fills():
    src = torch.arange(1, 129, dtype=torch.int32)
    out = emu.test_cp_async(src).view(32, 4)
    for lane in range(32):
        source = (lane + 1) % 32
        expected = [0] * 4 if source % 3 == 2 else list(range(source * 4 + 1, source * 4 + 5))
        assert out[lane].tolist() == expected, lane


def test_shuffle_and_match():
    values = torch.randint(0, 1000, (32,), dtype=torch.int32, generator=torch.Generator().manual_seed(3))
    out = _u32(emu.test_shfl_match(values))
    v = values.numpy()
    np.testing.assert_array_equal(out[:32], v[(np.arange(32) * 5 + 3) % 32].astype(np.uint32))
    for lane in range(32):
        expected = sum(1 << m for m in range(32) if v[m] % 4 == v[lane] % 4)
        assert out[32 + lane] == expected, lane


def test_goldens_from_a_gpu_match_bit_for_bit():
    if not GOLDENS.exists():
        pytest.skip("no hardware goldens yet: run scripts/emu_goldens.cu on a GPU (scripts/gpu_check.sh)")
    goldens = json.loads(GOLDENS.read_text())
    for case in goldens["ldmatrix"]:
        src = torch.tensor(case["input"], dtype=torch.int32).to(torch.int16)
        out = _u32(emu.test_ldmatrix(src, case["num"], case["trans"]))
        assert out.tolist() == case["output"], f"ldmatrix x{case['num']} trans={case['trans']}"
    for case in goldens["mma"]:
        a, b, c = (torch.tensor(case[k], dtype=torch.int64).to(torch.int32) for k in ("a", "b", "c"))
        out = _u32(emu.test_mma(a, b, c.view(torch.float32), case["kind"])).astype(np.int64)
        want = np.array(case["output"], dtype=np.int64)
        if case["exact"]:
            assert out.tolist() == want.tolist(), f"mma kind {case['kind']} (exact inputs)"
        else:
            # Same-sign float32 bit patterns differ by their distance in ulps.
            assert np.abs(out - want).max() <= 2, f"mma kind {case['kind']}: more than 2 ulp from the GPU"
    x = torch.tensor(goldens["cvt_tf32"]["input"], dtype=torch.int64).to(torch.int32).view(torch.float32)
    assert _u32(emu.test_cvt_tf32(x)).tolist() == goldens["cvt_tf32"]["output"]


# ---- faults -----------------------------------------------------------------------------------------

FAULTS = [
    ("partial_warp_collective", r"__shfl_sync.*part of warp 0.*lanes 0,1,.*,15 .*had exited"),
    ("divergent_barrier", r"different __syncthreads"),
    ("exit_before_barrier", r"wait at __syncthreads.*exited without reaching it"),
    ("misaligned_vector", r"misaligned access at emu/emu_ops.cpp:\d+: address 0x[0-9a-f]+ is not 16-byte"),
    ("ldmatrix_misaligned", r"ldmatrix: lane \d+ gave shared address \d+, which is not 16-byte aligned"),
    ("ldmatrix_out_of_range", r"ldmatrix: shared address \d+ \+ 16 bytes is past the block's 1024 bytes"),
    ("pointer_outside_shared", r"__cvta_generic_to_shared at .* outside the block's dynamic shared memory"),
    ("trap", r"thread \(3, 0, 0\).*__trap\(\)"),
    ("too_many_threads", r"1025 threads per block"),
    ("grid_y_too_large", r"grid.y or grid.z over 65,535"),
    ("shared_over_48k", r"cudaFuncSetAttribute"),
]


@pytest.mark.parametrize("name,match", FAULTS, ids=[f[0] for f in FAULTS])
def test_faults_are_reported_with_kernel_and_thread(name, match):
    if name == "misaligned_vector" and os.environ.get("FASTCNN_EMU_EXTENSION", "_C_emu") != "_C_emu":
        pytest.skip("sanitizer builds report misalignment through UBSan's own runtime, which aborts")
    scratch = torch.zeros(4096)
    with pytest.raises(RuntimeError, match=match) as info:
        emu.test_fault(name, scratch)
    assert re.search(r"fastcnn emulator: (launch of|kernel) \S*_kernel", str(info.value)), str(info.value)
    # The runtime is usable again after a fault.
    assert torch.equal(torch.ops.fastcnn.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_missing_barrier_is_exposed_by_the_scheduler():
    expected = torch.tensor([float((i + 32) % 256) for i in range(256)])
    for _ in range(4):
        assert torch.equal(emu.test_neighbour_exchange(True), expected)
    runs = [emu.test_neighbour_exchange(False) for _ in range(8)]
    assert any(torch.isnan(r).any() for r in runs), "a read of another warp's unwritten data went unseen"


def test_emulated_device_below_sm80_refuses_sm80_instructions():
    arch, sms, _ = emu.properties()
    try:
        emu.configure(70, sms, -1)
        with pytest.raises(RuntimeError, match=r"ldmatrix needs sm_75"):
            emu.test_ldmatrix(torch.zeros(256, dtype=torch.int16), 4, False)
    finally:
        emu.configure(arch, sms, -1)


def test_new_cpu_tensors_start_as_nan():
    # Output buffers are poisoned, so that an element a kernel never writes fails every comparison.
    assert torch.isnan(torch.empty(1000)).all()
    assert torch.isnan(torch.empty(64, dtype=torch.float16)).all()
