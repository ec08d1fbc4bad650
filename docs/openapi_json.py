"""Regenerates docs/openapi.json from docs/openapi.yaml (the Rust tests read the JSON copy:
the workspace has no YAML parser). Run: python3 docs/openapi_json.py"""
import json
import pathlib

import yaml

here = pathlib.Path(__file__).parent
spec = yaml.safe_load((here / "openapi.yaml").read_text())
(here / "openapi.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False) + "\n")
