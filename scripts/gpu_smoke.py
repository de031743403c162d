"""GPU smoke check of the learned prior (under five minutes on one GPU; CI never runs it).

    python scripts/gpu_smoke.py [--iters 20] [--out DIR] [--cpu]

SRFlow: builds FlowPriorModel from ``options/srflow_prior.yml`` with ``num_gpu: 1`` (the official
SRFlow 4X flow with random weights unless the checkpoint is in experiments/pretrained_models/),
trains the prior for a few iterations on random 160x160 crops, proves every flow tensor is
bit-identical afterwards, runs a validation pass (prior and temperatures), and prints timings and
peak CUDA memory. It also runs one likelihood step of FlowLikelihoodModel on the official 4X flow.

LINF: the same for ``options/linf_prior.yml`` (the released LINF-LP sizes) on random-scale 96x96
windows from ArbitraryScaleSRDataset, a full-image validation at x3 and x8 with the seam metric,
and one likelihood step of ``options/linf_patch_edsr_baseline.yml`` on windows.

``--cpu`` runs the same code on the CPU (slow: use ``--iters 1``), to check the script itself on a
machine without a GPU. Exit code 0 = OK.
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
    parser.add_argument('--cpu', action='store_true', help='run on the CPU (checks the script, not the GPU)')
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print('gpu_smoke: no CUDA device', file=sys.stderr)
        return 2
    num_gpu = 0 if args.cpu else 1
    # Before anything imports basicsr: BasicSR 1.4.2 needs the plugin's torchvision stand-in.
    import flowprior_plugin  # noqa: F401

    srflow_checks(args, num_gpu)
    linf_checks(args, num_gpu)
    print('gpu_smoke: OK')
    return 0


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory() -> str:
    if not torch.cuda.is_available():
        return 'n/a (CPU)'
    return f'{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB'


def _check_frozen(model, flow_before: dict) -> None:
    changed = [k for k, v in model.net_flow.state_dict().items() if not torch.equal(v, flow_before[k])]
    assert not changed, f'flow tensors changed: {changed[:5]}'
    assert all(not p.requires_grad for p in model.net_flow.parameters())
    print('frozen flow: every tensor bit-identical after training')


def srflow_checks(args: argparse.Namespace, num_gpu: int) -> None:
    """SRFlow 4X with the SRFlow-LP sizes: prior training, frozen flow, validation, one NLL step."""
    from basicsr.data import build_dataloader, build_dataset
    from conftest import finalize_options, write_paired_images

    from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel
    from flowprior_plugin.models.flow_prior_model import FlowPriorModel

    opt = yaml.safe_load((REPO / 'options' / 'srflow_prior.yml').read_text())
    opt['num_gpu'] = num_gpu
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
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _synchronize()
    start = time.time()
    for it in range(1, args.iters + 1):
        gt = torch.rand(4, 3, 40, 40, generator=g)
        gt = torch.nn.functional.interpolate(gt, size=160, mode='bicubic').clamp(0, 1)
        model.feed_data({'gt': gt, 'lq': torch.nn.functional.avg_pool2d(gt, 4)})
        model.optimize_parameters(it)
    _synchronize()
    per_iter = (time.time() - start) / args.iters
    print(f'prior training: {per_iter * 1000:.0f} ms/iter (batch 4, HR 160), losses {model.get_current_log()}')
    print(f'peak CUDA memory: {_peak_memory()}')
    _check_frozen(model, flow_before)

    data = write_paired_images(args.out / 'val', count=2, hr_size=(128, 96), scale=4)
    val_opt = {'name': 'smoke', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'hr')}
    val_opt.update(dataroot_lq=str(data / 'lr'), io_backend={'type': 'disk'}, phase='val', scale=4)
    loader = build_dataloader(build_dataset(val_opt), val_opt, num_gpu=num_gpu, dist=False)
    model.opt['val']['metrics'].pop('lpips', None)
    model.validation(loader, current_iter=args.iters, tb_logger=None, save_img=False)
    print('validation:', model.validation_summary)

    flow_opt = finalize_options(
        {
            'name': 'smoke_flow',
            'scale': 4,
            'num_gpu': num_gpu,
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
    flow_model = FlowLikelihoodModel(flow_opt)
    flow_model.feed_data({'gt': gt, 'lq': torch.nn.functional.avg_pool2d(gt, 4)})
    flow_model.optimize_parameters(1)
    print('likelihood step on the official 4X flow:', flow_model.get_current_log())


def linf_checks(args: argparse.Namespace, num_gpu: int) -> None:
    """LINF-LP at the released sizes: window training, frozen flow, multi-scale full-image validation."""
    from basicsr.data import build_dataloader, build_dataset
    from conftest import finalize_options, write_paired_images

    from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel
    from flowprior_plugin.models.flow_prior_model import FlowPriorModel

    # HR images large enough for x4 crops of a 96x96 LR (384 px) and for the x8 validation.
    data = write_paired_images(args.out / 'linf_hr', count=4, hr_size=(400, 400), scale=4)
    opt = yaml.safe_load((REPO / 'options' / 'linf_prior.yml').read_text())
    opt['num_gpu'] = num_gpu
    if not Path(opt['path']['pretrain_network_flow']).is_file():
        print(f'gpu_smoke: {opt["path"]["pretrain_network_flow"]} absent: random LINF weights')
        opt['path']['pretrain_network_flow'] = None
    if not Path('experiments/pretrained_models/vgg19-dcbb9e9d.pth').is_file():
        opt['train']['perceptual_opt']['random_weights_for_tests'] = True
    train_opt = opt['datasets']['train']
    train_opt.update(dataroot_gt=str(data / 'hr'), batch_size_per_gpu=4, num_worker_per_gpu=2, phase='train')
    opt = finalize_options(opt, args.out, is_train=True)
    model = FlowPriorModel(opt)
    flow_before = {k: v.clone() for k, v in model.net_flow.state_dict().items()}
    loader = build_dataloader(build_dataset(train_opt), train_opt, num_gpu=num_gpu, dist=False, seed=0)
    batches = iter(loader)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _synchronize()
    start = time.time()
    for it in range(1, args.iters + 1):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        model.feed_data(batch)
        model.optimize_parameters(it)
    _synchronize()
    per_iter = (time.time() - start) / args.iters
    print(f'LINF-LP training: {per_iter * 1000:.0f} ms/iter (batch 4, 96x96 windows), {model.get_current_log()}')
    print(f'peak CUDA memory: {_peak_memory()}')
    _check_frozen(model, flow_before)

    model.opt['val']['metrics'].pop('lpips', None)
    val_data = write_paired_images(args.out / 'linf_val', count=1, hr_size=(400, 400), scale=4)
    for scale in (3, 8):
        val_opt = {'name': f'smoke_x{scale}', 'type': 'ArbitraryScaleSRDataset', 'dataroot_gt': str(val_data / 'hr')}
        val_opt.update(io_backend={'type': 'disk'}, phase='val', test_scale=scale, lr_resize='pil')
        val_loader = build_dataloader(build_dataset(val_opt), val_opt, num_gpu=num_gpu, dist=False)
        model.validation(val_loader, current_iter=args.iters, tb_logger=None, save_img=False)
        print(f'validation x{scale}:', model.validation_summary)

    stage1 = yaml.safe_load((REPO / 'options' / 'linf_patch_edsr_baseline.yml').read_text())
    stage1['num_gpu'] = num_gpu
    stage1 = finalize_options(stage1, args.out, is_train=True)
    flow_model = FlowLikelihoodModel(stage1)
    flow_model.feed_data(batch)
    flow_model.optimize_parameters(1)
    print('LINF likelihood step on 96x96 windows:', flow_model.get_current_log())


if __name__ == '__main__':
    sys.exit(main())
