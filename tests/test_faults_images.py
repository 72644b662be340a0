"""Every image mode decodes to the right 8-bit RGB, or is refused naming the file and mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transferlab.data.images import decode_rgb
from transferlab.errors import BadImageError

RAMP16 = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
EXPECTED8 = np.round(RAMP16 / 257.0)


def _gray_of(path) -> np.ndarray:
    rgb = np.asarray(decode_rgb(str(path)))
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0].astype(np.float64)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    assert np.abs(_gray_of(path) - EXPECTED8).max() <= 1


def test_32_bit_integer_tiff_holding_16_bit_values(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(RAMP16.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert np.abs(_gray_of(path) - EXPECTED8).max() <= 1


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_tiff_is_scaled_from_its_range(tmp_path, scale):
    unit = np.linspace(0, 1, 64 * 64).reshape(64, 64).astype(np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(unit * np.float32(scale)).save(path)
    assert Image.open(path).mode == "F"
    gray = _gray_of(path)
    assert np.abs(gray - unit * 255).max() <= 1 and gray.max() == 255


def test_float_tiff_of_another_range_is_stretched(tmp_path):
    values = np.linspace(-3, 5, 64 * 64).reshape(64, 64).astype(np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    gray = _gray_of(path)
    assert gray.min() == 0 and gray.max() == 255


def test_float_tiff_with_nan_is_refused_naming_file_and_mode(tmp_path):
    values = np.ones((64, 64), np.float32)
    values[3, 3] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(BadImageError, match=r"nan\.tif.*mode F"):
        decode_rgb(str(path))


def test_16_bit_image_through_the_dataset_matches_its_8_bit_twin(tmp_path):
    from transferlab.data.images import ImageListDataset
    from transferlab.sources.preprocessing import Preprocessing

    Image.fromarray(RAMP16).save(tmp_path / "g16.png")
    Image.fromarray(EXPECTED8.astype(np.uint8)).save(tmp_path / "g8.png")
    pre = Preprocessing(input_size=32)
    dataset = ImageListDataset([str(tmp_path / "g16.png"), str(tmp_path / "g8.png")], None, pre, [0, 1])
    (a, _, ra), (b, _, rb) = dataset[0], dataset[1]
    assert ra == rb == ""
    assert (a.int() - b.int()).abs().max() <= 1
