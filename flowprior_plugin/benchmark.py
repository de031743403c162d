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

Memory: torch has no peak-memory API on the CPU, so each case runs in a fresh forked process that
builds the network and inputs, notes its resident set size (RSS), runs the case once and reads its
RSS high-water mark (``getrusage().ru_maxrss``). The "peak increase" is that high-water mark minus
the RSS just before the case: the memory the case itself needed at its peak, allocator caching
included. Times are the median of ``--repeats`` further runs in the same process.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowprior_plugin.archs.hcflow_arch import HCFlowNet, official_hcflow_options
from flowprior_plugin.archs.latent_prior_arch import LatentPriorNet
from flowprior_plugin.archs.srflow_arch import FlowStep, SRFlowNet, official_srflow_options
from flowprior_plugin.layers.flow_layers import ActNorm, Conv2dZeros, InvertibleConv1x1, standardize_per_pixel
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


@torch.no_grad()
def randomize_parameters_(net: nn.Module, generator: torch.Generator | None = None, strength: float = 1.0) -> None:
    """Give every parameter of a flow a random, well-conditioned value (in place).

    Zero-initialised convolutions and ActNorms get small random values (so no coupling is the
    identity), invertible 1x1 convolutions random orthogonal matrices, and every ActNorm is marked
    initialised (so training mode does not overwrite the values). The ActNorm of each coupled
    SRFlow step compensates the couplings' average scale, as the data-dependent init would. Other
    weights keep their random init; biases get small random values.

    Args:
        net: The network (any module built from this package's flow layers).
        generator: Random generator on the CPU. Default: None.
        strength: Multiplier of the random magnitudes of zero-convs and ActNorms. Default: 1.0.
    """

    def randn_(t: Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype) * std)

    for module in net.modules():
        if isinstance(module, ActNorm):
            randn_(module.bias, 0.1 * strength)
            randn_(module.logs, 0.05 * strength)
            module.initialized = True
        elif isinstance(module, InvertibleConv1x1):
            q = torch.linalg.qr(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64))[0]
            module.weight.copy_(q)
        elif isinstance(module, Conv2dZeros):
            # Scaled by fan-in: the hidden activations they read are not normalised by a data init.
            randn_(module.weight, 0.05 * strength / math.sqrt(module.weight[0].numel()))
            randn_(module.bias, 0.1 * strength)
            randn_(module.logs, 0.05 * strength)
        elif isinstance(module, nn.Conv2d) and module.bias is not None:
            randn_(module.bias, 0.01)
    for module in net.modules():
        if isinstance(module, FlowStep) and module.affine is not None:
            # A near-zero coupling scales by sigmoid(2) + eps twice per step; let the step's ActNorm
            # undo that on average (as data-dependent init would) so a deep flow neither shrinks
            # nor blows up.
            module.actnorm.logs.sub_(2 * math.log(1 / (1 + math.exp(-2.0)) + module.affine.eps))


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
    width = max(len(label) for label in CASE_LABELS.values())
    print(f'{"case":<{width}}  {"time [s]":>9}  {"peak RSS [MiB]":>14}  {"increase [MiB]":>14}')
    for case in CASES:
        r = results[case]
        print(
            f'{CASE_LABELS[case]:<{width}}  {r["time_s"]:>9.3f}  {r["peak_kib"] / 1024:>14.1f}  '
            f'{r["increase_kib"] / 1024:>14.1f}'
        )
    decode = results['decode']['time_s']
    print(f'{prefix}naive/decode={results["naive"]["time_s"] / decode:.2f} (what sharing the condition saves)')
    diff = results['lp_path']['plain_max_abs_diff']
    ok = math.isfinite(diff) and diff <= PLAIN_TOLERANCE
    print(
        f'{prefix}check: (b) SR vs plain computation: max abs diff {diff:.3g} (SR max abs '
        f'{results["lp_path"]["sr_max_abs"]:.3g}), tolerance {PLAIN_TOLERANCE:g}: {"OK" if ok else "FAILED"}'
    )
    lp_ratio = results['lp_path']['time_s'] / decode
    extra_ratio = results['extra_decode']['time_s'] / decode
    return ok, f'lp_path/decode={lp_ratio:.2f} extra_decode/decode={extra_ratio:.2f}'


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
    print(f'hcflow ratios: {hcflow_ratios}')
    # SRFlow's ratios stay the last line (scripts read it).
    print(f'ratios: {srflow_ratios}')
    return 0 if srflow_ok and hcflow_ok else 1


# ------------------------------------------------------------------ --memory: whole against tiled
MEMORY_SIZES = (64, 128, 256, 512)
# LR pixels per tile side of the memory benchmark (see docs/tiling.md for the trade-off measured).
MEMORY_TILE = 64
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
    return int(r['peak_kib'] + r['increase_kib'] * (lr_size**2 / done[-1] ** 2 - 1))


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
    machine = _machine_kib()
    results: dict[tuple[str, int], dict] = {}
    print(
        f'{"LR side":>7}  {"mode":<5}  {"time [s]":>9}  {"us / LR px":>10}  '
        f'{"peak RSS [MiB]":>14}  {"increase [MiB]":>14}'
    )
    for size in sizes:
        for mode in ('whole', 'tiled'):
            predicted = _predicted_whole_kib(results, size) if mode == 'whole' else None
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
