"""Multi-process likelihood training (gloo on CPU): ActNorm is initialised before DDP wrapping and
every rank starts from, and stays on, rank 0's network; LINF trains on HR windows (``HRWindow``
through DDP's forward) with each rank at its own scales."""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _batch(family: str, rank: int) -> dict:
    """Different data per rank: SRFlow whole 16x16 HR; LINF 9x9 windows of HR crops at rank-dependent scales."""
    g = torch.Generator().manual_seed(rank)
    if family == 'SRFlow':
        gt = torch.rand(2, 3, 16, 16, generator=g)
        return {'gt': gt, 'lq': torch.nn.functional.avg_pool2d(gt, 4)}
    full = [(18 + 3 * rank, 18 + 3 * rank), (24, 24)]
    lq, windows, gts = [], [], []
    for h, w in full:
        image = torch.rand(1, 3, h, w, generator=g)
        lq.append(torch.nn.functional.interpolate(image, size=(8, 8), mode='area'))
        top, left = rank * 3, 6
        windows.append((top, left))
        gts.append(image[..., top : top + 9, left : left + 9])
    return {'lq': torch.cat(lq), 'gt': torch.cat(gts), 'hr_size': torch.tensor(full), 'window': torch.tensor(windows)}


def _worker(rank: int, world: int, port: int, root: str, queue, family: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        from conftest import TINY_LINF, TINY_SRFLOW, finalize_options, train_options

        import flowprior_plugin  # noqa: F401
        from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel

        torch.manual_seed(100 + rank)  # each rank builds a different random network
        opt = {
            'name': 'ddp',
            'scale': 4,
            'network_g': dict(TINY_SRFLOW if family == 'SRFlow' else TINY_LINF),
            'path': {},
            'train': train_options(milestones=(100,)),
        }
        opt = finalize_options(opt, Path(root) / f'rank{rank}', is_train=True)
        opt.update(dist=True, rank=rank, world_size=world)
        model = FlowLikelihoodModel(opt)
        wrapped_before_first_batch = isinstance(model.net_g, torch.nn.parallel.DistributedDataParallel)
        model.feed_data(_batch(family, rank))  # and sees different data
        bare = model.get_bare_model(model.net_g)
        model._first_batch()
        after_init = torch.cat([t.detach().flatten() for t in bare.state_dict().values()]).double().sum().item()
        model.optimize_parameters(1)
        after_step = torch.cat([t.detach().flatten() for t in bare.state_dict().values()]).double().sum().item()
        queue.put(
            (
                rank,
                wrapped_before_first_batch,
                after_init,
                after_step,
                isinstance(model.net_g, torch.nn.parallel.DistributedDataParallel),
            )
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('family', ['SRFlow', 'LINF'])
def test_ranks_share_rank0_network_after_init_and_a_step(tmp_path, family):
    world, port = 2, 29000 + (os.getpid() + (7 if family == 'LINF' else 0)) % 1000
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, str(tmp_path), queue, family)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=300) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (_, pre0, init0, step0, ddp0), (_, pre1, init1, step1, ddp1) = results
    assert not pre0 and not pre1, 'wrapped in DDP before ActNorm initialisation'
    assert ddp0 and ddp1
    assert init0 == init1, 'ranks differ after ActNorm initialisation'
    assert step0 == step1, 'ranks differ after one DDP step'
    assert step0 != init0, 'the DDP step changed nothing'


def test_ddp_moves_hr_windows_with_the_other_forward_arguments():
    """On GPUs DDP copies forward's arguments to the device with this helper; an HRWindow (a
    dataclass of tensors) must come out as an HRWindow with its tensors moved and re-checked."""
    from torch.distributed.utils import _to_kwargs

    from flowprior_plugin.flow_protocol import HRWindow

    window = HRWindow((9, 9), torch.tensor([[18, 18], [24, 24]]), torch.tensor([[0, 6], [3, 6]]))
    _, kwargs = _to_kwargs((torch.zeros(1),), {'out_size': window}, torch.device('cpu'), False)
    moved = kwargs[0]['out_size']
    assert isinstance(moved, HRWindow) and moved.size == (9, 9)
    assert torch.equal(moved.full_size, window.full_size) and torch.equal(moved.offset, window.offset)


def _nan_worker(rank: int, world: int, port: int, root: str, queue) -> None:
    """Three DDP steps; at step 2 only rank 1's batch holds a NaN."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        import logging

        from conftest import TINY_SRFLOW, captured, finalize_options, train_options

        import flowprior_plugin  # noqa: F401
        from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel

        opt = {
            'name': 'nan',
            'scale': 4,
            'network_g': dict(TINY_SRFLOW),
            'path': {},
            'train': train_options(milestones=(100,)),
        }
        opt = finalize_options(opt, Path(root) / f'rank{rank}', is_train=True)
        opt.update(dist=True, rank=rank, world_size=world)
        model = FlowLikelihoodModel(opt)
        sums = []
        with captured(logging.getLogger('basicsr')) as records:
            for step in (1, 2, 3):
                batch = _batch('SRFlow', rank)
                if step == 2 and rank == 1:
                    batch['lq'][0, 0, 0, 0] = float('nan')
                model.feed_data(batch)
                model.optimize_parameters(step)
                bare = model.get_bare_model(model.net_g)
                sums.append(torch.cat([t.detach().flatten() for t in bare.state_dict().values()]).double().sum().item())
        steps = {int(s['step']) for s in model.optimizer_g.state_dict()['state'].values()}
        queue.put((rank, sums, steps, [r.getMessage() for r in records]))
    finally:
        dist.destroy_process_group()


def test_nan_batch_on_one_rank_skips_the_step_on_every_rank_without_hanging(tmp_path):
    world, port = 2, 29000 + (os.getpid() + 13) % 1000
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_nan_worker, args=(r, world, port, str(tmp_path), queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        # A rank waiting alone in DDP's gradient all-reduce would never answer: the bound is the test.
        results = []
        deadline = time.monotonic() + 240
        while len(results) < world and time.monotonic() < deadline:
            with contextlib.suppress(queue_module.Empty):
                results.append(queue.get(timeout=2))
            assert all(p.exitcode in (None, 0) for p in procs), 'a rank crashed'
        assert len(results) == world, 'the ranks did not finish within 240 s (a hang)'
        results.sort()
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    (_, sums0, steps0, log0), (_, sums1, steps1, log1) = results
    assert sums0 == sums1, 'ranks differ after the skipped step'
    assert sums0[1] == sums0[0], 'step 2 changed the weights although rank 1 saw a NaN'
    assert sums0[2] != sums0[1], 'step 3 (finite everywhere) changed nothing'
    assert steps0 == steps1 == {2}, 'Adam counted the skipped step'
    # Rank 0 logs (BasicSR silences the other ranks' logger), naming the rank that saw it.
    assert any('iter 2: non-finite loss on rank(s) 1, step skipped on every rank' in m for m in log0), log0
