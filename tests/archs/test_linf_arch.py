"""LINFNet: checkpoint format, golden vectors of the release, flow invariants, chunking, cached inverses."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import REPO_ROOT, load_golden, rel_err

from flowprior_plugin.archs.linf_arch import (
    LINF_OFFICIAL_CONFIGS,
    LINFCondition,
    LINFNet,
    convert_linf_checkpoint,
    from_model_range,
    official_linf_options,
    to_model_range,
)
from flowprior_plugin.checkpoints import describe_checkpoint_mismatch, load_checked
from flowprior_plugin.errors import CheckpointMismatchError
from flowprior_plugin.layers.pointwise_flow import InvertibleLinear, PointwiseFlow
from flowprior_plugin.models.base_flow_model import BaseFlowModel

KEY_FILES = {
    'edsr-baseline-linf': 'linf_linf_edsr_baseline_keys.txt',
    'rrdb-linf': 'linf_linf_rrdb_keys.txt',
    'edsr-baseline-linf-patch': 'linf_linf_patch_edsr_baseline_keys.txt',
    'rrdb-linf-patch': 'linf_linf_patch_rrdb_keys.txt',
}
GOLDEN = {'edsr_baseline': 'linf_patch_edsr_baseline_seed0.pt', 'rrdb': 'linf_patch_rrdb_seed0.pt'}
TINY = dict(hidden_dim=16, flow_layers=3, mlp_layers=2)
TINY_ENCODER = {'edsr_baseline': dict(nf=8, num_blocks=1), 'rrdb': dict(nf=8, nb=1, gc=4)}


def tiny_net(patch_size: int = 3, encoder: str = 'edsr_baseline', dtype=torch.float32, seed: int = 0, **kw) -> LINFNet:
    """A small LINF whose every parameter is perturbed (so no map is the identity)."""
    torch.manual_seed(seed)
    net = LINFNet(encoder=encoder, patch_size=patch_size, encoder_opt=TINY_ENCODER[encoder], **{**TINY, **kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.to(dtype).eval()


def images(h: int, w: int, hr: tuple[int, int], batch: int = 2, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=g, dtype=dtype), torch.rand(batch, 3, *hr, generator=g, dtype=dtype)


def meta_net(config: str) -> LINFNet:
    """Official architecture without allocating its parameters."""
    with torch.device('meta'):
        return LINFNet(**official_linf_options(config))


def meta_state_dict(reference_dir, golden_weights, config: str) -> dict[str, torch.Tensor]:
    pairs = golden_weights.read_keys(reference_dir / KEY_FILES[config])
    return {key: torch.empty(shape, device='meta') for key, shape in pairs}


class _BasicSRLoader(BaseFlowModel):
    """Just enough of our BasicSR model to call its ``load_network`` (BasicSR's loader with the
    checkpoint check of :mod:`flowprior_plugin.checkpoints`)."""

    def __init__(self) -> None:
        self.opt = {'dist': False, 'num_gpu': 0}


# ---------------------------------------------------------------- checkpoint format


@pytest.mark.parametrize('config', list(KEY_FILES))
def test_state_dict_matches_official_key_list(reference_dir, golden_weights, config):
    expected = golden_weights.read_keys(reference_dir / KEY_FILES[config])
    total = int(re.search(r'# params (\d+)', (reference_dir / KEY_FILES[config]).read_text()).group(1))
    net = meta_net(config)
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert ours == expected  # same keys, same shapes, same order
    assert sum(math.prod(shape) for _, shape in ours) == total
    assert sum(p.numel() for p in net.parameters()) == total


def test_registered_and_built_from_options():
    assert ARCH_REGISTRY.get('LINFNet') is LINFNet
    net = build_network({'type': 'LINFNet', 'encoder': 'rrdb', 'patch_size': 3, 'encoder_opt': {'nb': 1}, **TINY})
    assert isinstance(net, LINFNet) and net.latent_channels() == [27] and len(net.encoder.RRDB_trunk) == 1
    assert LINFNet(encoder_opt={'num_blocks': 1}, **TINY).latent_channels() == [3]
    assert set(LINF_OFFICIAL_CONFIGS) == set(KEY_FILES)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown encoder 'edsr'; known: edsr_baseline, rrdb"):
        LINFNet(encoder='edsr')
    with pytest.raises(ValueError, match='patch_size must be a positive integer'):
        LINFNet(patch_size=0)
    with pytest.raises(ValueError, match='query_chunk'):
        LINFNet(query_chunk=0)
    with pytest.raises(ValueError, match='encoder_opt of the rrdb encoder has no num_blocks; its options: nf, nb, gc'):
        LINFNet(encoder='rrdb', encoder_opt={'num_blocks': 2})


# ---------------------------------------------------------------- golden vectors of the release


@pytest.mark.parametrize('encoder', list(GOLDEN))
def test_golden_vectors_of_the_release(reference_dir, golden_weights, encoder):
    golden = load_golden(reference_dir, GOLDEN[encoder])
    config = f'{encoder.replace("_", "-")}-linf-patch'
    state = golden_weights.golden_state_dict(reference_dir / KEY_FILES[config], dtype=torch.float64)
    # Convert to float64 BEFORE loading: float64 weights copied into float32 parameters are rounded.
    net = LINFNet(**official_linf_options(config)).double().eval()
    load_checked(net, {'model': {'name': 'linf-patch', 'args': {}, 'sd': state}}, strict=True)
    assert golden['scale'] == 4 and golden['patch_size'] == net.patch_size == 3
    hr_size = tuple(golden['hr'].shape[-2:])  # (40, 56): padded to (42, 57), 14 x 19 patches
    with torch.no_grad():
        cond = net.condition(golden['lr'], normalized=True)
        coord, cell = net.query_grid(hr_size, dtype=torch.float64)
        # The release pads 3 - (H mod 3): 40 -> 42 and 56 -> 57 rows/columns, a 14 x 19 patch grid.
        assert net.padding(hr_size) == (2, 1) and coord.shape == golden['coord'].shape
        assert torch.equal(coord, golden['coord']) and torch.equal(cell, golden['cell'])
        x = net.residual_patches(cond, golden['hr'], normalized=True)
        assert rel_err(x, golden['gt_patch']) < 1e-12

        params = net.flow_params(cond, golden['coord'], golden['cell'])
        log_p, z = net.log_prob_patches(golden['gt_patch'], params)
        folded = net.fold(net.decode_patches(golden['decode_z'], params))
        residual = net.decode_residual(cond, golden['decode_z'], hr_size)
        sr = net.decode(from_model_range(golden['lr']), [golden['decode_z']], out_size=hr_size)

    # float64 weights in a float64 net match the release to rounding (the brief asks for 1e-6).
    assert log_p.flatten().shape == golden['log_p'].shape and rel_err(log_p.flatten(), golden['log_p']) < 1e-9
    assert z.shape == golden['z'].shape and rel_err(z, golden['z']) < 1e-9
    assert folded.shape == golden['decode_residual_folded'].shape
    assert rel_err(folded, golden['decode_residual_folded']) < 1e-9
    # The public decode crops the fold to the requested size and adds the bilinear base.
    assert torch.equal(residual, folded[..., :40, :56])
    base = net.upsampled_lr(cond, hr_size)
    assert torch.allclose(to_model_range(sr), folded[..., :40, :56] + base, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- geometry


def test_query_grid_and_padding():
    net = LINFNet(patch_size=3, encoder_opt={'num_blocks': 0}, **TINY)
    # Padded only as whole patches need (LINF-LP's data; LINF's own test data add a whole row).
    assert net.padding((42, 57)) == (0, 0) and net.query_shape((42, 57)) == (14, 19)
    assert net.padding((40, 56)) == (2, 1) and net.query_shape((40, 56)) == (14, 19)
    coord, cell = net.query_grid((42, 57), batch=2, dtype=torch.float64)
    assert coord.shape == (2, 14, 19, 2) and cell.shape == (2, 2)
    assert torch.allclose(coord[0, 0, 0], torch.tensor([-1 + 3 / 42, -1 + 3 / 57], dtype=torch.float64))
    assert torch.allclose(coord[0, -1, -1], torch.tensor([-1 + 81 / 42, -1 + 111 / 57], dtype=torch.float64))
    assert torch.allclose(cell[0], torch.tensor([2 / 42, 2 / 57], dtype=torch.float64))
    coord, _ = net.query_grid((40, 56), batch=2, dtype=torch.float64)
    # The last patch row is centred on padding row 40: (0, 0) as released; the last column's
    # centre (column 55) is a real pixel.
    assert torch.equal(coord[:, -1], torch.zeros(2, 19, 2, dtype=torch.float64))
    assert torch.allclose(coord[0, 0, -1], torch.tensor([-1 + 3 / 40, -1 + 111 / 56], dtype=torch.float64))

    pixel = LINFNet(patch_size=1, encoder_opt={'num_blocks': 0}, **TINY)
    assert pixel.padding((42, 57)) == (0, 0) and pixel.query_shape((41, 57)) == (41, 57)
    assert pixel.latent_shape((2, 3, 10, 14)) == (2, 3, 40, 56)  # default: scale 4
    assert net.latent_shape((2, 3, 10, 14), out_size=(25, 31)) == (2, 27, 9, 11)


def test_patches_fold_in_release_order():
    net = LINFNet(patch_size=3, encoder_opt={'num_blocks': 0}, **TINY)
    image = torch.arange(3 * 7 * 8, dtype=torch.float64).view(1, 3, 7, 8)
    patches = net.to_patches(image)
    assert patches.shape == (1, 27, 3, 3)
    # Entry channel * 9 + 3 * row + column of patch (i, j) is pixel (channel, 3i + row, 3j + column).
    assert patches[0, 1 * 9 + 3 * 2 + 1, 1, 2] == image[0, 1, 5, 7]
    assert torch.equal(net.fold(patches)[..., :7, :8], image)
    assert net.fold(patches)[..., 7:, :].abs().sum() == 0 and net.fold(patches)[..., 8:].abs().sum() == 0


# ---------------------------------------------------------------- flow invariants


@pytest.mark.parametrize('patch_size', [1, 3])
@pytest.mark.parametrize('hr', [(17, 23), (18, 21)], ids=['ragged', 'multiple-of-3'])
def test_encode_decode_round_trip(patch_size, hr):
    net = tiny_net(patch_size)
    lq, gt = images(5, 7, hr)
    with torch.no_grad():
        cond = net.condition(lq)
        latents = net.encode(lq, gt, cond=cond)
        assert [tuple(z.shape) for z in latents] == [net.latent_shape(lq.shape, hr)]
        rec = net.decode(lq, latents, cond=cond, out_size=hr)
    assert rec.shape == gt.shape
    assert (rec - gt).abs().max().item() < 1e-4


def test_condition_is_reused_across_sizes_and_checked():
    net = tiny_net(3)
    lq, gt = images(5, 7, (20, 28))
    with torch.no_grad():
        cond = net.condition(lq)
        assert isinstance(cond, LINFCondition) and cond.coef.shape == (2, 16, 5, 7)
        for size in ((20, 28), (11, 13)):  # any output size from one conditioning
            z = net.encode(lq, torch.nn.functional.interpolate(gt, size=size), cond=cond)
            assert torch.equal(net.decode(lq, z, cond=cond, out_size=size), net.decode(lq, z, out_size=size))
        with pytest.raises(ValueError, match='conditioning was computed for an LR of shape'):
            net.decode(lq[:1], [z[0][:1]], cond=cond, out_size=(11, 13))
        with pytest.raises(ValueError, match=r'expects latents \[\(2, 27, 7, 10\)\]'):
            net.decode(lq, z, cond=cond)  # default size 20 x 28 needs a 7 x 10 grid


def test_decode_is_differentiable_in_the_latents_and_changes_nothing():
    net = tiny_net(3)
    for p in net.parameters():
        p.requires_grad_(False)  # a frozen flow, as in the learned prior's training
    lq, gt = images(4, 5, (12, 15))
    with torch.no_grad():
        z = net.encode(lq, gt)[0]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    z = z.clone().requires_grad_(True)
    net.decode(lq, [z], out_size=(12, 15)).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_log_prob_matches_brute_force_jacobian():
    flow = PointwiseFlow(dim=3, num_layers=2).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(3, generator=g, dtype=torch.float64)
    params = torch.randn(flow.param_channels, generator=g, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: flow.encode(v, params)[0], x)
    log_p, z = flow.log_prob(x, params)
    expected = torch.linalg.slogdet(jac)[1] - 0.5 * (z.square().sum() + 3 * math.log(2 * math.pi))
    assert torch.allclose(log_p, expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(flow.decode(z, params), x, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- chunking and cached inverses


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_chunked_queries_equal_one_batch(dtype):
    net = tiny_net(3, dtype=dtype)
    lq, gt = images(5, 7, (17, 23), dtype=dtype)
    chunked = tiny_net(3, dtype=dtype, query_chunk=7)  # same weights (same seed), chunks of 7 queries
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        cond = net.condition(lq)
        log_p, z = net.log_prob(lq, gt, cond=cond)
        for other_log_p, other_z in (net.log_prob(lq, gt, cond=cond, query_chunk=5), chunked.log_prob(lq, gt)):
            # Identical but for the summation order of the matrix products (BLAS picks its kernel
            # by the number of rows), so equal to rounding.
            assert torch.allclose(other_log_p, log_p, **tol) and torch.allclose(other_z, z, **tol)
        sr = net.decode(lq, [z], cond=cond, out_size=(17, 23))
        assert torch.allclose(net.decode(lq, [z], cond=cond, out_size=(17, 23), query_chunk=11), sr, **tol)


def test_cached_inverse_equals_solving_and_is_computed_once():
    net = tiny_net(3)
    lq, gt = images(5, 7, (17, 23))
    with torch.no_grad():
        cond = net.condition(lq)
        params = net.params_for(cond, (17, 23))
        z = net.encode(lq, gt, cond=cond)[0]
        cached = net.decode_patches(z, params)
        solved = net.decode_patches(z, params, solve=True)
        assert (cached - solved).abs().max().item() < 1e-5
        first = [m._cache.inverse for m in net.modules() if isinstance(m, InvertibleLinear)]
        net.decode_patches(z, params)
        again = [m._cache.inverse for m in net.modules() if isinstance(m, InvertibleLinear)]
    assert len(first) == 4 and all(a is b for a, b in zip(first, again))  # not recomputed


def test_cached_inverse_follows_weight_changes():
    net = tiny_net(3)
    lq, gt = images(5, 7, (17, 23))
    linear = net.imnet.linears[1]
    with torch.no_grad():
        cond = net.condition(lq)
        params = net.params_for(cond, (17, 23))
        z = net.encode(lq, gt, cond=cond)[0]
        before = net.decode_patches(z, params)

        linear.weight.add_(0.05 * torch.randn(linear.weight.shape))  # in place, as an optimiser step
        changed = net.decode_patches(z, params)
        assert (changed - before).abs().max() > 1e-3
        assert (changed - net.decode_patches(z, params, solve=True)).abs().max().item() < 1e-5
        assert torch.allclose(linear.inverse_matrix(), torch.linalg.inv(linear.weight), atol=1e-6)

        net.load_state_dict(tiny_net(3, seed=3).state_dict())  # load_state_dict copies in place
        assert torch.allclose(linear.inverse_matrix(), torch.linalg.inv(linear.weight), atol=1e-6)
        net.double()  # new storage and dtype
        assert linear.inverse_matrix().dtype == torch.float64
        assert torch.allclose(linear.inverse_matrix(), torch.linalg.inv(linear.weight), atol=1e-12)
        net.clear_inverse_cache()
        assert linear._cache is None


def test_gradients_reach_the_linear_maps_when_training_the_flow():
    net = tiny_net(3).train()
    lq, gt = images(4, 5, (12, 15))
    log_p, z = net.log_prob(lq, gt)
    (-log_p.mean()).backward()  # LINF's stage-1 loss
    assert all(p.grad is not None for n, p in net.named_parameters() if n.startswith(('imnet.', 'layers.', 'coef.')))
    linear = net.imnet.last
    w = linear.weight.detach().clone().requires_grad_(True)
    linear._weight = torch.nn.Parameter(w)
    y = torch.randn(6, 27)
    linear.reverse(y).sum().backward()  # the inverse is taken afresh so its gradient is exact
    assert linear.weight.grad is not None and linear._cache is None


# ---------------------------------------------------------------- released checkpoints


@pytest.fixture
def released_tiny(tmp_path) -> tuple[LINFNet, Path]:
    """A tiny patch model saved in exactly the released file layout."""
    source = tiny_net(3, encoder='rrdb')
    path = tmp_path / 'tiny-linf.pth'
    header = {'name': 'linf-patch', 'args': {'patch_size': 3}, 'sd': source.state_dict()}
    torch.save({'model': header, 'optimizer': {'state': {}}, 'epoch': 1}, path)
    return source, path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_released_format_loads_in_every_form(released_tiny):
    source, path = released_tiny
    whole = torch.load(path, weights_only=True)
    forms = [
        whole,
        whole['model'],
        {'name': 'linf-patch', 'sd': {f'module.{k}': v for k, v in source.state_dict().items()}},
    ]
    for form in forms:
        net = LINFNet(encoder='rrdb', patch_size=3, encoder_opt=TINY_ENCODER['rrdb'], **TINY)
        load_checked(net, form)
        assert _same_weights(net, source)
    assert list(convert_linf_checkpoint(whole)) == list(source.state_dict())
    with pytest.raises(CheckpointMismatchError, match='not a LINF checkpoint'):
        convert_linf_checkpoint({'foo.weight': torch.zeros(1)})

    net = build_network(
        {'type': 'LINFNet', 'encoder': 'rrdb', 'patch_size': 3, 'encoder_opt': TINY_ENCODER['rrdb'], **TINY}
    )
    _BasicSRLoader().load_network(net, str(path), strict=True, param_key='model')
    assert _same_weights(net, source)


def test_convert_script_then_default_param_key(released_tiny, tmp_path, capsys):
    source, path = released_tiny
    spec = importlib.util.spec_from_file_location('convert_linf', REPO_ROOT / 'integrations' / 'convert_linf.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / 'out' / 'converted.pth'
    assert script.main([str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'type: LINFNet' in printed and 'encoder: rrdb' in printed and 'patch_size: 3' in printed
    assert 'encoder_opt: {nf: 8, nb: 1}' in printed and 'hidden_dim: 16' in printed
    assert set(torch.load(out, weights_only=True)) == {'params'}
    net = LINFNet(encoder='rrdb', patch_size=3, encoder_opt=TINY_ENCODER['rrdb'], **TINY)
    _BasicSRLoader().load_network(net, str(out), strict=True)  # BasicSR's default param_key
    assert _same_weights(net, source)
    assert script.main([str(tmp_path / 'missing.pth'), str(out)]) == 1


def test_mismatch_message_names_both_architectures(reference_dir, golden_weights):
    pixel_edsr = meta_net('edsr-baseline-linf')
    theirs = meta_state_dict(reference_dir, golden_weights, 'rrdb-linf-patch')
    message = describe_checkpoint_mismatch(pixel_edsr, theirs)
    assert message == (
        'checkpoint holds LINF 3x3-patch model (linf-patch) with an RRDB encoder (23 blocks, 64 features), '
        'hidden_dim 256, 10 flow layers, 3 MLP layers but the options build LINF per-pixel model (linf) with an '
        'EDSR-baseline encoder (16 blocks, 64 features), hidden_dim 256, 10 flow layers, 3 MLP layers; they '
        'differ in encoder, encoder_blocks, patch_size. To load it, set encoder: rrdb, patch_size: 3 in the '
        'network options'
    )
    with pytest.raises(CheckpointMismatchError, match='checkpoint holds LINF 3x3-patch model'):
        load_checked(pixel_edsr, {'model': {'name': 'linf-patch', 'sd': theirs}})
    for config in KEY_FILES:  # every released file fits its own options
        assert (
            describe_checkpoint_mismatch(meta_net(config), meta_state_dict(reference_dir, golden_weights, config))
            is None
        )
    wrapped = {'params': theirs}
    with pytest.raises(CheckpointMismatchError, match=r"BasicSR checkpoint: pass state_dict\['params'\]"):
        load_checked(pixel_edsr, wrapped)
    # A deliberate partial load goes to torch unchanged.
    net = tiny_net(1)
    partial = {k: v for k, v in net.state_dict().items() if k.startswith('imnet.')}
    assert not load_checked(tiny_net(1, seed=2), partial, strict=False).unexpected_keys
