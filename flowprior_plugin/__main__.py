"""``python -m flowprior_plugin train|test -opt ...``: the same as the ``basicsr`` command."""

import sys

from flowprior_plugin.cli import main

if __name__ == '__main__':
    sys.exit(main())
