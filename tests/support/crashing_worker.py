"""`python -m worker`, except that the process dies outright (no cleanup, no goodbye) when it
trains a job whose seed is 666, alone or packed: the poison job of the reliability tests. The
crash is injected here, at the edge, so the worker code under test is the real one."""

import os
import sys

from worker import packing, training
from worker.__main__ import main

POISON_SEED = 666
_train, _train_pack = training.train, packing.train_pack


def _train_or_die(spec, *args, **kwargs):  # type: ignore[no-untyped-def]
    if spec.seed == POISON_SEED:
        os._exit(99)
    return _train(spec, *args, **kwargs)


def _train_pack_or_die(branches, *args, **kwargs):  # type: ignore[no-untyped-def]
    if any(branch.spec.seed == POISON_SEED for branch in branches):
        os._exit(99)
    return _train_pack(branches, *args, **kwargs)


training.train, packing.train_pack = _train_or_die, _train_pack_or_die

if __name__ == "__main__":
    sys.exit(main())
