"""CPU benchmark of the flows' cached conditioning: ``python -m flowprior_plugin.tools.benchmark``.

Runs the official DF2K 4X SRFlow and HCFlow and LINF's official 3x3-patch x4 model (random weights)
on one LR image, prints wall time and peak memory of a decode against the learned-prior path with
and without a shared ``condition()``, checks the cached path against the plain computation, and
ends with the ``ratios:`` lines. ``--memory``: whole image against tiled
(:mod:`flowprior_plugin.tools.memory_benchmark`, ``docs/tiling.md``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence

import torch
from basicsr.utils import get_root_logger
from torch import Tensor

from flowprior_plugin.archs.linf_arch import official_linf_options
from flowprior_plugin.layers.flow_layers import standardize_per_pixel
from flowprior_plugin.models.flow_prior_model import FlowPriorModel
from flowprior_plugin.tools import memory_benchmark
from flowprior_plugin.tools.benchmark_networks import LINF_CONFIG, LINF_TINY_OPTIONS, arch_line, build_flow
from flowprior_plugin.tools.measure import (
    maxrss_kib,
    median_seconds,
    peak_rss_kib,
    reset_peak_rss,
    rss_kib,
    run_in_fresh_process,
)

# What is measured, per flow (eval mode, no_grad), side by side: (a) ``decode``, one temperature
# decode, condition() included; (b) ``lp_path``, the learned-prior path (initial_prior, the encode
# of the upsampled LR, and a decode sharing one condition()); (c) ``naive``, the same two calls each
# recomputing the condition; ``extra_decode``, one more decode with a computed condition. (b)'s SR
# must equal the plain computation within PLAIN_TOLERANCE: the release's way, nothing cached (SRFlow:
# every RRDB resolution and concatenated coupling convolutions; HCFlow: concatenated condition and
# coupling convolutions; LINF: no cached flow parameters, a condition per call).
#
# HCFlow caches less than SRFlow: only its coarsest level is conditioned on the LR alone, each finer
# level's condition network reads the kept channels of the pass (HCFlowCondition), so an extra
# decode costs most of a first one. LINF also runs three training steps of the learned prior
# (FlowPriorModel as options/linf_prior.yml: batch 2, 96x96 HR windows, the LINF-LP module, a
# random VGG19 conv5_4 perceptual loss, latent loss weight 0): before (no cache, the HR encoded
# every step for the zero-weight latent loss), without that encode, and now (flow parameters
# cached: one MLP pass per step); its peaks are the high-water mark since the networks were built
# (VmHWM reset through /proc/self/clear_refs).
#
# Memory: torch has no CPU peak-memory API, so each case runs in a fresh forked process that builds
# the network and inputs, notes its RSS, runs the case once and reads its RSS high-water mark
# (getrusage().ru_maxrss); the "peak increase" is that mark minus the RSS before the case (allocator
# caching included). Times are the median of --repeats further runs in the same process.
#
# The ratio lines come last: ``hcflow ratios: lp_path/decode=X.XX extra_decode/decode=Y.YY``, then
# ``linf ratios: ...``, then SRFlow's ``ratios: ...`` (the last line; scripts read it).
CASES = ('decode', 'lp_path', 'naive', 'extra_decode')
CASE_LABELS = {
    'decode': '(a) condition + sample decode',
    'lp_path': '(b) condition + initial_prior + decode (shared cond)',
    'naive': '(c) initial_prior + decode (cond recomputed per call)',
    'extra_decode': 'one extra decode with a cached condition',
}
# The flows of the conditioning cases, in the order they run. The first is the reference: its lines
# have no prefix and its ``ratios:`` line is the last one printed (scripts read it).
CONDITIONED_FLOWS = ('srflow', 'hcflow')
TEMPERATURE = 0.9
PLAIN_TOLERANCE = 1e-4


def run_case(case: str, lr_size: int, threads: int, repeats: int, tiny: bool, seed: int, flow: str) -> dict:
    """Run one conditioning case of a benchmarked flow (a key of
    :data:`~flowprior_plugin.tools.benchmark_networks.FLOWS`) in this process; returns times (s),
    memory (KiB) and, for lp_path, the check against the plain computation."""
    torch.set_num_threads(threads)
    net = build_flow(flow, tiny, seed)
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

        rss_before = rss_kib()
        sr = once()  # first run: memory high-water (and warm-up of the convolution kernels)
        result['peak_kib'] = maxrss_kib()
        result['increase_kib'] = result['peak_kib'] - rss_before
        result['time_s'] = median_seconds(once, repeats)

        if case == 'lp_path':
            # The plain computation: release-style conditioning, concat convolutions, no cache.
            size = (lr_size * net.scale, lr_size * net.scale)
            up = torch.nn.functional.interpolate(lq, size=size, mode='bilinear', align_corners=False)
            z0 = [standardize_per_pixel(z) for z in net.plain_encode(lq, up)]
            plain = net.plain_decode(lq, z0)
            result['plain_max_abs_diff'] = (sr - plain).abs().max().item()
            result['sr_max_abs'] = plain.abs().max().item()
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m flowprior_plugin.tools.benchmark', description=__doc__.split('\n\n')[0]
    )
    parser.add_argument('--lr-size', type=int, default=None, help='LR side (square LR); default 64 (16 with --tiny)')
    parser.add_argument('--threads', type=int, default=min(8, os.cpu_count() or 1), help='torch CPU threads')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per case (median reported)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights, LR image and latents')
    parser.add_argument('--tiny', action='store_true', help='small architectures instead of DF2K 4X (for tests)')
    memory_benchmark.add_arguments(parser)
    args = parser.parse_args(argv)
    memory_benchmark.check_arguments(parser, args)
    if args.lr_size is None:
        args.lr_size = 16 if args.tiny else 64
    if args.lr_size % 2:
        parser.error(f'--lr-size must be even (SRFlow needs even LR sides), got {args.lr_size}')
    if args.repeats < 1 or args.threads < 1:
        parser.error('--repeats and --threads must be at least 1')
    return args


def _run_flow(args: argparse.Namespace, flow: str, prefix: str) -> tuple[bool, str]:
    """Benchmark one flow's conditioning cases and print its table and check; returns (check
    passed, ratios text)."""
    results = {}
    for case in CASES:
        results[case] = run_in_fresh_process(
            case, args.lr_size, args.threads, args.repeats, args.tiny, args.seed, flow, target=run_case
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


def _linf_prior_model(tiny: bool, seed: int, cache: bool, print_freq: int):
    """FlowPriorModel as ``options/linf_prior.yml`` sets it up (perceptual loss weight 1 with a
    random VGG19 and no download, latent loss weight 0) on the benchmarked LINF, on the CPU."""
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
    model.net_flow.load_state_dict(build_flow('linf', tiny, seed, cache_flow_params=cache).state_dict())
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
        net = build_flow('linf', tiny, seed)
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

    reset_peak_rss()
    rss_before = rss_kib()
    first = once()  # first run: memory high-water (and warm-up of the kernels)
    result: dict = {'case': case, 'peak_kib': peak_rss_kib()}
    result['increase_kib'] = result['peak_kib'] - rss_before
    result['time_s'] = median_seconds(once, repeats)
    if case.startswith('train'):
        result['loss'] = float(first)
    elif case == 'lp_path':
        plain = build_flow('linf', tiny, seed, cache_flow_params=False)  # every call recomputes condition and MLP
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
        return memory_benchmark.memory_main(args)
    checks, ratios = [], {}
    for index, flow in enumerate(CONDITIONED_FLOWS):
        print(arch_line(flow, args.tiny, args.threads))
        if index == 0:
            hr = args.lr_size * 4
            print(
                f'LR {args.lr_size}x{args.lr_size} -> SR {hr}x{hr}; '
                f'time = median of {args.repeats} runs after one warm-up run'
            )
            print(
                'memory = RSS high-water (ru_maxrss) of a fresh process per case during its first run; '
                '"increase" = that minus the RSS just before the run (weights and inputs already resident)'
            )
        ok, ratios[flow] = _run_flow(args, flow, '' if index == 0 else f'{flow} ')
        checks.append(ok)
    linf_ok, linf_ratios = _run_linf(args)
    reference, *others = CONDITIONED_FLOWS
    for flow in others:
        print(f'{flow} ratios: {ratios[flow]}')
    print(f'linf ratios: {linf_ratios}')
    # The reference flow's (SRFlow's) ratios stay the last line (scripts read it).
    print(f'ratios: {ratios[reference]}')
    return 0 if all(checks) and linf_ok else 1


if __name__ == '__main__':
    sys.exit(main())
