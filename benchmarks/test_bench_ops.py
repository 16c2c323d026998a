"""pytest-benchmark suite over the same op cases as ``fastcnn bench --preset quick``.

    pytest benchmarks/ --benchmark-only                     # every case, fastcnn and PyTorch eager
    pytest benchmarks/ --benchmark-only -k conv2d           # one op
    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:case

Each case appears twice, once per contender (``fastcnn`` and ``eager``), on the same inputs, so
pytest-benchmark's table sets them side by side (group by case). Runs on the GPU when fastcnn has its CUDA
kernels and one is present (each call is then synchronised, so host timing covers the kernel). Not part of
the test command: the project's ``testpaths`` is ``tests/``.
"""

from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from fastcnn.tools import bench  # noqa: E402

DEVICE = bench.resolve_device("auto")
PRESET = bench.PRESETS["quick"]


def _specs() -> list[bench.Spec]:
    args = argparse.Namespace(
        ops=",".join(g for g in bench.OP_GROUPS if g != "model"),
        networks=None,
        max_shapes=None,
        batch=None,
        compile_mode="none",
        compile_models=False,
        dtype=None,
        layout="auto",
    )
    return [
        s for s in bench.build_specs(args, DEVICE, PRESET, "quick", []) if bench._has_kernel(s.op, DEVICE)
    ]


SPECS = _specs()


def _case_id(spec: bench.Spec) -> str:
    return (
        f"{spec.op}-{spec.network}-{spec.shape}-N{spec.batch}-{spec.config.dtype_name}-{spec.config.layout}"
    )


@pytest.fixture(scope="module")
def built_cases():
    """Each case's tensors, built once and shared by both contenders."""
    cache: dict[str, bench.Built] = {}

    def get(spec: bench.Spec) -> bench.Built:
        key = _case_id(spec)
        if key not in cache:
            cache.clear()  # keep one case's tensors alive at a time
            cache[key] = spec.build()
        return cache[key]

    return get


@pytest.mark.parametrize("contender", ["fastcnn", "eager"])
@pytest.mark.parametrize("case", SPECS, ids=[_case_id(s) for s in SPECS])
def test_op(benchmark, built_cases, case: bench.Spec, contender: str):
    fn = built_cases(case).contenders[contender]
    if DEVICE.type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize(DEVICE)

    else:
        run = fn
    benchmark.group = _case_id(case)
    benchmark.extra_info.update(op=case.op, network=case.network, shape=case.shape, contender=contender)
    benchmark(run)
