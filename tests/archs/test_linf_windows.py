"""LINF on HR windows (``HRWindow``): a window of an HR image is decoded, encoded and scored exactly
as the same pixels of the whole image would be, which is what window-based training relies on."""

from __future__ import annotations

import pytest
import torch
from basicsr.archs import build_network
from conftest import TINY_HCFLOW, TINY_LINF, TINY_SRFLOW

from flowprior_plugin.flow_protocol import HRWindow, output_hw


def _linf(patch_size: int = 3):
    torch.manual_seed(0)
    net = build_network(dict(TINY_LINF, patch_size=patch_size)).double()
    return net.eval()


def _image(h: int, w: int, lr: tuple[int, int], seed: int):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    lq = torch.nn.functional.interpolate(gt, size=lr, mode='area')
    return lq, gt


def _window(full: tuple[int, int], top: int, left: int, size: tuple[int, int]) -> HRWindow:
    return HRWindow(size, torch.tensor([full]), torch.tensor([[top, left]]))


# The window starts on the patch grid of its image (offsets multiples of 3), so its patches are
# patches of the whole image: patch row i of the window is patch row top / 3 + i of the image.
FULL, TOP, LEFT, SIZE = (24, 21), 6, 3, (12, 9)


def _slices(p: int) -> tuple[slice, slice]:
    rows, cols = SIZE[0] // p, SIZE[1] // p
    return slice(TOP // p, TOP // p + rows), slice(LEFT // p, LEFT // p + cols)


@pytest.mark.parametrize('patch_size', [1, 3])
def test_window_decode_equals_the_same_pixels_of_the_whole_decode(patch_size):
    net = _linf(patch_size)
    lq, _ = _image(*FULL, lr=(6, 7), seed=0)
    window = _window(FULL, TOP, LEFT, SIZE)
    rows, cols = _slices(patch_size)
    with torch.no_grad():
        cond = net.condition(lq)
        z_full = net.sample_latents(lq, 0.7, generator=torch.Generator().manual_seed(1), out_size=FULL)[0]
        sr_full = net.decode(lq, [z_full], cond=cond, out_size=FULL)
        z_win = net.sample_latents(lq, 0.0, out_size=window)[0]
        assert tuple(z_win.shape) == net.latent_shape(lq.shape, SIZE)
        z_win[:, :, : rows.stop - rows.start, : cols.stop - cols.start] = z_full[:, :, rows, cols]
        sr_win = net.decode(lq, [z_win], cond=cond, out_size=window)
    expected = sr_full[..., TOP : TOP + SIZE[0], LEFT : LEFT + SIZE[1]]
    assert sr_win.shape == expected.shape
    assert torch.allclose(sr_win, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize('patch_size', [1, 3])
def test_window_encode_and_initial_prior_match_the_whole_image(patch_size):
    net = _linf(patch_size)
    lq, gt = _image(*FULL, lr=(6, 7), seed=2)
    window = _window(FULL, TOP, LEFT, SIZE)
    gt_win = gt[..., TOP : TOP + SIZE[0], LEFT : LEFT + SIZE[1]]
    rows, cols = _slices(patch_size)
    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    with torch.no_grad():
        z_full = net.encode(lq, gt)[0]
        z_win = net.encode(lq, gt_win, out_size=window)[0]
        z0_full = net.initial_prior(lq, out_size=FULL)[0]
        z0_win = net.initial_prior(lq, out_size=window)[0]
    assert torch.allclose(z_win[:, :, :n_rows, :n_cols], z_full[:, :, rows, cols], atol=1e-9, rtol=0)
    assert torch.allclose(z0_win[:, :, :n_rows, :n_cols], z0_full[:, :, rows, cols], atol=1e-9, rtol=0)
    # Not the same as treating the window as a whole image of its own (other coordinates and cell).
    with torch.no_grad():
        z_alone = net.encode(lq, gt_win)[0]
    assert not torch.allclose(z_alone[:, :, :n_rows, :n_cols], z_full[:, :, rows, cols], atol=1e-3)


def test_window_nll_is_the_log_density_of_its_patches():
    net = _linf(3)
    lq, gt = _image(*FULL, lr=(6, 7), seed=3)
    window = _window(FULL, TOP, LEFT, SIZE)
    gt_win = gt[..., TOP : TOP + SIZE[0], LEFT : LEFT + SIZE[1]]
    rows, cols = _slices(3)
    with torch.no_grad():
        log_p_full, _ = net.log_prob(lq, gt)
        bits = net.nll(lq, gt_win, out_size=window)
    # The window's patches (12 x 9 = 4 x 3 whole patches) are patches of the whole image.
    expected = -log_p_full[:, rows, cols].sum() / (torch.log(torch.tensor(2.0, dtype=torch.float64)) * 12 * 9)
    assert torch.allclose(bits, expected.reshape(1), rtol=1e-10)
    with pytest.raises(ValueError, match='does not match out_size'):
        net.nll(lq, gt, out_size=window)


def test_mixed_scales_in_one_batch_equal_each_sample_alone():
    net = _linf(3)
    lq_a, gt_a = _image(24, 24, lr=(8, 8), seed=4)  # x3
    lq_b, gt_b = _image(16, 16, lr=(8, 8), seed=5)  # x2
    size = (9, 9)
    gt_win = torch.cat([gt_a[..., 3:12, 6:15], gt_b[..., 0:9, 7:16]])
    window = HRWindow(size, torch.tensor([[24, 24], [16, 16]]), torch.tensor([[3, 6], [0, 7]]))
    lq = torch.cat([lq_a, lq_b])
    with torch.no_grad():
        batched = net.nll(lq, gt_win, out_size=window)
        z0 = net.initial_prior(lq, out_size=window)[0]
        sr = net.decode(lq, [z0], out_size=window)
        for b, (full, offset) in enumerate([((24, 24), (3, 6)), ((16, 16), (0, 7))]):
            alone = _window(full, *offset, size)
            assert torch.allclose(batched[b], net.nll(lq[b : b + 1], gt_win[b : b + 1], out_size=alone)[0], rtol=1e-12)
            z0_b = net.initial_prior(lq[b : b + 1], out_size=alone)[0]
            assert torch.allclose(z0[b : b + 1], z0_b, atol=1e-12, rtol=0)
            assert torch.allclose(sr[b : b + 1], net.decode(lq[b : b + 1], [z0_b], out_size=alone), atol=1e-12, rtol=0)


def test_a_whole_image_window_is_the_plain_size():
    net = _linf(3)
    lq, gt = _image(18, 15, lr=(6, 5), seed=6)
    whole = _window((18, 15), 0, 0, (18, 15))
    assert whole.is_whole() and output_hw(whole) == (18, 15)
    with torch.no_grad():
        assert torch.equal(net.nll(lq, gt, out_size=whole), net.nll(lq, gt))
        assert torch.equal(net.encode(lq, gt, out_size=whole)[0], net.encode(lq, gt)[0])


def test_window_errors_name_the_problem():
    with pytest.raises(ValueError, match='does not fit'):
        HRWindow((10, 10), torch.tensor([[12, 12]]), torch.tensor([[4, 0]]))
    with pytest.raises(ValueError, match=r'shape \(B, 2\)'):
        HRWindow((10, 10), torch.tensor([12, 12]), torch.tensor([[0, 0]]))
    net = _linf(3)
    lq, _ = _image(24, 21, lr=(6, 7), seed=0)
    two = HRWindow((9, 9), torch.tensor([[24, 21], [24, 21]]), torch.tensor([[0, 0], [3, 3]]))
    with pytest.raises(ValueError, match='windows of 2 images'):
        net.sample_latents(lq, 0.0, out_size=two)


@pytest.mark.parametrize('options', [TINY_SRFLOW, TINY_HCFLOW], ids=['SRFlow', 'HCFlow'])
def test_fixed_scale_flows_take_whole_images_only(options):
    torch.manual_seed(0)
    net = build_network(dict(options)).eval()
    lq = torch.rand(1, 3, 4, 4)
    gt = torch.rand(1, 3, 16, 16)
    whole = _window((16, 16), 0, 0, (16, 16))
    with torch.no_grad():
        assert torch.equal(net.nll(lq, gt, out_size=whole), net.nll(lq, gt))
        part = _window((32, 32), 8, 8, (16, 16))
        with pytest.raises(ValueError, match='fixed-scale flow'):
            net.encode(lq, gt, out_size=part)
        with pytest.raises(ValueError, match='fixed-scale flow'):
            net.nll(lq, gt, out_size=part)


@pytest.mark.parametrize('dtype,float32_grid', [(torch.float64, True), (torch.float64, False), (torch.float32, True)])
def test_window_coordinates_are_the_whole_grid_sliced_bit_for_bit(dtype, float32_grid):
    from flowprior_plugin.layers.local_fourier import make_coord, window_coord

    whole = make_coord((37, 53), dtype=dtype, float32_grid=float32_grid)
    window = window_coord((37, 53), (5, 11), (15, 29), dtype=dtype, float32_grid=float32_grid)
    assert torch.equal(window, whole[5:20, 11:40])
