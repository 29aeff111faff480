"""Write edge_client/models/digits_reference/: bootstrap() of the shipped model, precomputed.

Run after tools/build_models.py changes the model:
    .venv/bin/python tools/build_reference.py
edge_client/tests/test_pipeline.py checks the committed files still equal a fresh bootstrap.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_client.extractors import TFLiteExtractor  # noqa: E402
from edge_client.pipeline import BUNDLE_KNN, BUNDLE_TRANSFORM, SHIPPED_REFERENCE, bootstrap  # noqa: E402


def main() -> None:
    transform, knn = bootstrap(TFLiteExtractor.shipped())
    SHIPPED_REFERENCE.mkdir(exist_ok=True)
    (SHIPPED_REFERENCE / BUNDLE_TRANSFORM).write_text(json.dumps(transform.to_params()))
    np.savez(SHIPPED_REFERENCE / BUNDLE_KNN, **knn.to_state())
    print(f"wrote {SHIPPED_REFERENCE}")


if __name__ == "__main__":
    main()
