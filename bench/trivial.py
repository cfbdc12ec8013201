"""The serving benchmark's yardstick: FastAPI answering the predict route with a constant,
without reading the request. What it costs is what HTTP and the framework cost alone."""

from __future__ import annotations

from fastapi import FastAPI

ANSWER = {
    "job_id": "trivial",
    "predictions": [{"label": 0, "class_name": "T-shirt/top", "probabilities": [0.1] * 10}],
}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/jobs/{job_id}/predict")
    async def predict(job_id: str) -> dict[str, object]:
        return ANSWER

    return app
