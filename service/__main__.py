"""`python -m service`: serve the API on TRICKLAB_HOST:TRICKLAB_PORT."""

from __future__ import annotations

import uvicorn

from core.config import get_settings
from core.logs import setup_logging


def serve(factory: str = "service.app:create_app") -> None:
    """Run an app factory under uvicorn as the API runs (the serving benchmark's trivial
    endpoint is served through here too, so the two are compared like for like)."""
    settings = get_settings()
    setup_logging(settings.log_level)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        limit_concurrency=settings.max_concurrent_requests,  # beyond it: 503, not more memory
        log_config=None,  # keep the one log format set up above
    )


if __name__ == "__main__":
    serve()
