"""Affine warps against PyTorch's own ``affine_grid`` + ``grid_sample``, one map at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perturbsets.geometry import affine_sampling_grid, affine_warp


def _random_theta(*shape: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=dtype)
    return identity + 0.3 * torch.randn(*shape, 2, 3, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_affine_sampling_grid_equals_affine_grid(dtype, atol):
    theta = _random_theta(9, dtype=dtype)
    for h, w in [(42, 42), (30, 50), (1, 7)]:
        expected = F.affine_grid(theta, [9, 1, h, w], align_corners=False)
        torch.testing.assert_close(affine_sampling_grid(theta, h, w), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("maps,channels", [(1, 1), (3, 1), (2, 3)])
def test_affine_warp_equals_one_map_at_a_time(padding_mode, maps, channels):
    images = torch.rand(4, channels, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theta = _random_theta(4, maps, dtype=torch.float64)
    expected = torch.cat(
        [
            F.grid_sample(images, F.affine_grid(theta[:, t], [4, channels, 9, 11], align_corners=False), padding_mode=padding_mode, align_corners=False)
            for t in range(maps)
        ],
        dim=1,
    )
    out = affine_warp(images, theta, padding_mode=padding_mode)
    assert out.shape == (4, maps * channels, 9, 11)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_affine_warp_gradcheck():
    images = torch.rand(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    theta = _random_theta(2, 2, dtype=torch.float64).requires_grad_(True)
    torch.autograd.gradcheck(lambda i, t: affine_warp(i, t, padding_mode="border"), (images, theta))
