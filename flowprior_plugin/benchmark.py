"""CPU benchmark of the flows' cached conditioning: ``python -m flowprior_plugin.benchmark``.

Runs the official DF2K 4X architectures of SRFlow and then HCFlow (random weights, eval mode,
no_grad) on one LR image and prints for each, side by side, wall time and peak memory of

- (a) ``decode``: one temperature-sampling decode, ``condition()`` included;
- (b) ``lp_path``: the learned-prior path, ``initial_prior`` (encode of the upsampled LR) and a
  decode of the same LR sharing one ``condition()``;
- (c) ``naive``: the same two calls without a shared condition (each recomputes it);
- ``extra_decode``: one more decode with an already computed condition;

then checks that (b)'s SR equals the plain computation (the release's way: for SRFlow every RRDB
resolution, concatenated coupling convolutions, nothing cached; for HCFlow concatenated condition
and coupling convolutions, nothing cached) within 1e-4. HCFlow's results follow SRFlow's, its
ratios on the line ``hcflow ratios: lp_path/decode=X.XX extra_decode/decode=Y.YY``; the last line
is SRFlow's ``ratios: lp_path/decode=X.XX extra_decode/decode=Y.YY``.

HCFlow caches less than SRFlow: only its coarsest level is conditioned on the LR alone; each finer
level's condition network reads the kept channels of the pass (see ``HCFlowCondition``), so it
runs again in every encode and decode, and an extra decode costs most of a first one.

LINF (the official 3x3-patch model with the EDSR-baseline encoder, x4) runs the same four cases
(the plain computation of (b): no cached flow parameters, a condition per call) and three training
steps of the learned prior (``FlowPriorModel`` as ``options/linf_prior.yml``: batch 2, 96x96 HR
windows, the LINF-LP module, perceptual loss with a random VGG19 conv5_4, latent loss weight 0):
before (no cache, the HR encoded every step for the zero-weight latent loss), without that encode,
and now (flow parameters cached: one MLP pass per step). Its peaks are the high-water mark since
the networks were built (``VmHWM`` reset through ``/proc/self/clear_refs``). The ratio lines come
last: ``hcflow ratios: ...``, ``linf ratios: lp_path/decode=X.XX extra_decode/decode=Y.YY``, then
SRFlow's ``ratios: ...``.

Memory: torch has no peak-memory API on the CPU, so each case runs in a fresh forked process that
builds the network and inputs, notes its resident set size (RSS), runs the case once and reads its
RSS high-water mark (``getrusage().ru_maxrss``). The "peak increase" is that high-water mark minus
the RSS just before the case: the memory the case itself needed at its peak, allocator caching
included. Times are the median of ``--repeats`` further runs in the same process.

``--memory`` runs instead the learned-prior path (with the SRFlow-LP prior's architecture) whole
against tiled at LR 64, 128, 256 and 512 (``--sizes``, ``--tile``, ``--overlap``), one run per
case in a fresh process; whole images predicted to need more than 75% of the machine's memory are
skipped with a line saying so. Its last line is ``memory: tiled_peak_512/tiled_peak_64=X.XX
whole_peak_256/whole_peak_64=Y.YY tiled_time_per_pixel_512/whole_time_per_pixel_256=Z.ZZ
seam_max_abs=W.WWWW`` (see docs/tiling.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import torch
from basicsr.utils import get_root_logger
from torch import Tensor, nn

from flowprior_plugin.archs.hcflow_arch import HCFlowNet, official_hcflow_options
from flowprior_plugin.archs.latent_prior_arch import LatentPriorNet
from flowprior_plugin.archs.linf_arch import LINFNet, official_linf_options
from flowprior_plugin.archs.srflow_arch import SRFlowNet, official_srflow_options
from flowprior_plugin.layers.flow_layers import standardize_per_pixel
from flowprior_plugin.layers.pointwise_flow import InvertibleLinear
from flowprior_plugin.layers.random_init import randomize_parameters_
from flowprior_plugin.models.flow_prior_model import FlowPriorModel
from flowprior_plugin.tiling import DEFAULT_OVERLAP, TileInputs, TileOptions, predict_tiled, predict_whole

CASES = ('decode', 'lp_path', 'naive', 'extra_decode')
CASE_LABELS = {
    'decode': '(a) condition + sample decode',
    'lp_path': '(b) condition + initial_prior + decode (shared cond)',
    'naive': '(c) initial_prior + decode (cond recomputed per call)',
    'extra_decode': 'one extra decode with a cached condition',
}
MODELS = ('srflow', 'hcflow')
TINY_OPTIONS = dict(scale=4, nf=16, nb=2, gc=8, K=2, hidden_channels=16, stacked_blocks=(0, 1))
HCFLOW_TINY_OPTIONS = dict(scale=4, nf=16, nb=1, gc=8, K=4, n_additional_steps=2, hidden_channels=16)
TEMPERATURE = 0.9
PLAIN_TOLERANCE = 1e-4


def build_net(tiny: bool, seed: int = 0, model: str = 'srflow') -> SRFlowNet | HCFlowNet:
    """The benchmarked network: official DF2K 4X of ``model`` ('srflow' or 'hcflow'; or the tiny
    one), random weights, eval mode."""
    torch.manual_seed(seed)
    if model == 'srflow':
        net = SRFlowNet(**(TINY_OPTIONS if tiny else official_srflow_options('DF2K 4X')))
    elif model == 'hcflow':
        net = HCFlowNet(**(HCFLOW_TINY_OPTIONS if tiny else official_hcflow_options('DF2K 4X')))
    else:
        raise ValueError(f'unknown model {model!r}; known: {", ".join(MODELS)}')
    randomize_parameters_(net, torch.Generator().manual_seed(seed))
    return net.eval()


def _rss_kib() -> int:
    """Current resident set size in KiB (Linux), else the high-water mark."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    except (OSError, ValueError):
        return _maxrss_kib()


def _maxrss_kib() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == 'darwin' else value  # bytes on macOS, KiB on Linux


def run_case(
    case: str, lr_size: int, threads: int, repeats: int, tiny: bool, seed: int = 0, model: str = 'srflow'
) -> dict:
    """Run one case of ``model`` in this process; returns times (s), memory (KiB) and, for lp_path,
    the check."""
    torch.set_num_threads(threads)
    net = build_net(tiny, seed, model)
    lq = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(seed + 1))
    gen = torch.Generator().manual_seed(seed + 2)
    result: dict = {'case': case}
    with torch.no_grad():
        if case == 'extra_decode':
            cond = net.condition(lq)
            latents = net.sample_latents(lq, TEMPERATURE, gen, cond=cond)

            def once() -> Tensor:
                return net.decode(lq, latents, cond=cond)

        elif case == 'decode':

            def once() -> Tensor:
                cond = net.condition(lq)
                return net.decode(lq, net.sample_latents(lq, TEMPERATURE, gen, cond=cond), cond=cond)

        elif case == 'lp_path':

            def once() -> Tensor:
                cond = net.condition(lq)
                return net.decode(lq, net.initial_prior(lq, cond=cond), cond=cond)

        elif case == 'naive':

            def once() -> Tensor:
                return net.decode(lq, net.initial_prior(lq))

        else:
            raise ValueError(f'unknown case {case!r}; known: {", ".join(CASES)}')

        rss_before = _rss_kib()
        sr = once()  # first run: memory high-water (and warm-up of the convolution kernels)
        result['peak_kib'] = _maxrss_kib()
        result['increase_kib'] = result['peak_kib'] - rss_before
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            once()
            times.append(time.perf_counter() - start)
        result['time_s'] = statistics.median(times)

        if case == 'lp_path':
            # The plain computation: release-style conditioning, concat convolutions, no cache.
            size = (lr_size * net.scale, lr_size * net.scale)
            up = torch.nn.functional.interpolate(lq, size=size, mode='bilinear', align_corners=False)
            z0 = [standardize_per_pixel(z) for z in net.plain_encode(lq, up)]
            plain = net.plain_decode(lq, z0)
            result['plain_max_abs_diff'] = (sr - plain).abs().max().item()
            result['sr_max_abs'] = plain.abs().max().item()
    return result


def _child(conn, target, *args) -> None:
    try:
        conn.send(target(*args))
    except BaseException as error:  # report, do not hang the parent
        conn.send({'error': f'{type(error).__name__}: {error}'})
    finally:
        conn.close()


def run_in_fresh_process(*args, target=run_case) -> dict:
    """``target(*args)`` (:func:`run_case` unless given) in a fresh process (forked where possible,
    so no re-import), for a clean memory high-water mark."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child_conn, target, *args))
    process.start()
    child_conn.close()
    try:
        result = parent_conn.recv()
    except EOFError:
        result = {'error': f'process died (exit code {process.exitcode})'}
    process.join()
    if 'error' in result:
        raise RuntimeError(f'benchmark case {args[0]!r} failed: {result["error"]}')
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m flowprior_plugin.benchmark', description=__doc__.split('\n\n')[0])
    parser.add_argument('--lr-size', type=int, default=None, help='LR side (square LR); default 64 (16 with --tiny)')
    parser.add_argument('--threads', type=int, default=min(8, os.cpu_count() or 1), help='torch CPU threads')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per case (median reported)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights, LR image and latents')
    parser.add_argument('--tiny', action='store_true', help='small architectures instead of DF2K 4X (for tests)')
    parser.add_argument(
        '--memory', action='store_true', help='time and peak RSS of the learned-prior path, whole against tiled'
    )
    parser.add_argument(
        '--sizes', type=int, nargs='+', default=list(MEMORY_SIZES), help='--memory: LR sides, ascending (3 or more)'
    )
    parser.add_argument('--tile', type=int, default=MEMORY_TILE, help='--memory: tile size in LR pixels')
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP, help='--memory: tile overlap in LR pixels')
    args = parser.parse_args(argv)
    if args.memory:
        if len(args.sizes) < 3 or sorted(set(args.sizes)) != args.sizes or any(s % 2 for s in args.sizes):
            parser.error(f'--sizes must be 3 or more even LR sides in ascending order, got {args.sizes}')
        try:
            TileOptions(args.tile, args.overlap)
        except ValueError as error:
            parser.error(str(error))
    if args.lr_size is None:
        args.lr_size = 16 if args.tiny else 64
    if args.lr_size % 2:
        parser.error(f'--lr-size must be even (SRFlow needs even LR sides), got {args.lr_size}')
    if args.repeats < 1 or args.threads < 1:
        parser.error('--repeats and --threads must be at least 1')
    return args


def _arch_line(args: argparse.Namespace, model: str) -> str:
    if model == 'srflow':
        arch = 'tiny SRFlow 4X ' + str(TINY_OPTIONS) if args.tiny else 'SRFlow, official DF2K 4X architecture'
    else:
        arch = 'tiny HCFlow 4X ' + str(HCFLOW_TINY_OPTIONS) if args.tiny else 'HCFlow, official DF2K 4X architecture'
    return f'{arch}: random weights, eval, no_grad, CPU float32, {args.threads} threads'


def _run_model(args: argparse.Namespace, model: str, prefix: str) -> tuple[bool, str]:
    """Benchmark one model and print its table and check; returns (check passed, ratios text)."""
    results = {}
    for case in CASES:
        results[case] = run_in_fresh_process(
            case, args.lr_size, args.threads, args.repeats, args.tiny, args.seed, model
        )
    ok = _print_results(results, CASE_LABELS, prefix)
    return ok, _ratios(results)


def _print_results(results: dict[str, dict], labels: dict[str, str], prefix: str, plain: str = '') -> bool:
    """Print the table of ``results`` (rows in the order of ``results``), the naive/decode line and
    the check of (b) against the plain computation (``plain`` describes it); returns whether the
    check passed."""
    width = max(len(labels[case]) for case in results)
    print(f'{"case":<{width}}  {"time [s]":>9}  {"peak RSS [MiB]":>14}  {"increase [MiB]":>14}')
    for case, r in results.items():
        print(
            f'{labels[case]:<{width}}  {r["time_s"]:>9.3f}  {r["peak_kib"] / 1024:>14.1f}  '
            f'{r["increase_kib"] / 1024:>14.1f}'
        )
    decode = results['decode']['time_s']
    print(f'{prefix}naive/decode={results["naive"]["time_s"] / decode:.2f} (what sharing the condition saves)')
    diff = results['lp_path']['plain_max_abs_diff']
    ok = math.isfinite(diff) and diff <= PLAIN_TOLERANCE
    print(
        f'{prefix}check: (b) SR vs plain computation{plain}: max abs diff {diff:.3g} (SR max abs '
        f'{results["lp_path"]["sr_max_abs"]:.3g}), tolerance {PLAIN_TOLERANCE:g}: {"OK" if ok else "FAILED"}'
    )
    return ok


def _ratios(results: dict[str, dict]) -> str:
    decode = results['decode']['time_s']
    lp_ratio = results['lp_path']['time_s'] / decode
    extra_ratio = results['extra_decode']['time_s'] / decode
    return f'lp_path/decode={lp_ratio:.2f} extra_decode/decode={extra_ratio:.2f}'


# ------------------------------------------------------------------ LINF (in the default run)
LINF_CASES = (*CASES, 'train_before', 'train_no_encode', 'train')
LINF_CASE_LABELS = {
    **CASE_LABELS,
    'train_before': 'prior training step, before: no cache, HR encoded every step',
    'train_no_encode': 'prior training step: no cache, zero-weight latent loss skipped',
    'train': 'prior training step, now: flow parameters cached',
}
LINF_CONFIG = 'edsr-baseline-linf-patch'  # the 3x3-patch model LINF-LP runs on
LINF_TINY_OPTIONS = dict(encoder_opt={'nf': 8, 'num_blocks': 1}, hidden_dim=16, flow_layers=2, mlp_layers=1)
# options/linf_prior.yml's latent module (the LINF-LP release) and a tiny one.
LINF_LP_PRIOR = dict(
    prior_features=32, lr_features=32, lr_encoder_stride=3, generator={'type': 'UNet', 'depth': 3, 'width': 64}
)
LINF_TINY_PRIOR = dict(
    prior_features=8, lr_features=8, lr_encoder_stride=3, generator={'type': 'UNet', 'depth': 2, 'width': 8}
)
LINF_TRAIN_BATCH = 2
LINF_WINDOW = 96  # LINF-LP's HR training window (24 with --tiny)
LINF_TRAIN_TOLERANCE = 1e-5


def build_linf(tiny: bool, seed: int = 0, cache: bool = True) -> nn.Module:
    """The official LINF 3x3-patch model with the EDSR-baseline encoder (or a tiny one), random
    weights (each linear map of the flow a random orthogonal matrix, small random biases), eval,
    frozen; ``cache``: its ``cache_flow_params``."""
    torch.manual_seed(seed)
    options = dict(official_linf_options(LINF_CONFIG), **(LINF_TINY_OPTIONS if tiny else {}))
    net = LINFNet(**options, scale=4, cache_flow_params=cache)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.imnet.modules():
            if isinstance(module, InvertibleLinear):
                q = torch.linalg.qr(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64))[0]
                module.weight.copy_(q)
                module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=generator))
    return net.eval().requires_grad_(False)


def _reset_peak_rss() -> None:
    """Start a new RSS high-water mark (Linux ``clear_refs``), so a case's peak is not the one of
    building its networks."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass  # elsewhere the high-water mark of the whole process is reported


def _peak_rss_kib() -> int:
    """RSS high-water mark (``VmHWM``) since :func:`_reset_peak_rss`, else ``ru_maxrss``."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    except (OSError, StopIteration, ValueError):
        return _maxrss_kib()


def _linf_prior_model(tiny: bool, seed: int, cache: bool, print_freq: int):
    """FlowPriorModel as ``options/linf_prior.yml`` sets it up (perceptual loss weight 1 with a
    random VGG19 and no download, latent loss weight 0) on :func:`build_linf`, on the CPU."""
    get_root_logger()
    logging.getLogger('basicsr').setLevel(logging.ERROR)  # no network printout, no random-VGG warning
    perceptual = {
        'type': 'VGGPerceptualLoss',
        'layer_weights': {'conv1_2' if tiny else 'conv5_4': 1.0},
        'vgg_type': 'vgg19',
        'random_weights_for_tests': True,
    }
    flow_opt = {'type': 'LINFNet', **LINF_TINY_OPTIONS} if tiny else {'type': 'LINFNet', 'query_chunk': 30000}
    flow_opt.update(official_linf_options(LINF_CONFIG), cache_flow_params=cache)
    opt = {
        'name': 'benchmark',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'num_gpu': 0,
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'network_flow': flow_opt,
        'network_g': {'type': 'LatentPriorNet', **(LINF_TINY_PRIOR if tiny else LINF_LP_PRIOR)},
        'path': {},
        'logger': {'print_freq': print_freq},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.999]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [200000], 'gamma': 0.5},
            'total_iter': 1000,
            'perceptual_opt': perceptual,
            'latent_opt': {'type': 'LatentL1Loss', 'loss_weight': 0.0},
        },
    }
    torch.manual_seed(seed)
    model = FlowPriorModel(opt)
    model.net_flow.load_state_dict(build_linf(tiny, seed, cache).state_dict())
    return model


def _linf_train_batch(lr_size: int, tiny: bool, seed: int) -> dict:
    """A batch of LINF-LP training data: LR ``lr_size`` at x4 and HR windows on the patch grid."""
    g = torch.Generator().manual_seed(seed + 1)
    hr = lr_size * 4
    window = min(24 if tiny else LINF_WINDOW, hr)
    offsets = [[3 * (k * (hr - window) // 6), 3 * ((hr - window) // 3 - k * (hr - window) // 6)] for k in range(2)]
    offsets = (offsets * LINF_TRAIN_BATCH)[:LINF_TRAIN_BATCH]
    gt = torch.stack([torch.rand(3, window, window, generator=g) for _ in offsets])
    return {
        'lq': torch.rand(LINF_TRAIN_BATCH, 3, lr_size, lr_size, generator=g),
        'gt': gt,
        'hr_size': torch.tensor([[hr, hr]] * LINF_TRAIN_BATCH),
        'window': torch.tensor(offsets),
    }


def run_linf_case(case: str, lr_size: int, threads: int, repeats: int, tiny: bool, seed: int = 0) -> dict:
    """One LINF case in this process: time (s), peak memory (KiB); for lp_path the check against
    the plain computation, for training steps the first step's loss."""
    torch.set_num_threads(threads)
    if case.startswith('train'):
        cache = case == 'train'
        # Iteration 1 with print_freq 1 logs the zero-weight latent loss (encodes the HR), with a
        # larger print_freq it is skipped; the timed steps use the same iteration number.
        model = _linf_prior_model(tiny, seed, cache, print_freq=1 if case == 'train_before' else 100)
        model.feed_data(_linf_train_batch(lr_size, tiny, seed))

        def once() -> Tensor:
            model.optimize_parameters(1)
            return model.log_dict['l_percep']

    else:
        net = build_linf(tiny, seed)
        lq = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(seed + 1))
        gen = torch.Generator().manual_seed(seed + 2)
        if case not in CASES:
            raise ValueError(f'unknown LINF case {case!r}; known: {", ".join(LINF_CASES)}')
        if case == 'extra_decode':  # a condition and its flow parameters already there (a first decode)
            kept = net.condition(lq)
            latents = net.sample_latents(lq, TEMPERATURE, gen, cond=kept)
            with torch.no_grad():
                net.decode(lq, latents, cond=kept)

        @torch.no_grad()
        def once() -> Tensor:
            if case == 'extra_decode':
                return net.decode(lq, latents, cond=kept)
            if case == 'naive':
                return net.decode(lq, net.initial_prior(lq))
            cond = net.condition(lq)
            z = (
                net.initial_prior(lq, cond=cond)
                if case == 'lp_path'
                else net.sample_latents(lq, TEMPERATURE, gen, cond)
            )
            return net.decode(lq, z, cond=cond)

    _reset_peak_rss()
    rss_before = _rss_kib()
    first = once()  # first run: memory high-water (and warm-up of the kernels)
    result: dict = {'case': case, 'peak_kib': _peak_rss_kib()}
    result['increase_kib'] = result['peak_kib'] - rss_before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    result['time_s'] = statistics.median(times)
    if case.startswith('train'):
        result['loss'] = float(first)
    elif case == 'lp_path':
        plain = build_linf(tiny, seed, cache=False)  # every call recomputes condition and MLP
        with torch.no_grad():
            expected = plain.decode(lq, plain.initial_prior(lq))
        result['plain_max_abs_diff'] = (first - expected).abs().max().item()
        result['sr_max_abs'] = expected.abs().max().item()
    return result


def _run_linf(args: argparse.Namespace) -> tuple[bool, str]:
    """Benchmark LINF (inference cases and the prior's training step) and print its table, checks
    and the training comparison; returns (checks passed, ratios text)."""
    arch = f'tiny LINF 3x3-patch {LINF_TINY_OPTIONS}' if args.tiny else 'LINF 3x3-patch, official EDSR-baseline'
    hr = args.lr_size * 4
    window = min(24 if args.tiny else LINF_WINDOW, hr)
    print(f'{arch} (hidden 256, 10 flow layers unless tiny): random weights, CPU float32, {args.threads} threads')
    print(
        f'LINF: LR {args.lr_size}x{args.lr_size} -> SR {hr}x{hr} (inference: eval, no_grad); training step: '
        f'FlowPriorModel, batch {LINF_TRAIN_BATCH}, {window}x{window} HR windows of the {hr}x{hr} HR, LINF-LP '
        f'module {LINF_TINY_PRIOR if args.tiny else LINF_LP_PRIOR}, perceptual loss (random VGG19 '
        f'{"conv1_2" if args.tiny else "conv5_4"}), latent loss weight 0; peak = RSS high-water of the case '
        '(VmHWM, reset after building)'
    )
    results = {
        case: run_in_fresh_process(
            case, args.lr_size, args.threads, args.repeats, args.tiny, args.seed, target=run_linf_case
        )
        for case in LINF_CASES
    }
    ok = _print_results(results, LINF_CASE_LABELS, 'linf ', ' (no cached flow parameters, a condition per call)')
    losses = [results[case]['loss'] for case in ('train_before', 'train_no_encode', 'train')]
    spread = max(losses) - min(losses)
    train_ok = math.isfinite(spread) and spread <= LINF_TRAIN_TOLERANCE * max(1.0, abs(losses[0]))
    print(
        f'linf check: first-step perceptual loss of the three training steps {losses[0]:.6g}, spread {spread:.3g}, '
        f'tolerance {LINF_TRAIN_TOLERANCE:g} relative: {"OK" if train_ok else "FAILED"}'
    )
    now, before, no_encode = (results[case] for case in ('train', 'train_before', 'train_no_encode'))
    print(
        f'linf training: now/before time={now["time_s"] / before["time_s"]:.2f} '
        f'now/no_encode time={now["time_s"] / no_encode["time_s"]:.2f} '
        f'now/no_encode peak={now["peak_kib"] / no_encode["peak_kib"]:.2f} '
        f'now/no_encode increase={now["increase_kib"] / max(no_encode["increase_kib"], 1):.2f}'
    )
    return ok and train_ok, _ratios(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 if a plain-computation check fails)."""
    args = _parse(argv)
    if args.memory:
        return memory_main(args)
    hr = args.lr_size * 4
    print(_arch_line(args, 'srflow'))
    print(
        f'LR {args.lr_size}x{args.lr_size} -> SR {hr}x{hr}; time = median of {args.repeats} runs after one warm-up run'
    )
    print(
        'memory = RSS high-water (ru_maxrss) of a fresh process per case during its first run; '
        '"increase" = that minus the RSS just before the run (weights and inputs already resident)'
    )
    srflow_ok, srflow_ratios = _run_model(args, 'srflow', '')
    print(_arch_line(args, 'hcflow'))
    hcflow_ok, hcflow_ratios = _run_model(args, 'hcflow', 'hcflow ')
    linf_ok, linf_ratios = _run_linf(args)
    print(f'hcflow ratios: {hcflow_ratios}')
    print(f'linf ratios: {linf_ratios}')
    # SRFlow's ratios stay the last line (scripts read it).
    print(f'ratios: {srflow_ratios}')
    return 0 if srflow_ok and hcflow_ok and linf_ok else 1


# ------------------------------------------------------------------ --memory: whole against tiled
MEMORY_SIZES = (64, 128, 256, 512)
# LR pixels per tile side of the memory benchmark: with the default overlap (8) a tile computes
# 64x64 LR pixels, the size of the smallest whole case (see docs/tiling.md for the trade-off).
MEMORY_TILE = 48
# The released SRFlow-LP prior module (UNet depth 3, width 64, no LR encoder), and a tiny one.
SRFLOW_LP_PRIOR = dict(generator={'type': 'UNet', 'depth': 3, 'width': 64}, prior_features=64, lr_encoder=False)
TINY_PRIOR_OPTIONS = dict(generator={'type': 'UNet', 'depth': 2, 'width': 8}, prior_features=8, lr_encoder=False)
# Whole-image cases predicted to need more than this share of the machine's memory are skipped.
MEMORY_SHARE = 0.75


def build_prior(flow: nn.Module, tiny: bool, seed: int = 0) -> LatentPriorNet:
    """The released SRFlow-LP prior's architecture (or a tiny one) for ``flow``, random weights, eval."""
    torch.manual_seed(seed + 3)
    prior = LatentPriorNet(latent_channels=flow.latent_channels(), **(TINY_PRIOR_OPTIONS if tiny else SRFLOW_LP_PRIOR))
    randomize_parameters_(prior, torch.Generator().manual_seed(seed + 3), strength=0.3)
    return prior.eval()


def run_memory_case(
    mode: str, lr_size: int, threads: int, tiny: bool, seed: int, tile: TileOptions, keep_sr: bool
) -> dict:
    """One learned-prior prediction (``initial_prior``, prior, ``decode``) of a random LR, ``mode``
    'whole' or 'tiled', in this process: its time (s), peak RSS and increase (KiB), and the SR
    when ``keep_sr``. A 16x16 prediction first warms up the kernels."""
    torch.set_num_threads(threads)
    flow = build_net(tiny, seed, 'srflow')
    prior = build_prior(flow, tiny, seed)

    def learned_prior(inputs: TileInputs) -> tuple[list[Tensor], float]:
        return prior(inputs.lq, flow.initial_prior(inputs.lq, cond=inputs.cond)), 0.0

    def once(lq: Tensor) -> Tensor:
        if mode == 'whole':
            return predict_whole(flow, lq, {'prior': learned_prior}, None)['prior'][0]
        return predict_tiled(flow, lq, {'prior': learned_prior}, None, tile)['prior'][0]

    with torch.no_grad():
        once(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 1)))
        lq = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(seed + 1))
        rss_before = _rss_kib()
        start = time.perf_counter()
        sr = once(lq)
        elapsed = time.perf_counter() - start
    peak = _maxrss_kib()
    # A numpy array pickles by value (a tensor would travel as shared memory that dies with us).
    kept = sr.numpy() if keep_sr else None
    return {'time_s': elapsed, 'peak_kib': peak, 'increase_kib': peak - rss_before, 'sr': kept}


def _machine_kib() -> int:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024


def _predicted_whole_kib(results: dict[tuple[str, int], dict], lr_size: int) -> int | None:
    """Peak RSS a whole-image case would reach: the largest measured whole case's peak plus its
    increase per LR pixel times the extra pixels (the increase grows at least linearly)."""
    done = sorted(size for mode, size in results if mode == 'whole')
    if not done:
        return None
    r = results[('whole', done[-1])]
    return int(r['peak_kib'] + max(r['increase_kib'], 0) * (lr_size**2 / done[-1] ** 2 - 1))


def memory_main(args: argparse.Namespace) -> int:
    """``--memory``: time and peak RSS of the learned-prior path, whole image against tiled, each
    case in a fresh process; the last line is the ``memory:`` ratios line."""
    tile = TileOptions(args.tile, args.overlap)
    sizes = args.sizes
    small, middle, large = sizes[0], sizes[-2], sizes[-1]
    print(_arch_line(args, 'srflow'))
    prior = TINY_PRIOR_OPTIONS if args.tiny else SRFLOW_LP_PRIOR
    print(f'learned prior: LatentPriorNet {prior}{"" if args.tiny else " (the SRFlow-LP release)"}, random weights')
    print(
        f'path: condition, initial_prior, prior, decode; tiles of {tile.size} LR pixels with an overlap of '
        f'{tile.overlap}; one run per case after a 16x16 warm-up, in a fresh process; peak = ru_maxrss'
    )
    results: dict[tuple[str, int], dict] = {}
    print(
        f'{"LR side":>7}  {"mode":<5}  {"time [s]":>9}  {"us / LR px":>10}  '
        f'{"peak RSS [MiB]":>14}  {"increase [MiB]":>14}'
    )
    for size in sizes:
        for mode in ('whole', 'tiled'):
            predicted = _predicted_whole_kib(results, size) if mode == 'whole' else None
            machine = _machine_kib()
            if predicted is not None and predicted > MEMORY_SHARE * machine:
                print(
                    f'{size:>7}  {mode:<5}  skipped: a whole image would need about {predicted / 2**20:.1f} GiB, '
                    f"more than {MEMORY_SHARE:.0%} of this machine's {machine / 2**20:.1f} GiB",
                    flush=True,
                )
                continue
            keep = size == middle
            r = run_in_fresh_process(mode, size, args.threads, args.tiny, args.seed, tile, keep, target=run_memory_case)
            results[(mode, size)] = r
            print(
                f'{size:>7}  {mode:<5}  {r["time_s"]:>9.2f}  {r["time_s"] / size**2 * 1e6:>10.1f}  '
                f'{r["peak_kib"] / 1024:>14.1f}  {r["increase_kib"] / 1024:>14.1f}',
                flush=True,
            )
    missing = [
        f'{mode} {size}'
        for mode, size in (('tiled', small), ('tiled', large), ('whole', small), ('whole', middle))
        if (mode, size) not in results
    ]
    if missing:
        print(f'memory: not measured ({", ".join(missing)} skipped)')
        return 1
    whole, tiled = results[('whole', middle)], results[('tiled', middle)]
    seam = float((torch.from_numpy(whole['sr']).clamp(0, 1) - torch.from_numpy(tiled['sr']).clamp(0, 1)).abs().max())
    flat = results[('tiled', large)]['peak_kib'] / results[('tiled', small)]['peak_kib']
    grow = whole['peak_kib'] / results[('whole', small)]['peak_kib']
    speed = (results[('tiled', large)]['time_s'] / large**2) / (whole['time_s'] / middle**2)
    print(
        f'targets: tiled peak {large}/{small} {flat:.2f} <= 1.3: {"met" if flat <= 1.3 else "NOT met"}; '
        f'tiled time per pixel at {large} / whole at {middle} {speed:.2f} <= 1: {"met" if speed <= 1 else "NOT met"}; '
        f'seam (max abs after clamping, LR {middle}) {seam:.4f} <= 1/255: {"met" if seam <= 1 / 255 else "NOT met"}'
    )
    print(
        f'memory: tiled_peak_{large}/tiled_peak_{small}={flat:.2f} whole_peak_{middle}/whole_peak_{small}={grow:.2f} '
        f'tiled_time_per_pixel_{large}/whole_time_per_pixel_{middle}={speed:.2f} seam_max_abs={seam:.4f}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
