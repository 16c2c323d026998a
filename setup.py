"""Build fastcnn._C: the C++ (OpenMP) kernels always, the CUDA kernels when a toolkit is found.

Environment:
  FASTCNN_CUDA=0/1       force the CUDA build off/on (default: on when nvcc/CUDA_HOME is found)
  TORCH_CUDA_ARCH_LIST   GPU architectures, default "9.0" (H100)
  MAX_JOBS               parallel compile jobs for ninja
"""

import glob
import os

from setuptools import find_packages, setup

# torch guesses /usr/local when nvcc is not on PATH; point it at the usual toolkit before it looks.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    forced = os.environ.get("FASTCNN_CUDA")
    if forced is not None:
        if forced == "1" and CUDA_HOME is None:
            raise RuntimeError("FASTCNN_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME=/usr/local/cuda")
        return forced == "1"
    return CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))


def _extension():
    def rel(pattern: str) -> list[str]:
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        return CppExtension(
            "fastcnn._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    nvcc_flags = [
        "-O3",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        "-DCUDA_HAS_FP16=1",
        "--threads=2",
    ]
    return CUDAExtension(
        "fastcnn._C",
        sources + rel("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags + ["-DFASTCNN_WITH_CUDA"], "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="fastcnn",
    packages=find_packages(include=["fastcnn", "fastcnn.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
