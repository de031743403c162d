"""``python -m flowprior_plugin.tools.benchmark --memory``: time and peak memory of the learned-prior
path, whole image against tiled (see docs/tiling.md).

The learned-prior path (condition, ``initial_prior``, the SRFlow-LP prior's architecture, decode)
of the SRFlow flow of :mod:`flowprior_plugin.tools.benchmark_networks`, random weights, at LR 64,
128, 256 and 512 (``--sizes``, ``--tile``, ``--overlap``), one run per case in a fresh process;
whole images predicted to need more than 75% of the machine's memory are skipped with a line
saying so. Its last line is ``memory: tiled_peak_512/tiled_peak_64=X.XX
whole_peak_256/whole_peak_64=Y.YY tiled_time_per_pixel_512/whole_time_per_pixel_256=Z.ZZ
seam_max_abs=W.WWWW``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from flowprior_plugin.layers.random_init import randomize_parameters_
from flowprior_plugin.tiling import DEFAULT_OVERLAP, TileInputs, TileOptions, predict_tiled, predict_whole
from flowprior_plugin.tools.benchmark_networks import arch_line, build_flow
from flowprior_plugin.tools.measure import maxrss_kib, rss_kib, run_in_fresh_process

MEMORY_SIZES = (64, 128, 256, 512)
# LR pixels per tile side of the memory benchmark: with the default overlap (8) a tile computes
# 80x80 LR pixels. Measured (docs/tiling.md): tiles of 48 (64x64 boxes) recompute 1.89x the pixels
# of an LR 512 image and miss the time target (1.02); tiles of 64 recompute 1.56x.
MEMORY_TILE = 64
# The released SRFlow-LP prior module (UNet depth 3, width 64, no LR encoder), and a tiny one.
SRFLOW_LP_PRIOR = dict(generator={'type': 'UNet', 'depth': 3, 'width': 64}, prior_features=64, lr_encoder=False)
TINY_PRIOR_OPTIONS = dict(generator={'type': 'UNet', 'depth': 2, 'width': 8}, prior_features=8, lr_encoder=False)
# Whole-image cases predicted to need more than this share of the machine's memory are skipped.
MEMORY_SHARE = 0.75


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--memory`` switch and its options."""
    parser.add_argument(
        '--memory', action='store_true', help='time and peak RSS of the learned-prior path, whole against tiled'
    )
    parser.add_argument(
        '--sizes', type=int, nargs='+', default=list(MEMORY_SIZES), help='--memory: LR sides, ascending (3 or more)'
    )
    parser.add_argument('--tile', type=int, default=MEMORY_TILE, help='--memory: tile size in LR pixels')
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP, help='--memory: tile overlap in LR pixels')
    parser.add_argument(
        '--tile-rrdb',
        choices=('crop', 'whole'),
        default='crop',
        help="--memory: SRFlowNet's tile_rrdb (the RRDB per tile box, or once on the whole LR)",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--memory`` options it cannot run (through ``parser.error``)."""
    if not args.memory:
        return
    if len(args.sizes) < 3 or sorted(set(args.sizes)) != args.sizes or any(s % 2 for s in args.sizes):
        parser.error(f'--sizes must be 3 or more even LR sides in ascending order, got {args.sizes}')
    try:
        TileOptions(args.tile, args.overlap)
    except ValueError as error:
        parser.error(str(error))


def build_prior(flow: nn.Module, tiny: bool, seed: int = 0) -> nn.Module:
    """The released SRFlow-LP prior's architecture (or a tiny one) for ``flow``, random weights, eval."""
    torch.manual_seed(seed + 3)
    prior = ARCH_REGISTRY.get('LatentPriorNet')(
        latent_channels=flow.latent_channels(), **(TINY_PRIOR_OPTIONS if tiny else SRFLOW_LP_PRIOR)
    )
    randomize_parameters_(prior, torch.Generator().manual_seed(seed + 3), strength=0.3)
    return prior.eval()


def run_memory_case(
    mode: str,
    lr_size: int,
    threads: int,
    tiny: bool,
    seed: int,
    tile: TileOptions,
    keep_sr: bool,
    tile_rrdb: str = 'crop',
) -> dict:
    """One learned-prior prediction (``initial_prior``, prior, ``decode``) of a random LR, ``mode``
    'whole' or 'tiled', in this process: its time (s), peak RSS and increase (KiB), and the SR
    when ``keep_sr``. A 16x16 prediction first warms up the kernels."""
    torch.set_num_threads(threads)
    flow = build_flow('srflow', tiny, seed, tile_rrdb=tile_rrdb)
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
        rss_before = rss_kib()
        start = time.perf_counter()
        sr = once(lq)
        elapsed = time.perf_counter() - start
    peak = maxrss_kib()
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
    print(f'{arch_line("srflow", args.tiny, args.threads)}; tile_rrdb={args.tile_rrdb}')
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
            r = run_in_fresh_process(
                mode, size, args.threads, args.tiny, args.seed, tile, keep, args.tile_rrdb, target=run_memory_case
            )
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
