"""``python engine/_torchrun.py ARGS`` is ``python -m torch.distributed.run ARGS`` (torchrun), with a prompt exit.

Same module, arguments and behaviour; the one difference is that the interpreter's shutdown
collections skip the heap torch built (see ``engine._launcher.skip_shutdown_collections``),
so torchrun exits about as soon as its ranks have instead of 0.5-1 s later. Run by path and
importing nothing from ``engine``, so it works wherever the script that asked for it does.
"""

import atexit
import gc
import os
import runpy
import sys

if __name__ == "__main__":
    sys.path[0] = os.getcwd()  # what ``python -m`` puts first, not this file's directory
    atexit.register(gc.freeze)  # registered first, so it runs last; torchrun holds no user objects
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
