"""fastcnn.augment: the fused affine-warp + normalisation op against F.grid_sample and against
torchvision.transforms.v2.functional, transform by transform, on the same parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from conftest import DEVICES
from torchvision.transforms import InterpolationMode

import fastcnn
from fastcnn import augment as A

BILINEAR = InterpolationMode.BILINEAR


def _device(name: str) -> torch.device:
    if name == "cuda" and not fastcnn.cuda_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of fastcnn")
    return torch.device(name)


def smooth_image(n: int, c: int, h: int, w: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Low-frequency images in [0, 1]: bilinear resampling of them is well conditioned."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, 4, 4, generator=g, dtype=torch.float64)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 1).to(dtype)


def grid_sample_reference(x, theta, mean, std, out_size):
    x = x.to(torch.float64)
    grid = F.affine_grid(theta.to(torch.float64), (x.shape[0], x.shape[1], *out_size), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (y - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def identity(n: int) -> torch.Tensor:
    return torch.eye(3)[:2].repeat(n, 1, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_size", [(13, 17), (9, 24)])
def test_matches_grid_sample_float64(device, channels_last, out_size):
    dev = _device(device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 13, 17, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    theta = identity(3).double() + 0.4 * torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    mean = torch.rand(3, generator=g, dtype=torch.float64)
    std = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    out = A.augment_affine(x.to(dev), theta.to(dev), mean.to(dev), std.to(dev), out_size)
    assert out.dtype == torch.float64 and out.shape == (3, 3, *out_size)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(
        out.cpu(), grid_sample_reference(x, theta, mean, std, out_size), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_and_float32_inputs(device):
    dev = _device(device)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (2, 3, 10, 12), generator=g, dtype=torch.uint8)
    theta = identity(2) + 0.3 * torch.randn(2, 2, 3, generator=g)
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 70.0]
    from_u8 = A.augment_affine(x.to(dev), theta.to(dev), mean, std, (8, 8))
    from_f32 = A.augment_affine(x.float().to(dev), theta.to(dev), mean, std, (8, 8))
    assert from_u8.dtype == torch.float32 and from_f32.dtype == torch.float32
    # uint8 is converted to float on load, so the arithmetic is identical.
    torch.testing.assert_close(from_u8, from_f32, rtol=0, atol=0)
    ref = grid_sample_reference(x, theta, torch.tensor(mean).double(), torch.tensor(std).double(), (8, 8))
    torch.testing.assert_close(from_u8.cpu().double(), ref, rtol=0, atol=1e-5)


def test_normalisation_is_exact():
    x = torch.rand(4, 3, 11, 7)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    out = A.augment_affine(x, identity(4), mean, std)
    expected = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.equal(out, expected)
    # No normalisation and the identity: an exact copy, float64 kept float64.
    x64 = x.double().contiguous(memory_format=torch.channels_last)
    copy = A.augment_affine(x64, identity(4))
    assert copy.dtype == torch.float64 and torch.equal(copy, x64)


@pytest.mark.parametrize("which", ["h", "v", "hv"])
def test_flips_exact(which):
    x = torch.rand(5, 3, 9, 14)
    n = x.shape[0]
    hflip = torch.full((n,), "h" in which)
    vflip = torch.full((n,), "v" in which)
    theta = A.flip_theta(hflip, vflip)[:, :2]
    expected = x
    if "h" in which:
        expected = TF.horizontal_flip(expected)
    if "v" in which:
        expected = TF.vertical_flip(expected)
    assert torch.equal(A.augment_affine(x, theta), expected)


def test_flip_per_sample():
    x = torch.rand(4, 2, 6, 6)
    hflip = torch.tensor([True, False, True, False])
    out = A.augment_affine(x, A.flip_theta(hflip, torch.zeros(4, dtype=torch.bool))[:, :2])
    for i in range(4):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]) if hflip[i] else x[i])


# torchvision's resized_crop crops first and resizes the crop, so at the crop's edges it clamps to the
# crop's border pixels, while the fused kernel samples the real neighbours outside the crop (it never
# materialises the crop). The two agree wherever every bilinear tap lies inside the crop: all but the
# outer ring of output pixels whose sample point is within half an input pixel of the crop edge. With the
# up-scaling ratios here (< 2) that ring is one pixel wide; we exclude two.
@pytest.mark.parametrize(
    "box,out_size",
    [((3, 5, 20, 24), (32, 32)), ((0, 0, 30, 40), (24, 20)), ((7, 2, 15, 9), (15, 18))],
)
def test_resized_crop_matches_torchvision(box, out_size):
    x = smooth_image(2, 3, 30, 40, seed=3)
    top, left, height, width = box
    t = lambda v: torch.full((2,), v)  # noqa: E731
    theta = A.crop_theta(t(top), t(left), t(height), t(width), (30, 40))[:, :2]
    out = A.augment_affine(x, theta, out_size=out_size)
    expected = TF.resized_crop(x, top, left, height, width, list(out_size), BILINEAR, antialias=False)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("angle", [17.5, -41.0, 90.0, 133.0])
@pytest.mark.parametrize("size", [(24, 24), (20, 31)])
def test_rotate_matches_torchvision(angle, size):
    x = smooth_image(2, 3, *size, seed=4)
    theta = A.rotate_scale_theta(torch.full((2,), angle), torch.ones(2), size)[:, :2]
    out = A.augment_affine(x, theta)
    # fill=None: torchvision's plain grid_sample with zero padding, the kernel's own convention.
    expected = TF.rotate(x, angle, interpolation=BILINEAR)
    # Same sampling points up to float32 rounding of the coordinates (bilinear is continuous).
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [0.7, 1.0, 1.35])
@pytest.mark.parametrize("angle", [0.0, 25.0])
def test_affine_scale_matches_torchvision(scale, angle):
    x = smooth_image(2, 3, 18, 26, seed=5)
    theta = A.rotate_scale_theta(torch.full((2,), angle), torch.full((2,), scale), (18, 26))[:, :2]
    out = A.augment_affine(x, theta)
    # torchvision's affine() turns clockwise for positive angles, rotate() counter-clockwise.
    expected = TF.affine(x, angle=-angle, translate=[0, 0], scale=scale, shear=[0, 0], interpolation=BILINEAR)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_crop_then_flip_composition():
    x = smooth_image(1, 3, 30, 30, seed=6)
    one = torch.ones(1)
    theta = A.compose_theta(
        A.crop_theta(4 * one, 6 * one, 18 * one, 20 * one, (30, 30)),
        A.flip_theta(torch.tensor([True]), torch.tensor([False])),
    )[:, :2]
    out = A.augment_affine(x, theta, out_size=(24, 24))
    expected = TF.horizontal_flip(TF.resized_crop(x, 4, 6, 18, 20, [24, 24], BILINEAR, antialias=False))
    torch.testing.assert_close(out[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], rtol=0, atol=1e-5)


def test_sample_params_ranges_and_determinism():
    kwargs = dict(
        hflip=0.5, vflip=0.5, crop_scale=(0.3, 1.0), crop_ratio=(0.5, 2.0), degrees=30.0, scale=(0.8, 1.2)
    )
    p = A.sample_params(500, (40, 60), generator=torch.Generator().manual_seed(0), **kwargs)
    assert (p.top >= 0).all() and (p.left >= 0).all()
    assert (p.top + p.height <= 40).all() and (p.left + p.width <= 60).all()
    assert (p.height > 0).all() and (p.width > 0).all()
    assert p.angle.abs().max() <= 30 and p.scale.min() >= 0.8 and p.scale.max() <= 1.2
    assert 0.35 < p.hflip.float().mean() < 0.65 and 0.35 < p.vflip.float().mean() < 0.65
    q = A.sample_params(500, (40, 60), generator=torch.Generator().manual_seed(0), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(vars(p).values(), vars(q).values(), strict=True))


def test_module_reproducible_and_eval_identity():
    x = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    kwargs = dict(out_size=16, crop_scale=(0.5, 1.0), degrees=20.0, scale=(0.9, 1.1), mean=0.5, std=0.25)
    a, b = A.RandomAffineAugment(seed=7, **kwargs), A.RandomAffineAugment(seed=7, **kwargs)
    ya, yb = a(x), b(x)
    assert ya.shape == (6, 3, 16, 16) and ya.dtype == torch.float32
    assert torch.equal(ya, yb)
    assert not torch.equal(a(x), ya)  # a new draw per call
    assert not torch.equal(A.RandomAffineAugment(seed=8, **kwargs)(x), ya)
    a.eval()
    xf = torch.rand(6, 3, 20, 20)
    plain = A.RandomAffineAugment(degrees=45.0, hflip=1.0).eval()
    assert torch.equal(plain(xf), xf)
    # Eval keeps the normalisation (uint8 read as x / 255) and the resize; no randomness.
    y = a(x[:, :, :16, :16])
    torch.testing.assert_close(y, (x[:, :, :16, :16].float() / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-5)


def test_unbatched_input():
    x = torch.rand(3, 10, 10)
    theta = A.flip_theta(torch.tensor([True]), torch.tensor([False]))[0, :2]
    assert torch.equal(A.augment_affine(x, theta), TF.horizontal_flip(x))


def test_torch_compile_uses_fake_kernel():
    x = torch.rand(2, 3, 8, 8)
    theta = identity(2) + 0.1

    def fn(x, theta):
        return torch.ops.fastcnn.augment_affine(x, theta, torch.zeros(3), torch.ones(3), [6, 6]) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, theta), fn(x, theta))


def test_errors():
    x = torch.rand(2, 3, 8, 8)
    th = identity(2)
    with pytest.raises(ValueError, match="4-D"):
        A.augment_affine(x[None], th)
    with pytest.raises(RuntimeError, match="theta must have shape"):
        A.augment_affine(x, identity(3))
    with pytest.raises(ValueError, match="mean must have one value per channel"):
        A.augment_affine(x, th, mean=[0.1, 0.2])
    with pytest.raises(ValueError, match="out_size"):
        A.augment_affine(x, th, out_size=(0, 4))
    with pytest.raises(RuntimeError, match=r"uint8, float32(,| or) float64"):
        A.augment_affine(x.to(torch.int32), th)
    with pytest.raises(RuntimeError, match="empty batch"):
        A.augment_affine(x[:0], th[:0])
    with pytest.raises(RuntimeError, match="not differentiable"):
        A.augment_affine(x.requires_grad_(), th)
    with pytest.raises(RuntimeError, match="out_size must be positive"):
        torch.ops.fastcnn.augment_affine(x.detach(), th, torch.zeros(3), torch.ones(3), [4, -1])
    with pytest.raises(ValueError, match="probability"):
        A.RandomAffineAugment(hflip=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        A.RandomAffineAugment(crop_scale=(0.5, 1.5))


@pytest.mark.gpu  # both kernels in one process: not under emulation
def test_cuda_matches_cpu():
    dev = _device("cuda")
    aug = A.RandomAffineAugment(out_size=24, crop_scale=(0.4, 1.0), degrees=30.0, mean=0.5, std=0.2, seed=0)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    params = A.sample_params(8, 32, crop_scale=(0.4, 1.0), degrees=30.0, generator=aug.generator)
    theta = params.theta(32, 24)
    out_cpu = A.augment_affine(x, theta, 127.5, 51.0, 24)
    out_gpu = A.augment_affine(x.to(dev), theta.to(dev), 127.5, 51.0, 24)
    assert out_gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=0, atol=1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        out = A.augment_affine(x.to(dev, dtype), theta.to(dev), 127.5, 51.0, 24)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), out_cpu, rtol=0, atol=0.05)
