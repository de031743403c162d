"""Multi-process likelihood training (gloo on CPU): ActNorm is initialised before DDP wrapping and
every rank starts from, and stays on, rank 0's network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(rank: int, world: int, port: int, root: str, queue) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        from conftest import TINY_SRFLOW, finalize_options

        import flowprior_plugin  # noqa: F401
        from flowprior_plugin.models.flow_sr_model import FlowSRModel

        torch.manual_seed(100 + rank)  # each rank builds a different random network
        opt = {
            'name': 'ddp',
            'scale': 4,
            'network_g': dict(TINY_SRFLOW),
            'path': {},
            'train': {
                'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            },
        }
        opt = finalize_options(opt, Path(root) / f'rank{rank}', is_train=True)
        opt.update(dist=True, rank=rank, world_size=world)
        model = FlowSRModel(opt)
        wrapped_before_first_batch = isinstance(model.net_g, torch.nn.parallel.DistributedDataParallel)
        g = torch.Generator().manual_seed(rank)  # and sees different data
        gt = torch.rand(2, 3, 16, 16, generator=g)
        model.feed_data({'gt': gt, 'lq': torch.nn.functional.avg_pool2d(gt, 4)})
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


def test_ranks_share_rank0_network_after_actnorm_init_and_a_step(tmp_path):
    world, port = 2, 29000 + os.getpid() % 1000
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, str(tmp_path), queue)) for r in range(world)]
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
