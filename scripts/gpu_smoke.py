"""GPU smoke check of the learned prior (under five minutes on one GPU; CI never runs it).

    python scripts/gpu_smoke.py [--iters 20] [--out DIR]

Builds FlowPriorModel from ``options/srflow_prior.yml`` with ``num_gpu: 1`` (the official SRFlow
4X flow with random weights unless the checkpoint is in experiments/pretrained_models/), trains
the prior for a few iterations on random 160x160 crops, proves every flow tensor is bit-identical
afterwards, runs a validation pass (prior and temperatures), and prints timings and peak CUDA
memory. It also runs one likelihood step of FlowSRModel on the official 4X flow. Exit code 0 = OK.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--out', type=Path, default=Path(os.environ.get('OUT', tempfile.mkdtemp())))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print('gpu_smoke: no CUDA device', file=sys.stderr)
        return 2

    from basicsr.data import build_dataloader, build_dataset
    from conftest import finalize_options, write_paired_images

    import flowprior_plugin  # noqa: F401
    from flowprior_plugin.models.flow_prior_model import FlowPriorModel
    from flowprior_plugin.models.flow_sr_model import FlowSRModel

    opt = yaml.safe_load((REPO / 'options' / 'srflow_prior.yml').read_text())
    opt['num_gpu'] = 1
    flow_file = Path(opt['path']['pretrain_network_flow'])
    if not flow_file.is_file():
        print(f'gpu_smoke: {flow_file} absent: random flow weights')
        opt['path']['pretrain_network_flow'] = None
    perceptual = opt['train']['perceptual_opt']
    if not Path('experiments/pretrained_models/vgg19-dcbb9e9d.pth').is_file():
        perceptual['random_weights_for_tests'] = True
    opt = finalize_options(opt, args.out, is_train=True)
    model = FlowPriorModel(opt)
    flow_before = {k: v.clone() for k, v in model.net_flow.state_dict().items()}

    g = torch.Generator().manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.time()
    for it in range(1, args.iters + 1):
        gt = torch.rand(4, 3, 40, 40, generator=g)
        gt = torch.nn.functional.interpolate(gt, size=160, mode='bicubic').clamp(0, 1)
        model.feed_data({'gt': gt, 'lq': torch.nn.functional.avg_pool2d(gt, 4)})
        model.optimize_parameters(it)
    torch.cuda.synchronize()
    per_iter = (time.time() - start) / args.iters
    print(f'prior training: {per_iter * 1000:.0f} ms/iter (batch 4, HR 160), losses {model.get_current_log()}')
    print(f'peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')
    changed = [k for k, v in model.net_flow.state_dict().items() if not torch.equal(v, flow_before[k])]
    assert not changed, f'flow tensors changed: {changed[:5]}'
    assert all(not p.requires_grad for p in model.net_flow.parameters())
    print('frozen flow: every tensor bit-identical after training')

    data = write_paired_images(args.out / 'val', count=2, hr_size=(128, 96), scale=4)
    val_opt = {'name': 'smoke', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'hr')}
    val_opt.update(dataroot_lq=str(data / 'lr'), io_backend={'type': 'disk'}, phase='val', scale=4)
    loader = build_dataloader(build_dataset(val_opt), val_opt, num_gpu=1, dist=False)
    model.opt['val']['metrics'].pop('lpips', None)
    model.validation(loader, current_iter=args.iters, tb_logger=None, save_img=False)
    print('validation:', model.validation_summary)

    flow_opt = finalize_options(
        {
            'name': 'smoke_flow',
            'scale': 4,
            'num_gpu': 1,
            'network_g': copy.deepcopy(opt['network_flow']),
            'path': {},
            'train': {
                'optim_g': {'type': 'Adam', 'lr': 2.5e-4, 'betas': [0.9, 0.99]},
                'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
            },
        },
        args.out,
        is_train=True,
    )
    flow_model = FlowSRModel(flow_opt)
    flow_model.feed_data({'gt': gt, 'lq': torch.nn.functional.avg_pool2d(gt, 4)})
    flow_model.optimize_parameters(1)
    print('likelihood step on the official 4X flow:', flow_model.get_current_log())
    print('gpu_smoke: OK')
    return 0


if __name__ == '__main__':
    sys.exit(main())
