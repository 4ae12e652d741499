"""``python -m mygpt`` (and ``torchrun -m mygpt``): the same CLI as the ``mygpt`` command."""

import os
import sys

from mygpt.cli import main

rc = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A launcher's child: everything it writes is already on disk (atomic, fsynced) and the
    # process group is destroyed. Interpreter teardown can still abort in gloo's C++ threads
    # ("terminate called without an active exception", seen ~1 run in 10 here), which the
    # launcher reports as a failed rank, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc or 0)
sys.exit(rc)
