"""The LINF route end to end through the ``basicsr`` command, on the real option files (shrunk):
stage 1 by likelihood on random-scale windows, the LINF-LP prior on the frozen result, and the
multi-scale test writing one table with every scale, method and the seam metric."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import ARBITRARY_SCALE_HR, REPO_ROOT, run_cli, shrink_options, write_paired_images

SCALES = ['x2', 'x3', 'x4', 'x6', 'x8', 'x12']
METHODS = ['prior', 'tau0', 'tau0.8']


def _real_options(name: str, data) -> dict:
    return shrink_options(yaml.safe_load((REPO_ROOT / 'options' / name).read_text()), data)


def _quick(opt: dict, total_iter: int) -> dict:
    """A few iterations, validated and saved once at the end, no tensorboard."""
    opt['train']['total_iter'] = total_iter
    opt['train']['scheduler']['milestones'] = [1000]
    opt['train']['optim_g']['lr'] = 1e-3
    opt['val']['val_freq'] = total_iter
    opt['logger'].update(print_freq=1, save_checkpoint_freq=total_iter, use_tb_logger=False)
    return opt


@pytest.fixture(scope='module')
def route(tmp_path_factory):
    root = tmp_path_factory.mktemp('linf_route')
    side = ARBITRARY_SCALE_HR
    data = write_paired_images(root / 'data', count=2, hr_size=(side, side), scale=4)
    logs = {}

    stage1 = _quick(_real_options('linf_patch_edsr_baseline.yml', data), total_iter=3)
    (root / 'stage1.yml').write_text(yaml.safe_dump(stage1, sort_keys=False))
    result = run_cli(['train', '-opt', 'stage1.yml'], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    flow_path = root / 'experiments' / stage1['name'] / 'models' / 'net_g_latest.pth'
    logs['stage1'] = (root / 'experiments' / stage1['name']).glob('train_*.log')

    stage2 = _quick(_real_options('linf_prior.yml', data), total_iter=3)
    stage2['path'].update(pretrain_network_flow=str(flow_path), param_key_flow='params')
    (root / 'stage2.yml').write_text(yaml.safe_dump(stage2, sort_keys=False))
    result = run_cli(['train', '-opt', 'stage2.yml'], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    prior_path = root / 'experiments' / stage2['name'] / 'models' / 'net_g_latest.pth'
    logs['stage2'] = (root / 'experiments' / stage2['name']).glob('train_*.log')

    test = _real_options('test_linf_prior.yml', data)
    test['path'].update(
        pretrain_network_flow=str(flow_path), param_key_flow='params', pretrain_network_g=str(prior_path)
    )
    (root / 'test.yml').write_text(yaml.safe_dump(test, sort_keys=False))
    result = run_cli(['test', '-opt', 'test.yml'], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return {'root': root, 'results': root / 'results' / test['name'], 'logs': logs}


def test_both_training_stages_log_their_losses(route):
    stage1_log = next(route['logs']['stage1']).read_text()
    assert 'l_nll:' in stage1_log and 'Validation DIV2K_val_x4' in stage1_log
    stage2_log = next(route['logs']['stage2']).read_text()
    assert 'l_percep:' in stage2_log and 'l_latent:' in stage2_log


def test_multi_scale_table_has_every_scale_method_and_metric(route):
    summary = json.loads((route['results'] / 'summary.json').read_text())
    rows = summary['rows']
    assert [(r['scale'], r['method']) for r in rows] == [(s, m) for s in SCALES for m in METHODS]
    for row in rows:
        expected_group = 'in-distribution' if row['scale'] in ('x2', 'x3', 'x4') else 'out-of-distribution'
        assert row['group'] == expected_group and row['images'] == 2
        for metric in ('psnr', 'ssim', 'lr_psnr', 'seam', 'periodicity'):
            assert math.isfinite(row[metric]), (row['scale'], row['method'], metric)
        assert row['nonfinite'] == 0
        assert math.isnan(row['lpips'])  # no AlexNet weights offline: reported as skipped
    assert 'lpips' in summary['skipped_metrics']
    table = (route['results'] / 'summary.md').read_text()
    columns = (
        'dataset scale group method images psnr ssim lr_psnr lpips seam periodicity '
        'psnr_linf_lp ssim_linf_lp lr_psnr_linf_lp nonfinite'
    ).split()
    assert '| ' + ' | '.join(columns) + ' |' in table
    assert table.count('| DIV2K_val_x12 |') == 3 and 'lpips skipped' in table


def test_each_scale_has_its_own_images_and_table(route):
    results = route['results']
    for scale in SCALES:
        assert (results / f'summary_DIV2K_val_{scale}.md').is_file()
        for method in METHODS:
            images = list((results / 'visualization' / f'DIV2K_val_{scale}' / method).glob('*.png'))
            assert len(images) == 2, (scale, method)
