"""`python -m worker`, except that the process dies outright (no cleanup, no goodbye) when it
trains a job whose seed is 666: the poison job of the reliability tests. The crash is
injected here, at the edge, so the worker code under test is the real one."""

import os
import sys

from worker import training
from worker.__main__ import main

POISON_SEED = 666
_train = training.train


def _train_or_die(spec, *args, **kwargs):  # type: ignore[no-untyped-def]
    if spec.seed == POISON_SEED:
        os._exit(99)
    return _train(spec, *args, **kwargs)


training.train = _train_or_die

if __name__ == "__main__":
    sys.exit(main())
