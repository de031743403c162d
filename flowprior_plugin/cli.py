"""The ``basicsr`` console command: BasicSR's own train/test pipelines with plugins loaded.

BasicSR 1.4.2 ships no command; its pipelines are run as ``python basicsr/train.py -opt ...``,
which only knows BasicSR's own registries. ``basicsr train|test`` loads this plugin and every
package that declares itself under the entry-point group ``basicsr.plugins``, checks the option
file, then hands over to ``basicsr.train.train_pipeline`` / ``basicsr.test.test_pipeline`` with
the current directory as the root (``experiments/``, ``results/``, ``tb_logger/`` go there).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import sys
from collections.abc import Sequence

import yaml

PLUGIN_GROUP = 'basicsr.plugins'

USAGE_EXAMPLES = """examples:
  basicsr train -opt options/srflow_prior.yml
  basicsr train -opt options/srflow_prior.yml --auto_resume
  basicsr test  -opt options/test_srflow_prior.yml
  torchrun --nproc_per_node=2 -m flowprior_plugin train -opt options/srflow_prior.yml --launcher pytorch
"""


def _add_basicsr_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of BasicSR's ``parse_options``, declared here for --help and early checks."""
    parser.add_argument('-opt', required=True, metavar='YML', help='path to the option yml file')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm'],
        default='none',
        help='job launcher. Default: none.',
    )
    parser.add_argument('--auto_resume', action='store_true', help='resume from the newest training state')
    parser.add_argument('--debug', action='store_true', help="BasicSR's debug mode (frequent logs, tiny runs)")
    parser.add_argument('--local_rank', type=int, default=0, help='set by older torch launchers')
    parser.add_argument(
        '--force_yml',
        nargs='+',
        default=None,
        metavar='KEY=VALUE',
        help='override yml entries, e.g. train:total_iter=10 (":" separates levels)',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='basicsr',
        description='Run BasicSR training or testing with flowprior-plugin (and every other installed '
        f'BasicSR plugin of the entry-point group "{PLUGIN_GROUP}") registered.',
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', metavar='{train,test}')
    sub.required = True
    for name, text in (
        ('train', 'train a model from an option file (experiments/<name>/ in the current directory)'),
        ('test', 'evaluate a model from an option file (results/<name>/ in the current directory)'),
    ):
        p = sub.add_parser(name, help=text, description=text, epilog=USAGE_EXAMPLES)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        _add_basicsr_flags(p)
    return parser


def load_plugins() -> list[str]:
    """Import this plugin, then every package registered under ``basicsr.plugins``.

    Returns:
        list[str]: Names of the plugins loaded.
    """
    import flowprior_plugin  # noqa: F401  (registers ours, and makes basicsr importable)

    loaded = ['flowprior_plugin']
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.value.split(':')[0] == 'flowprior_plugin':
            continue
        entry.load()
        loaded.append(entry.value)
    return loaded


_UNKNOWN_TYPE = re.compile(r"No object named '(?P<name>[^']+)' found in '(?P<registry>[^']+)' registry")


def explain_error(exc: BaseException, opt_path: str) -> str | None:
    """One-line message for errors a user causes; None for bugs (those keep their traceback)."""
    from flowprior_plugin.errors import FlowPriorError

    if isinstance(exc, FlowPriorError):
        return str(exc)
    if isinstance(exc, KeyError):
        match = _UNKNOWN_TYPE.search(str(exc))
        if match:
            return unknown_type_message(match['name'], match['registry'], opt_path)
    return None


def unknown_type_message(name: str, registry_name: str, opt_path: str) -> str:
    from flowprior_plugin.option_checks import registry_by_name

    registry = registry_by_name(registry_name)
    known = ', '.join(sorted(registry.keys())) if registry is not None else '?'
    return f"{opt_path}: unknown {registry_name} type '{name}'. Registered {registry_name} types: {known}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    opt_path = args.opt
    if not os.path.isfile(opt_path):
        print(f'basicsr {args.command}: error: -opt: no such option file: {opt_path}', file=sys.stderr)
        return 2

    load_plugins()
    from flowprior_plugin.basicsr_patches import use_dist_params
    from flowprior_plugin.option_checks import apply_overrides, check_option_file

    # Checked as BasicSR will run it: with the --force_yml overrides applied.
    problems = check_option_file(
        opt_path, is_train=args.command == 'train', launcher=args.launcher, overrides=args.force_yml
    )
    if problems:
        for problem in problems:
            print(f'basicsr {args.command}: error: {problem}', file=sys.stderr)
        return 2
    with open(opt_path) as handle:
        opt = apply_overrides(yaml.safe_load(handle), args.force_yml)
    use_dist_params(opt.get('dist_params'))  # BasicSR's parse_options does not pass them on

    # BasicSR's parse_options reads sys.argv itself.
    sys.argv = [f'basicsr {args.command}', *argv[1:]]
    root_path = os.getcwd()
    folders = RunFolders(root_path, args.command, str(opt.get('name')))
    try:
        if args.command == 'train':
            from basicsr.train import train_pipeline

            train_pipeline(root_path)
        else:
            from basicsr.test import test_pipeline

            test_pipeline(root_path)
    except Exception as exc:  # noqa: BLE001  (user errors become one line; bugs keep their traceback)
        folders.undo()
        message = explain_error(exc, opt_path)
        if message is None:
            raise
        print(f'basicsr {args.command}: error: {message}', file=sys.stderr)
        return 2
    return 0


class RunFolders:
    """The folders a run makes (``experiments/<name>``, ``tb_logger/<name>``, ``results/<name>``),
    so that a run that fails before saving anything leaves none of them behind: BasicSR would
    otherwise archive the half-made folder on the next run. A folder that existed before the run is
    never removed; one that BasicSR archived (renamed to ``<name>_archived_<time>``) gets its name
    back. Only rank 0 (the rank that makes them) tidies up.
    """

    def __init__(self, root: str, command: str, name: str) -> None:
        parents = ('experiments', 'tb_logger') if command == 'train' else ('results',)
        names = (name, f'debug_{name}')
        self.paths = [os.path.join(root, parent, n) for parent in parents for n in names]
        self.existed = {path: self._archives(path) for path in self.paths if os.path.exists(path)}
        self.absent = [path for path in self.paths if path not in self.existed]

    @staticmethod
    def _archives(path: str) -> set[str]:
        parent, name = os.path.split(path)
        return {entry for entry in os.listdir(parent) if entry.startswith(f'{name}_archived_')}

    @staticmethod
    def _holds_checkpoints(path: str) -> bool:
        return any(files for sub in ('models', 'training_states') for _, _, files in os.walk(os.path.join(path, sub)))

    def undo(self) -> None:
        if os.environ.get('RANK', '0') != '0':
            return
        for path in self.absent:
            if os.path.isdir(path) and not self._holds_checkpoints(path):
                shutil.rmtree(path, ignore_errors=True)
        for path, archives in self.existed.items():
            new = sorted(self._archives(path) - archives)
            if len(new) == 1 and os.path.isdir(path) and not self._holds_checkpoints(path):
                shutil.rmtree(path, ignore_errors=True)
                os.rename(os.path.join(os.path.dirname(path), new[0]), path)


if __name__ == '__main__':
    sys.exit(main())
