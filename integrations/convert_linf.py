"""Convert a released LINF checkpoint (the flow, or the LINF-LP latent module) to a BasicSR weights file.

Usage::

    python integrations/convert_linf.py rrdb-linf.pth experiments/pretrained_models/rrdb_linf.pth
    python integrations/convert_linf.py LINF-LP.pth experiments/pretrained_models/linf_lp.pth

The kind of file is recognised from its content: ``{'model': {'name', 'args', 'sd'}, ...}`` is a
LINF flow (``LINFNet``), ``{'prior_model': {'name': 'unet', ...}}`` with LINF-LP keys is the
latent module (``LatentPriorNet``). The output holds ``{'params': state_dict}`` (BasicSR's default
``param_key``); the script prints the ``network_g`` options that load it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _load(path: Path, trust_file: bool) -> object | None:
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        print(f'error: no such file: {path}', file=sys.stderr)
        return None
    except Exception as err:  # the weights-only unpickler refuses arbitrary objects
        if not trust_file:
            print(
                f'error: {path} is not a plain weights file ({err}); rerun with --trust-file if you trust its source',
                file=sys.stderr,
            )
            return None
        return torch.load(path, map_location='cpu', weights_only=False)


def _yaml(value: object) -> str:
    """A flow-style YAML rendering of an option value (bools, numbers, strings, lists, dicts)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, dict):
        return '{' + ', '.join(f'{k}: {_yaml(v)}' for k, v in value.items()) + '}'
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_yaml(v) for v in value) + ']'
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('released', type=Path, help='a released LINF .pth (flow or LINF-LP module)')
    parser.add_argument('output', type=Path, help='where to write {"params": converted state dict}')
    parser.add_argument(
        '--trust-file',
        action='store_true',
        help='load with full unpickling if the weights-only loader refuses the file (only for files you trust)',
    )
    args = parser.parse_args(argv)

    # Imported here so that --help works without BasicSR's import cost.
    from flowprior_plugin.archs.latent_prior_arch import (
        LINF_LP_RELEASE,
        LINF_LP_RELEASE_OPTIONS,
        LatentPriorNet,
        describe_state_dict,
    )
    from flowprior_plugin.archs.linf_arch import (
        LINF_RELEASE,
        LINFNet,
        describe_linf_architecture,
        read_linf_architecture,
    )
    from flowprior_plugin.checkpoints import describe_checkpoint_mismatch
    from flowprior_plugin.errors import FlowPriorError

    released = _load(args.released, args.trust_file)
    if released is None:
        return 1
    try:
        if LINF_LP_RELEASE.recognise(released):
            converted = LINF_LP_RELEASE.filter_fn(released)
            lines = [f'wrote {args.output}: LINF-LP latent module, {describe_state_dict(converted)}']
            lines += ['network_g options that load it:', '  type: LatentPriorNet']
            for key, value in LINF_LP_RELEASE_OPTIONS.items():
                note = '  # filled in from the flow by the learned-prior model' if key == 'latent_channels' else ''
                lines.append(f'  {key}: {_yaml(value)}{note}')
            options = dict(LINF_LP_RELEASE_OPTIONS, latent_channels=[27])
            net_type = LatentPriorNet
        else:
            converted = LINF_RELEASE.filter_fn(released)  # also takes a bare LINF state dict
            arch = read_linf_architecture(converted)
            lines = [f'wrote {args.output}: LINF {describe_linf_architecture(arch)}']
            lines += ['network_g options that load it:', '  type: LINFNet']
            options = {'encoder': arch['encoder'], 'patch_size': arch['patch_size']}
            lines += [f'  encoder: {arch["encoder"]}', f'  patch_size: {arch["patch_size"]}']
            for key, default in (('hidden_dim', 256), ('flow_layers', 10), ('mlp_layers', 3), ('in_nc', 3)):
                options[key] = arch[key]
                if arch[key] != default:
                    lines.append(f'  {key}: {arch[key]}')
            blocks = 'num_blocks' if arch['encoder'] == 'edsr_baseline' else 'nb'
            options['encoder_opt'] = {'nf': arch['nf'], blocks: arch['encoder_blocks']}
            released_blocks = 16 if arch['encoder'] == 'edsr_baseline' else 23
            if (arch['nf'], arch['encoder_blocks']) != (64, released_blocks):
                lines.append(f'  encoder_opt: {{nf: {arch["nf"]}, {blocks}: {arch["encoder_blocks"]}}}')
            net_type = LINFNet
        # The check every loader runs, on the options printed (no memory: meta tensors).
        with torch.device('meta'):
            mismatch = describe_checkpoint_mismatch(net_type(**options), converted)
    except FlowPriorError as err:
        print(f'error: {args.released}: {err}', file=sys.stderr)
        return 1
    if mismatch:
        # The LINF-LP options printed are the release's: a file of other sizes needs its own.
        print(f'note: {args.released}: with the options below, {mismatch}', file=sys.stderr)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'params': converted}, args.output)
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
