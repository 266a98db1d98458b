"""Small file helpers of the shell layers."""

import json
import os
from typing import Any


def write_json(path: str, value: Any, **dump_options) -> None:
  """Writes `value` as JSON (json.dump options; default indent=1), creating the folder, atomically:
  a reader sees the old file or the whole new one."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, **{'indent': 1, **dump_options})
    f.write('\n')
  os.replace(tmp, path)
