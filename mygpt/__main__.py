"""``python -m mygpt`` (and ``torchrun -m mygpt``): the same CLI as the ``mygpt`` command."""

import sys

from mygpt.cli import main

sys.exit(main())
