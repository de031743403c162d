"""Super-resolve a folder of LR photos with a test option file (no GT, no dataset section needed).

    python -m flowprior_plugin.infer -opt options/test_srflow_prior.yml -i photos/ -o out/ --tile 128

The model (``model_type``, networks, weights) comes from the option file; ``datasets`` and
``val.metrics`` are ignored. Each input ``name.png`` gives ``out/name.png`` (``name_s<k>.png`` for
further samples). The method is the model's first one (the learned prior for ``FlowPriorModel``);
``--temperature t`` samples around it instead (``prior+t``, or ``tau<t>`` for a flow alone), drawing
``--samples`` images from one conditioning and one prior. Inputs must be 8-bit RGB (or BGR files as
OpenCV reads them): gray, RGBA and 16-bit images are refused with one line saying how to convert.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from collections.abc import Sequence

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


class InputImageError(ValueError):
    """An input image the command cannot use as it is (the message says why and how to fix it)."""


def read_rgb(path: str) -> np.ndarray:
    """An 8-bit colour image as float32 RGB HWC in [0, 1]; one-line InputImageError otherwise."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputImageError(f'{path}: cannot be read as an image (unknown format or damaged file)')
    if img.dtype != np.uint8:
        raise InputImageError(
            f'{path}: {img.dtype} pixels ({8 * img.itemsize}-bit); the flows take 8-bit images: convert it, '
            "e.g. cv2.imwrite(out, (img / 257).round().astype('uint8'))"
        )
    if img.ndim == 2 or img.shape[2] == 1:
        raise InputImageError(
            f'{path}: grayscale (1 channel); the flows take RGB: convert it, e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)'
        )
    if img.shape[2] == 4:
        raise InputImageError(
            f'{path}: RGBA (4 channels); the flows take RGB: drop or flatten the alpha channel first, '
            'e.g. cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)'
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def list_inputs(folder: str) -> list[str]:
    """Image files of ``folder`` (or the single file ``folder``), sorted."""
    if osp.isfile(folder):
        return [folder]
    if not osp.isdir(folder):
        raise InputImageError(f'{folder}: no such file or folder')
    files = sorted(osp.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise InputImageError(f'{folder}: no images ({", ".join(IMAGE_EXTENSIONS)})')
    return files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m flowprior_plugin.infer',
        description='Super-resolve LR photos with a flowprior-plugin test option file.',
    )
    parser.add_argument('-opt', required=True, metavar='YML', help='test option file (model, networks, weights)')
    parser.add_argument('-i', '--input', required=True, help='an LR image or a folder of them')
    parser.add_argument('-o', '--output', required=True, help='folder for the SR PNGs')
    parser.add_argument('--tile', type=int, default=None, help='tile side in LR pixels (default: whole images)')
    parser.add_argument('--overlap', type=int, default=None, help='tile margin in LR pixels (default: tiling default)')
    parser.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:1' or 'auto' (default)")
    parser.add_argument('--samples', type=int, default=1, help='SR samples per image (with --temperature)')
    parser.add_argument('--temperature', type=float, default=None, help='sample around the method at this tau')
    parser.add_argument('--seed', type=int, default=0, help='seed of the sampling (default 0)')
    return parser


def _model_options(path: str, args: argparse.Namespace) -> dict:
    import yaml

    try:
        with open(path) as handle:
            opt = yaml.safe_load(handle)
    except OSError as exc:
        raise InputImageError(f'{path}: cannot read the option file ({exc.strerror})') from None
    opt.update(is_train=False, dist=False, rank=0, world_size=1, auto_resume=False)
    opt.pop('datasets', None)
    opt.setdefault('path', {})
    val = dict(opt.get('val') or {})
    val.pop('metrics', None)
    val.update(samples=args.samples, seed=args.seed)
    if args.tile is not None:
        val['tile'] = {'size': args.tile} if args.overlap is None else {'size': args.tile, 'overlap': args.overlap}
    opt['val'] = val
    return opt


def _method(model, temperature: float | None) -> str:
    """The model's first method, or sampling at ``temperature`` around it."""
    first = model.evaluation_methods()[0]
    if temperature is None:
        return first
    if first == 'prior':
        model.opt['val']['prior_temperatures'] = [temperature]
        return f'prior+{temperature:g}'
    model.opt['val']['temperatures'] = [temperature]
    return model.evaluation_methods()[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 1:
        print('error: --samples must be >= 1', file=sys.stderr)
        return 2
    try:
        files = list_inputs(args.input)
        images = [read_rgb(f) for f in files]  # every input checked before the long run
        options = _model_options(args.opt, args)
    except InputImageError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if args.device == 'auto':
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(args.device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)

    # (importing this module imported flowprior_plugin: its archs and models are registered)
    from basicsr.models import build_model
    from tqdm import tqdm

    options['num_gpu'] = 1 if device.type == 'cuda' else 0
    model = build_model(options)
    method = _method(model, args.temperature)
    os.makedirs(args.output, exist_ok=True)
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    bar = tqdm(total=len(files), unit='img', desc=method)
    for path, img in zip(files, images, strict=True):
        stem = osp.splitext(osp.basename(path))[0]
        bar.set_postfix_str(stem)
        model.feed_data({'lq': torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()})
        tiles = lambda done, total, stem=stem: bar.set_postfix_str(f'{stem} tile {done}/{total}')  # noqa: E731
        draws = model._predict_cropped([method], generator, tiles)
        for k, sr in enumerate(draws[method]):
            sr = sr[0].detach().float().cpu().nan_to_num(0.0, 1.0, 0.0).clamp(0, 1).permute(1, 2, 0).numpy()
            out = (sr[..., ::-1] * 255.0).round().astype(np.uint8)
            cv2.imwrite(osp.join(args.output, f'{stem}.png' if k == 0 else f'{stem}_s{k}.png'), out)
        del model.lq
        bar.update(1)
    bar.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
