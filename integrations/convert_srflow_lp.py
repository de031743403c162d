"""Convert the authors' released SRFlow-LP latent module to a BasicSR weights file.

Usage::

    python integrations/convert_srflow_lp.py SRFlow-LP.pth experiments/pretrained_models/srflow_lp.pth

The output holds ``{'params': state_dict}`` (BasicSR's default ``param_key``) for
``LatentPriorNet`` with ``lr_encoder: false`` and a UNet generator; the script prints the
``network_g`` options that load it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('released', type=Path, help="the authors' SRFlow-LP.pth")
    parser.add_argument('output', type=Path, help='where to write {"params": converted state dict}')
    parser.add_argument(
        '--trust-file',
        action='store_true',
        help='load with full unpickling if the weights-only loader refuses the file (only for files you trust)',
    )
    args = parser.parse_args(argv)

    # Imported here so that --help works without BasicSR's import cost.
    from flowprior_plugin.archs.latent_prior_arch import SRFLOW_LP_RELEASE, LatentPriorNet, describe_state_dict
    from flowprior_plugin.checkpoints import describe_checkpoint_mismatch
    from flowprior_plugin.errors import FlowPriorError

    try:
        released = torch.load(args.released, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        print(f'error: no such file: {args.released}', file=sys.stderr)
        return 1
    except Exception as err:  # the weights-only unpickler refuses arbitrary objects
        if not args.trust_file:
            print(
                f'error: {args.released} is not a plain weights file ({err}); '
                'rerun with --trust-file if you trust its source',
                file=sys.stderr,
            )
            return 1
        released = torch.load(args.released, map_location='cpu', weights_only=False)

    try:
        converted = SRFLOW_LP_RELEASE.filter_fn(released)  # says so when it is no SRFlow-LP file
        channels = [int(converted[k].shape[0]) for k in converted if k.endswith('.head.weight')]
        depth = len({k.split('.')[3] for k in converted if k.startswith('levels.0.generator.downs.')})
        width = int(converted['levels.0.generator.stem.0.weight'].shape[0])
        features = int(converted['levels.0.prior_encoder.conv5.weight'].shape[0])
        options = dict(
            latent_channels=channels,
            generator={'type': 'UNet', 'depth': depth, 'width': width},
            prior_features=features,
            lr_encoder=False,
        )
        # The check every loader runs, on the options printed below (no memory: meta tensors).
        with torch.device('meta'):
            mismatch = describe_checkpoint_mismatch(LatentPriorNet(**options), converted)
        if mismatch:
            raise FlowPriorError(f'the options this script would print do not load it: {mismatch}')
    except FlowPriorError as err:
        print(f'error: {args.released}: {err}', file=sys.stderr)
        return 1

    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'params': converted}, args.output)
    print(f'wrote {args.output}: {describe_state_dict(converted)}')
    print('network_g options that load it:')
    print('  type: LatentPriorNet')
    print(f'  latent_channels: {channels}  # filled in from the flow by the learned-prior model')
    print(f'  generator: {{type: UNet, depth: {depth}, width: {width}}}')
    print(f'  prior_features: {features}')
    print('  lr_encoder: false')
    return 0


if __name__ == '__main__':
    sys.exit(main())
