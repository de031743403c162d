"""The README's promises: its two commands exist, and its protocol example runs as written."""

from __future__ import annotations

import re

from conftest import REPO_ROOT

README = (REPO_ROOT / 'README.md').read_text()


def test_the_two_commands_are_make_targets():
    makefile = (REPO_ROOT / 'Makefile').read_text()
    assert 'make demo' in README and 'make test' in README
    assert re.search(r'^demo: setup$', makefile, re.M) and re.search(r'^test: setup$', makefile, re.M)
    assert 'make test' in (REPO_ROOT / '.ci' / 'run').read_text()


def test_protocol_examples_run_and_their_shapes_hold():
    blocks = re.findall(r'```python\n(.*?)```', README, re.S)
    assert len(blocks) >= 2, 'the README lost its protocol examples (SRFlow, then LINF)'
    scope: dict = {}
    exec(compile(blocks[0], 'README.md', 'exec'), scope)  # noqa: S102  (our own documentation)
    assert [tuple(z.shape) for z in scope['z']] == [(1, 6, 64, 64), (1, 96, 16, 16)]
    assert tuple(scope['sr'].shape) == (1, 3, 128, 128) and scope['bits'].shape == (1,)
    assert len(scope['samples']) == 4
    # The LINF example reuses the first one's imports and LR image.
    exec(compile(blocks[1], 'README.md', 'exec'), scope)  # noqa: S102
    assert tuple(scope['sr_x3'].shape) == (1, 3, 36, 36)
    assert scope['bits'].shape == (1,) and bool(scope['bits'].isfinite().all())
