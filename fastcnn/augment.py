"""Batch image augmentation in one fused kernel per batch.

Random horizontal/vertical flips, a random resized crop (area scale + aspect ratio), a rotation by a
random angle and a random zoom are combined into ONE 2x3 affine matrix per sample, and
:func:`augment_affine` applies all of them plus the per-channel normalisation ``(x - mean) / std`` in a
single pass over the batch: bilinear sampling, zero outside the image, ``align_corners=False``, i.e. the
conventions of ``F.grid_sample`` and of ``torchvision.transforms.v2.functional`` (``resized_crop``,
``rotate``, ``affine`` with bilinear interpolation).

Coordinates. A matrix ``theta`` maps an output point to the input point it samples, in
``F.affine_grid``'s normalised coordinates: ``(-1, -1)`` is the outer top-left corner of the top-left
pixel and ``(1, 1)`` the outer bottom-right corner of the bottom-right one. The helpers below build
3x3 homogeneous forms of each transform (``*_theta``) so that chains compose by matrix product.

The random parameters are drawn on the CPU from a :class:`torch.Generator`, so a seed reproduces the
same augmentation on every device; only the ``[N, 2, 3]`` matrices travel to the images' device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import _extension  # noqa: F401 - registers torch.ops.fastcnn.augment_affine

__all__ = [
    "AugmentParams",
    "RandomAffineAugment",
    "augment_affine",
    "compose_theta",
    "crop_theta",
    "flip_theta",
    "rotate_scale_theta",
    "sample_params",
]

SizeLike = int | Sequence[int]


def _size(value: SizeLike, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return value  # type: ignore[return-value]


def _channel_values(value: float | Sequence[float] | Tensor | None, channels: int, default: float, name: str):
    if value is None:
        return torch.full((channels,), default, dtype=torch.float64)
    t = (
        torch.as_tensor(value, dtype=torch.float64).flatten().cpu()
        if not isinstance(value, Tensor)
        else value
    )
    if t.numel() == 1:
        t = t.reshape(1).expand(channels)
    if t.dim() != 1 or t.numel() != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got shape {tuple(t.shape)}")
    return t


def augment_affine(
    input: Tensor,
    theta: Tensor,
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    out_size: SizeLike | None = None,
) -> Tensor:
    """Warps each image by its own affine matrix and normalises it, in one fused kernel.

    ``out[n, c] = (bilinear_sample(input[n, c], theta[n]) - mean[c]) / std[c]``, exactly
    ``(F.grid_sample(input, F.affine_grid(theta, (N, C, *out_size), align_corners=False),
    align_corners=False) - mean) / std`` (zero padding).

    Args:
        input: ``[N, C, H, W]`` (or unbatched ``[C, H, W]``), uint8 or floating, NCHW or channels_last.
            Values are sampled as they are (a uint8 image stays in 0..255: give mean/std in those units).
        theta: ``[N, 2, 3]`` (or ``[2, 3]``) output-to-input maps in normalised coordinates.
        mean, std: per-channel normalisation (a scalar, a sequence or a tensor of C values); default 0, 1.
        out_size: ``(height, width)`` of the output, default the input's.

    Returns:
        float32 ``[N, C, *out_size]`` (float64 for float64 input) in the input's memory format.

    The op has no gradient: augmentation runs on data, not on parameters.
    """
    if not isinstance(input, Tensor) or not isinstance(theta, Tensor):
        raise TypeError("input and theta must be torch.Tensors")
    if input.dim() not in (3, 4):
        raise ValueError(f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(input.shape)}")
    batched = input.dim() == 4
    if not batched:
        input = input.unsqueeze(0)
        if theta.dim() == 2:
            theta = theta.unsqueeze(0)
    if theta.dim() == 3 and theta.shape[1:] == (3, 3):
        theta = theta[:, :2]
    if torch.is_grad_enabled() and (input.requires_grad or theta.requires_grad):
        raise RuntimeError(
            "fastcnn.augment.augment_affine is not differentiable; call it under torch.no_grad() "
            "or detach its inputs"
        )
    size = _size(out_size, "out_size") if out_size is not None else (input.shape[-2], input.shape[-1])
    channels = input.shape[1]
    out_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    mean_t = _channel_values(mean, channels, 0.0, "mean").to(input.device, out_dtype)
    std_t = _channel_values(std, channels, 1.0, "std").to(input.device, out_dtype)
    out = torch.ops.fastcnn.augment_affine(input, theta.to(input.device), mean_t, std_t, list(size))
    return out if batched else out.squeeze(0)


@torch.library.register_fake("fastcnn::augment_affine")
def _augment_affine_fake(input, theta, mean, std, out_size):
    torch._check(input.dim() == 4, lambda: f"fastcnn: input must be 4-D, got {input.dim()}-D")
    torch._check(
        theta.dim() == 3 and theta.shape[0] == input.shape[0] and theta.shape[1:] == (2, 3),
        lambda: f"fastcnn: theta must have shape [{input.shape[0]}, 2, 3], got {tuple(theta.shape)}",
    )
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    out = input.new_empty((input.shape[0], input.shape[1], out_size[0], out_size[1]), dtype=dtype)
    if torch._prims_common.suggest_memory_format(input) == torch.channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _no_backward(ctx, grad_output):
    raise RuntimeError(
        "fastcnn::augment_affine is not differentiable (data augmentation has no gradient); "
        "detach its inputs or run it under torch.no_grad()"
    )


torch.library.register_autograd("fastcnn::augment_affine", _no_backward, setup_context=lambda ctx, i, o: None)


# ----------------------------------------------------------------------------------------------------------
# Per-transform matrices, [N, 3, 3] homogeneous output->input maps in normalised coordinates
# ----------------------------------------------------------------------------------------------------------


def _eye(n: int, device: torch.device | str | None = None) -> Tensor:
    return torch.eye(3, dtype=torch.float64, device=device).repeat(n, 1, 1)


def flip_theta(hflip: Tensor, vflip: Tensor) -> Tensor:
    """Mirrors: ``hflip``/``vflip`` are ``[N]`` booleans (flip that sample left-right / top-bottom)."""
    m = _eye(hflip.shape[0], hflip.device)
    m[:, 0, 0] = 1.0 - 2.0 * hflip.to(torch.float64)
    m[:, 1, 1] = 1.0 - 2.0 * vflip.to(torch.float64)
    return m


def crop_theta(top: Tensor, left: Tensor, height: Tensor, width: Tensor, in_size: SizeLike) -> Tensor:
    """Crop of the box ``[top, top + height) x [left, left + width)`` (input pixels) stretched over the
    whole output: the map of ``torchvision``'s ``resized_crop`` with bilinear interpolation."""
    in_h, in_w = _size(in_size, "in_size")
    top, left, height, width = (t.to(torch.float64) for t in (top, left, height, width))
    m = _eye(top.shape[0], top.device)
    m[:, 0, 0] = width / in_w
    m[:, 0, 2] = (2.0 * left + width) / in_w - 1.0
    m[:, 1, 1] = height / in_h
    m[:, 1, 2] = (2.0 * top + height) / in_h - 1.0
    return m


def rotate_scale_theta(angle: Tensor, scale: Tensor, size: SizeLike) -> Tensor:
    """Rotation by ``angle`` degrees counter-clockwise (as ``torchvision``'s ``rotate``) and zoom by
    ``scale`` (> 1 enlarges, as ``affine(scale=...)``) about the centre of a ``size`` image."""
    h, w = _size(size, "size")
    rad = torch.deg2rad(angle.to(torch.float64))
    inv_scale = 1.0 / scale.to(torch.float64)
    cos, sin = torch.cos(rad) * inv_scale, torch.sin(rad) * inv_scale
    m = _eye(angle.shape[0], angle.device)
    # The pixel-space inverse [[cos, -sin], [sin, cos]] / scale, conjugated by the normalisation
    # diag(w/2, h/2): a non-square image rotates in pixels, not in normalised units.
    m[:, 0, 0] = cos
    m[:, 0, 1] = -sin * (h / w)
    m[:, 1, 0] = sin * (w / h)
    m[:, 1, 1] = cos
    return m


def compose_theta(*thetas: Tensor) -> Tensor:
    """Chains output->input maps: ``compose_theta(a, b)`` samples through ``b`` then ``a``, i.e. the
    output of transform ``a`` is the input of ``b`` (``a`` runs first on the image)."""
    out = thetas[0]
    for t in thetas[1:]:
        out = out @ t
    return out


@dataclasses.dataclass
class AugmentParams:
    """Per-sample random parameters of one batch (all ``[N]`` CPU tensors)."""

    hflip: Tensor
    vflip: Tensor
    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    angle: Tensor
    scale: Tensor

    def theta(self, in_size: SizeLike, out_size: SizeLike) -> Tensor:
        """The ``[N, 2, 3]`` float64 matrix of crop → flips → rotation/zoom, in that order on the image."""
        m = compose_theta(
            crop_theta(self.top, self.left, self.height, self.width, in_size),
            flip_theta(self.hflip, self.vflip),
            rotate_scale_theta(self.angle, self.scale, out_size),
        )
        return m[:, :2].contiguous()


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator | None, *shape: int) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def _sample_crops(
    n: int,
    in_size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    tries: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``RandomResizedCrop.get_params`` for a whole batch: up to ``tries`` proposals per sample, the first
    that fits wins, and a ratio-clamped centre crop when none does."""
    in_h, in_w = in_size
    area = float(in_h * in_w)
    target_area = (area * _uniform(n, scale, generator, tries)).numpy()
    aspect = np.exp(_uniform(n, (math.log(ratio[0]), math.log(ratio[1])), generator, tries).numpy())
    # numpy for the few thousand scalar sqrt/exp/round: torch may hand even these to its thread pool,
    # whose wake-up costs more than the arithmetic. np.rint rounds half to even, as torch.round.
    w = torch.from_numpy(np.rint(np.sqrt(target_area * aspect)).astype(np.int64))
    h = torch.from_numpy(np.rint(np.sqrt(target_area / aspect)).astype(np.int64))
    fits = (w > 0) & (w <= in_w) & (h > 0) & (h <= in_h)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (in_h - h + 1).clamp(min=1)).to(torch.int64)
    left = torch.floor(u[:, 1] * (in_w - w + 1).clamp(min=1)).to(torch.int64)

    in_ratio = in_w / in_h
    if in_ratio < min(ratio):
        cw, ch = in_w, int(round(in_w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = in_h, int(round(in_h * max(ratio)))
    else:
        cw, ch = in_w, in_h
    none_fits = ~fits.any(dim=1)
    h = torch.where(none_fits, ch, h)
    w = torch.where(none_fits, cw, w)
    top = torch.where(none_fits, (in_h - ch) // 2, top)
    left = torch.where(none_fits, (in_w - cw) // 2, left)
    return top, left, h, w


def sample_params(
    n: int,
    in_size: SizeLike,
    *,
    hflip: float = 0.5,
    vflip: float = 0.0,
    crop_scale: tuple[float, float] | None = None,
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    degrees: float | tuple[float, float] = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Draws the random parameters of ``n`` samples from ``generator`` (CPU).

    ``hflip``/``vflip`` are flip probabilities; ``crop_scale`` the range of the crop's area as a fraction
    of the image (None: no crop) and ``crop_ratio`` its aspect-ratio range (sampled log-uniformly, as
    ``RandomResizedCrop``); ``degrees`` the rotation range (a float d means (-d, d)); ``scale`` the zoom
    range (uniform).
    """
    in_h, in_w = _size(in_size, "in_size")
    if n <= 0:
        raise ValueError(f"the batch must not be empty, got n={n}")
    for p, name in ((hflip, "hflip"), (vflip, "vflip")):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability and must be in [0, 1], got {p}")
    if isinstance(degrees, int | float):
        if degrees < 0:
            raise ValueError(f"degrees must be non-negative when a single number, got {degrees}")
        degrees = (-float(degrees), float(degrees))
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ValueError(f"scale must be a range (lo, hi) with 0 < lo <= hi, got {scale!r}")
    do_hflip = torch.rand(n, generator=generator) < hflip
    do_vflip = torch.rand(n, generator=generator) < vflip
    if crop_scale is None:
        zeros = torch.zeros(n, dtype=torch.int64)
        top, left, h, w = zeros, zeros.clone(), torch.full((n,), in_h), torch.full((n,), in_w)
    else:
        if not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {crop_scale!r}")
        if not (len(crop_ratio) == 2 and 0 < crop_ratio[0] <= crop_ratio[1]):
            raise ValueError(f"crop_ratio must be (lo, hi) with 0 < lo <= hi, got {crop_ratio!r}")
        top, left, h, w = _sample_crops(n, (in_h, in_w), crop_scale, crop_ratio, generator)
    angle = _uniform(n, degrees, generator)
    zoom = _uniform(n, scale, generator)
    return AugmentParams(do_hflip, do_vflip, top, left, h, w, angle, zoom)


class RandomAffineAugment(nn.Module):
    """Random flips, resized crop, rotation and zoom plus normalisation, one fused kernel per batch.

    In training mode each call draws new per-sample parameters from the module's generator (seeded by
    ``seed``, so runs are reproducible) and warps the batch. In eval mode the geometry is the identity:
    the batch is only resized to ``out_size`` (when it differs) and normalised, so train and eval see the
    same value range.

    ``mean``/``std`` are in [0, 1] image units; a uint8 batch is read as ``x / 255`` (folded into the
    normalisation, no extra pass). Output is float32 (float64 for float64 input), ``[N, C, *out_size]``.
    See :func:`sample_params` for the meaning of the random ranges.
    """

    def __init__(
        self,
        out_size: SizeLike | None = None,
        *,
        hflip: float = 0.5,
        vflip: float = 0.0,
        crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        degrees: float | tuple[float, float] = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.out_size = _size(out_size, "out_size") if out_size is not None else None
        self.options = dict(
            hflip=hflip,
            vflip=vflip,
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            degrees=degrees,
            scale=scale,
        )
        sample_params(1, 8, **self.options)  # validate the ranges now, not on the first batch
        self.mean = mean
        self.std = std
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def _normalisation(self, input: Tensor) -> tuple[Tensor, Tensor]:
        channels = input.shape[-3]
        mean = _channel_values(self.mean, channels, 0.0, "mean").to(torch.float64)
        std = _channel_values(self.std, channels, 1.0, "std").to(torch.float64)
        if input.dtype == torch.uint8:
            mean, std = mean * 255.0, std * 255.0
        return mean, std

    def forward(self, input: Tensor) -> Tensor:
        batched = input.dim() == 4
        x = input if batched else input.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(
                f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(input.shape)}"
            )
        in_size = (x.shape[-2], x.shape[-1])
        out_size = self.out_size or in_size
        if self.training:
            params = sample_params(x.shape[0], in_size, generator=self.generator, **self.options)
            theta = params.theta(in_size, out_size)
        else:
            theta = _eye(x.shape[0])[:, :2]
        mean, std = self._normalisation(x)
        with torch.no_grad():
            out = augment_affine(x, theta.to(x.device), mean, std, out_size)
        return out if batched else out.squeeze(0)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"out_size={self.out_size}, {opts}, mean={self.mean!r}, std={self.std!r}"
