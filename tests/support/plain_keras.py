"""Models loaded by a Python that cannot import tricklab, as a user's would be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# Run with `python -I` in an empty folder, so neither the repository nor the current directory
# is on sys.path; the script also hides the project's editable install, which is on the meta
# path of this virtualenv. argv: the folder holding inputs.npy and one <variant>.keras per model.
# Each model's answer, or its loading error, is reported on its own, so that one model that
# cannot load fails its own tests only.
LOADER = """
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
OURS = ("core", "worker", "service")
assert all(importlib.util.find_spec(name) is None for name in OURS), "tricklab is importable"
from pathlib import Path
import keras, numpy as np
folder = Path(sys.argv[1])
inputs = np.load(folder / "inputs.npy")
answers = {}
for path in sorted(folder.glob("*.keras")):
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        answers[path.stem] = {"error": f"{type(error).__name__}: {error}"}
        continue
    outputs = keras.ops.convert_to_numpy(model(inputs, training=False))
    answers[path.stem] = {
        "outputs": outputs.tolist(),
        "modules": [type(layer).__module__ for layer in model.layers],
        "imported": sorted(name for name in sys.modules if name.split(".")[0] in OURS),
    }
print(json.dumps(answers))
"""


def load_without_tricklab(folder: Path, cwd: Path) -> dict[str, Any]:
    """What a Python that cannot import tricklab answers for each model in the folder (see
    LOADER), run from `cwd`, an empty folder."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(folder)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(json.loads(result.stdout))
