"""``import flowprior_plugin`` registers everything, twice is harmless, no name collides."""

from __future__ import annotations

import json
import subprocess
import sys

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from flowprior_plugin import torchvision_compat

OURS = {
    'arch': ['SRFlowNet', 'HCFlowNet', 'LINFNet', 'LatentPriorNet'],
    'model': ['FlowLikelihoodModel', 'FlowSRModel', 'FlowPriorModel'],
    'loss': ['LatentL1Loss', 'VGGPerceptualLoss'],
    'metric': [
        'calculate_lpips',
        'calculate_lpips_pt',
        'calculate_lr_psnr',
        'calculate_grid_seam',
        'calculate_grid_periodicity',
    ],
    'dataset': ['ArbitraryScaleSRDataset'],
}
# What Real-ESRGAN, the plugin most often installed beside ours, registers in the same registries.
REAL_ESRGAN = ['RealESRGANModel', 'RealESRNetModel', 'RealESRGANDataset', 'RealESRGANPairedDataset', 'SRVGGNetCompact']


def _basicsr_only_names() -> dict[str, list[str]]:
    """Registry contents of BasicSR alone, in a fresh interpreter without our plugin."""
    code = (
        'import json, sys, importlib.util\n'
        f'spec = importlib.util.spec_from_file_location("compat", {torchvision_compat.__file__!r})\n'
        'compat = importlib.util.module_from_spec(spec); spec.loader.exec_module(compat)\n'
        'compat.install_functional_tensor_stand_in()\n'
        'import basicsr\n'
        "assert 'flowprior_plugin.archs' not in sys.modules\n"
        'from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY, '
        'DATASET_REGISTRY\n'
        'print(json.dumps({r._name: sorted(r.keys()) for r in '
        '[ARCH_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY, DATASET_REGISTRY]}))\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_everything_registered():
    registries = {
        'arch': ARCH_REGISTRY,
        'model': MODEL_REGISTRY,
        'loss': LOSS_REGISTRY,
        'metric': METRIC_REGISTRY,
        'dataset': DATASET_REGISTRY,
    }
    for kind, names in OURS.items():
        for name in names:
            assert name in registries[kind], f'{name} is not in the {kind} registry'


def test_no_collision_with_basicsr_or_real_esrgan():
    basicsr_names = _basicsr_only_names()
    for kind, names in OURS.items():
        clash = set(names) & (set(basicsr_names[kind]) | set(REAL_ESRGAN))
        assert not clash, f'{kind} names shared with BasicSR/Real-ESRGAN: {clash}'


REREGISTER = """
import importlib, importlib.metadata, json, pkgutil, sys
import flowprior_plugin  # route 1: the import
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
from flowprior_plugin.generators import GENERATOR_REGISTRY

registries = [ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY, GENERATOR_REGISTRY]
before = {r._name: sorted(r.keys()) for r in registries}
# route 2: the entry point BasicSR plugins are found by (the basicsr command loads it this way)
(entry,) = [e for e in importlib.metadata.entry_points(group='basicsr.plugins') if e.value == 'flowprior_plugin']
assert entry.load() is flowprior_plugin
# Run every module's registration again, as a second import of the files would.
names = sorted(m.name for m in pkgutil.walk_packages(flowprior_plugin.__path__, 'flowprior_plugin.'))
names = [name for name in names if name in sys.modules]
reloaded = []
for name in names:
    if name.rsplit('.', 1)[-1] in ('__main__', 'cli', 'demo'):
        continue
    importlib.reload(sys.modules[name])
    reloaded.append(name)
after = {r._name: sorted(r.keys()) for r in registries}
fresh = ARCH_REGISTRY.get('SRFlowNet') is sys.modules['flowprior_plugin.archs.srflow_arch'].SRFlowNet
try:
    ARCH_REGISTRY.register(type('SRFlowNet', (), {}))  # another object under a taken name
    collision = 'accepted'
except AssertionError:
    collision = 'refused'
print(json.dumps({'same': before == after, 'fresh': fresh, 'reloaded': reloaded, 'collision': collision}))
"""


def test_importing_twice_and_reimporting_modules_is_harmless():
    """In a fresh interpreter: the plugin through both routes (import, entry point), then every
    registering module executed again; the registries hold the same names, now the newest
    definitions, and a different object under a taken name is still refused."""
    out = subprocess.run([sys.executable, '-c', REREGISTER], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result['same'] and result['fresh'] and result['collision'] == 'refused', result
    assert 'flowprior_plugin.archs.srflow_arch' in result['reloaded']
    assert 'flowprior_plugin.models.flow_prior_model' in result['reloaded']


def test_fresh_interpreter_imports_plugin_and_basicsr_train():
    code = 'import flowprior_plugin\nfrom basicsr.train import train_pipeline\nprint("ok")'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]


def test_stand_in_only_when_module_missing(monkeypatch):
    import torchvision

    monkeypatch.delitem(sys.modules, torchvision_compat.LEGACY_MODULE, raising=False)
    monkeypatch.setattr(torchvision_compat.importlib.util, 'find_spec', lambda name: object())
    assert torchvision_compat.install_functional_tensor_stand_in() is False  # "real" module present
    assert torchvision_compat.LEGACY_MODULE not in sys.modules
    monkeypatch.undo()
    if not hasattr(torchvision.transforms, 'functional_tensor'):
        stand_in = sys.modules[torchvision_compat.LEGACY_MODULE]
        assert stand_in.rgb_to_grayscale is torchvision.transforms.functional.rgb_to_grayscale


def test_old_model_name_still_builds_the_likelihood_model():
    # Option files from before the rename say model_type: FlowSRModel.
    from flowprior_plugin.models.flow_likelihood_model import FlowLikelihoodModel

    assert MODEL_REGISTRY.get('FlowSRModel') is FlowLikelihoodModel
