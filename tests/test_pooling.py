"""Pooling layers on small maps worked out by hand."""

from __future__ import annotations

import pytest
import torch

from transferlab.errors import TransferlabError
from transferlab.features.pooling import pool, pooled_shape, rmac_regions, window_cells


def fmap() -> torch.Tensor:
    # one image, 2 channels, 4x4; channel 1 is channel 0 negated
    c0 = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    return torch.stack([c0, -c0]).unsqueeze(0)


def test_avg_max_gem():
    x = fmap()
    assert pool(x, "avg").tolist() == [[7.5, -7.5]]
    assert pool(x, "max").tolist() == [[15.0, 0.0]]
    # GeM p=3 clamps at eps: channel 0 -> (sum k^3 / 16)^(1/3) = (14400/16)^(1/3)
    gem = pool(x, "gem")
    assert gem[0, 0].item() == pytest.approx((14400 / 16) ** (1 / 3), rel=1e-5)
    assert gem[0, 1].item() == pytest.approx(1e-6, rel=1e-3)


def test_grid2_is_cells_in_row_major_order_channels_inside():
    x = fmap()
    # cells of channel 0: top-left max 5, top-right 7, bottom-left 13, bottom-right 15
    # channel 1 (negated): top-left max -0 = 0, top-right -2, bottom-left -8, bottom-right -10
    assert pool(x, "grid2").tolist() == [[5, 0, 7, -2, 13, -8, 15, -10]]
    assert pool(x, "grid1").tolist() == pool(x, "max").tolist()


def test_rmac_regions_square_map():
    # 3x3 map: level 1 is one 3x3 region, level 2 side floor(2*3/3)=2 (2x2 of them),
    # level 3 side floor(6/4)=1 (3x3 of them); plus the whole map first.
    regions = rmac_regions(3, 3, 3)
    assert regions[0] == (0, 0, 3, 3)
    assert len(regions) == 1 + 1 + 4 + 9
    assert (0, 0, 2, 2) in regions and (1, 1, 2, 2) in regions


def test_rmac_is_sum_of_normalised_region_maxima():
    x = torch.rand(1, 3, 3, 3)
    expected = torch.zeros(3)
    for y, c, h, w in rmac_regions(3, 3, 3):
        v = x[0, :, y:y + h, c:c + w].amax(dim=(1, 2))
        expected += v / (v.norm() + 1e-6)
    assert torch.allclose(pool(x, "rmac")[0], expected, atol=1e-6)


def test_windows_pool_shape_and_whole_image_first():
    x = torch.rand(2, 5, 7, 7)
    windows = [(0, 0, 1, 1), (0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)]
    out = pool(x, "windows", windows)
    assert out.shape == (2, 3, 5)
    assert torch.equal(out[:, 0], x.amax(dim=(2, 3)))
    assert window_cells(7, 7, windows)[1] == (0, 0, 4, 4)  # ceil(3.5) = 4 cells


def test_vector_layers_and_names():
    v = torch.rand(2, 6)
    assert torch.equal(pool(v, "avg"), v)
    with pytest.raises(TransferlabError, match="needs a spatial layer"):
        pool(v, "grid2")
    with pytest.raises(TransferlabError, match="unknown pooling"):
        pool(fmap(), "median")
    assert pooled_shape(10, True, "grid3") == (90,)
