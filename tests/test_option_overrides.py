"""The pre-flight check sees the options as BasicSR will run them: with --force_yml applied."""

from __future__ import annotations

import torch
import yaml

from flowprior_plugin.option_checks import apply_overrides, check_option_file


def test_overrides_follow_basicsr_value_rules_and_make_missing_sections():
    opt = {'train': {'total_iter': 10, 'latent_opt': {'type': 'LatentL1Loss'}}}
    apply_overrides(opt, ['train:total_iter=6', 'train:latent_opt=~', 'val:temperatures=[0.0, 0.5]', 'name=x'])
    assert opt == {'train': {'total_iter': 6, 'latent_opt': None}, 'val': {'temperatures': [0.0, 0.5]}, 'name': 'x'}


def test_a_path_fixed_on_the_command_line_is_not_reported_missing(tmp_path):
    weights = tmp_path / 'prior.pth'
    torch.save({'params': {}}, weights)
    opt = {
        'name': 'overrides',
        'model_type': 'FlowPriorModel',
        'scale': 4,
        'network_flow': {'type': 'SRFlowNet', 'scale': 4},
        'network_g': {'type': 'LatentPriorNet'},
        'path': {'pretrain_network_g': str(tmp_path / 'missing.pth')},
    }
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(opt))
    assert any('missing.pth' in p for p in check_option_file(str(path), is_train=False))
    fixed = check_option_file(str(path), is_train=False, overrides=[f'path:pretrain_network_g={weights}'])
    assert not any('pretrain_network_g' in p for p in fixed), fixed
