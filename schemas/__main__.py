"""Write each shipped schema's JSON Schema: ``python -m schemas [OUT_DIR]`` (default ``schemas/json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas import ALL

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "json"
out.mkdir(parents=True, exist_ok=True)
for name, model in ALL.items():
    (out / f"{name}.schema.json").write_text(json.dumps(model.model_json_schema(), indent=2) + "\n")
    print(out / f"{name}.schema.json")
