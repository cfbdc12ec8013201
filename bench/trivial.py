"""The serving benchmark's yardstick: a predict route that does everything the real one does
except the prediction, so that what it costs is what HTTP and the framework cost alone.

It takes its response path from `service.routes.predict.predict`: the route is declared with
the request as its only parameter and reads `job_id` from the path itself (no FastAPI
parameter solving), receives the whole body (as every predict route must) and answers a
pre-encoded `Response`: the same document, a job id and one prediction with ten float32
probabilities, written by orjson as the real route writes it, with the same batch-size
header. It neither parses the form nor decodes the image nor runs the model: that is the
prediction work the benchmark weighs. Nor does it carry the API's middleware (body limits):
what the service adds around its route counts against the service.
"""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request, Response

# service.routes.predict's: importing that module would load Keras and TensorFlow here.
BATCH_HEADER = "Tricklab-Batch-Size"
# A model's answer as the real route holds it: ten float32s, each printed in its shortest
# exact form, as long as a softmax's usually are.
PREDICTION = {
    "label": 0,
    "class_name": "T-shirt/top",
    "probabilities": np.random.default_rng(0).dirichlet(np.ones(10)).astype(np.float32),
}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/jobs/{job_id}/predict")  # first, as in the API's route table
    async def predict(request: Request) -> Response:
        if request.query_params:
            raise HTTPException(422, "this route takes no query parameters")
        job_id: str = request.path_params["job_id"]
        await request.body()
        body = {"job_id": job_id, "predictions": [dict(PREDICTION)]}
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            media_type="application/json",
            headers={BATCH_HEADER: "1"},
        )

    @app.get("/")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app
