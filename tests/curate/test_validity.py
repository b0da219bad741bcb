"""The per-sensor validity rules on hand-made pixels, each case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scale_alibi.curate.validity import SCL_INVALID, resolve_nodata, scl_usable, valid_pixels


def test_nodata_is_the_files_tag_else_the_metadatas():
    assert resolve_nodata(-32768.0, 0.0) == -32768.0
    assert resolve_nodata(None, -32768.0) == -32768.0
    assert resolve_nodata(None, None) is None


def test_s1_zero_or_negative_in_either_polarisation_is_invalid_whatever_the_tag():
    vv = np.array([[0.1, 0.0, 0.2, -32768.0, 0.3, np.nan]], np.float32)
    vh = np.array([[0.02, 0.01, 0.0, 0.01, -0.001, 0.01]], np.float32)
    got = valid_pixels("s1", np.stack([vv, vh]), -32768.0)
    assert got.tolist() == [[True, False, False, False, False, False]]
    # The tag is not needed to drop the 0-filled border...
    assert valid_pixels("s1", np.stack([vv, vh]), None).tolist() == [[True, False, False, False, False, False]]


def test_s2_visual_black_in_all_three_bands_is_invalid_without_a_tag():
    rgb = np.array([[[0, 0, 5, 0]], [[0, 3, 0, 0]], [[0, 0, 0, 0]]], np.uint8)  # (3, 1, 4)
    assert valid_pixels("s2", rgb, None).tolist() == [[False, True, True, False]]
    assert valid_pixels("s2", rgb, 0).tolist() == [[False, True, True, False]]


def test_naip_black_in_all_bands_is_invalid_and_a_tag_still_counts():
    rgb = np.array([[[0, 9, 255]], [[0, 0, 255]], [[0, 0, 255]]], np.uint8)
    assert valid_pixels("naip", rgb, None).tolist() == [[False, True, True]]
    assert valid_pixels("naip", rgb, 255).tolist() == [[False, True, False]]


def test_scl_no_data_and_defective_join_the_cloud_classes():
    scl = np.arange(12, dtype=np.uint8)
    usable = scl_usable(scl)
    assert [int(c) for c in scl[~usable]] == [0, 1, 3, 8, 9, 10] == list(SCL_INVALID)
    assert [int(c) for c in scl[usable]] == [2, 4, 5, 6, 7, 11]  # dark, vegetation, bare, water, unclassified, snow
    every_byte = np.arange(256, dtype=np.uint8).reshape(16, 16)  # a 2-D scene, every value a byte can hold
    assert np.flatnonzero(~scl_usable(every_byte)).tolist() == list(SCL_INVALID)
    assert np.flatnonzero(~scl_usable(every_byte.astype(np.int16))).tolist() == list(SCL_INVALID)


def test_an_unknown_layer_has_no_rule():
    with pytest.raises(ValueError):
        valid_pixels("landsat", np.zeros((1, 1, 1), np.uint8), None)
