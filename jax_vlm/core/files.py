"""Small file helpers of the shell layers."""

import json
import os
from typing import Any


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON, atomically (a reader sees the old file or the new one)."""
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)
