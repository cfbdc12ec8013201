"""A body parser that kills the worker process running it outright (no cleanup, no goodbye),
as the kernel's OOM killer would: put in place of one of service.bodies' parsers, it makes the
real process pool lose a worker mid-request. Light to import, as the worker imports it."""

import os
from typing import NoReturn


def die(*_: object) -> NoReturn:
    os._exit(137)
