"""AURORA (training triplets) and AURORA-BENCH (evaluation items), read in their released layouts.

McGill-NLP/AURORA ships, relative to the repository root:
  data/<task>/train.json   a JSON list of {"input", "output", "instruction", ...} (paths relative to
                           the root; MagicBrush items also carry "mask" and "img_id")
  data/<task>/valid.json   the same with "prompt" (sometimes also "pos") for "instruction"
  test.json                AURORA-BENCH: a list of {"input", "output" (absent for clevr, emu and
                           epic), "instruction", "task", optional "id", ...}; images under
                           data/<task>/images

The loaders never stop for a bad item: a missing target image, a missing source image, an empty or
over-long instruction or a malformed entry is counted (and listed) in the returned report.
"""

import collections
import dataclasses
import json
import os
from typing import Any, Optional, Sequence, Union

from data.errors import UserError
from data.records import MAX_ACTION_CHARS, clean_action

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class AuroraItem:
  """One item: source frame, instruction and (when there is one) target frame.

  `index` is the item's position in its JSON list; paths are absolute. `output_path` is None when
  the item lists no target; it is kept (and the report counts it) when it lists one that is missing.
  """
  index: int
  task: str
  instruction: str
  input_path: str
  output_path: Optional[str]
  id: Optional[str] = None

  @property
  def has_target(self) -> bool:
    return self.output_path is not None and os.path.isfile(self.output_path)


@dataclasses.dataclass
class TaskCounts:
  items: int = 0  # items kept
  with_target: int = 0  # kept items that list a target
  target_missing: list[str] = dataclasses.field(default_factory=list)  # listed but not on disk
  no_target: int = 0  # kept items without a target

  @property
  def scorable(self) -> int:
    """Items whose target image exists, i.e. that image metrics can score."""
    return self.with_target - len(self.target_missing)


@dataclasses.dataclass
class AuroraReport:
  """Per-task counts and every skipped entry with its reason."""
  source: str
  tasks: dict[str, TaskCounts] = dataclasses.field(default_factory=dict)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped_items: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)

  def task(self, name: str) -> TaskCounts:
    return self.tasks.setdefault(name, TaskCounts())

  def skip(self, index: int, task: str, reason: str) -> None:
    self.skipped[reason] += 1
    self.skipped_items.append((index, task, reason))

  @property
  def num_items(self) -> int:
    return sum(c.items for c in self.tasks.values())

  def summary(self) -> str:
    lines = [f'{self.source}: {self.num_items} items in {len(self.tasks)} tasks']
    for name in sorted(self.tasks):
      c = self.tasks[name]
      line = (f'  {name}: {c.items} items, {c.with_target} with a target '
              f'({len(c.target_missing)} missing on disk), {c.no_target} without')
      lines.append(line)
      lines.extend(f'    missing target: {p}' for p in c.target_missing)
    for reason, n in sorted(self.skipped.items()):
      lines.append(f'  skipped {n}: {reason}')
    return '\n'.join(lines)


def _read_json_list(path: str, what: str) -> list:
  try:
    with open(path) as f:
      entries = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'{what} {path} is not valid JSON ({e}); restore the file.') from e
  if not isinstance(entries, list):
    raise UserError(f'{what} {path} holds a {type(entries).__name__}, not a list of items; '
                    'restore the file.')
  return entries


def _resolve(root: str, path: str) -> str:
  return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


def _parse_items(entries: Sequence[Any], root: str, default_task: Optional[str],
                 report: AuroraReport, max_instruction_chars: Optional[int],
                 require_target: bool) -> list[AuroraItem]:
  items = []
  for index, entry in enumerate(entries):
    if not isinstance(entry, dict):
      report.skip(index, default_task or '?', 'entry is not an object')
      continue
    task = entry.get('task', default_task)
    if not isinstance(task, str) or not task:
      report.skip(index, '?', 'no task')
      continue
    source = entry.get('input')
    if not isinstance(source, str) or not source:
      report.skip(index, task, 'no input path')
      continue
    # valid.json files name the instruction "prompt".
    raw = entry.get('instruction', entry.get('prompt'))
    instruction, reason = clean_action(raw, max_instruction_chars)
    if reason:
      report.skip(index, task, reason.replace('action', 'instruction'))
      continue
    input_path = _resolve(root, source)
    if not os.path.isfile(input_path):
      report.skip(index, task, 'input image missing')
      continue
    target = entry.get('output')
    output_path = _resolve(root, target) if isinstance(target, str) and target else None
    counts = report.task(task)
    if output_path is None:
      if require_target:
        report.skip(index, task, 'no target listed')
        continue
      counts.no_target += 1
    else:
      if not os.path.isfile(output_path):
        if require_target:
          report.skip(index, task, 'target image missing')
          continue
        counts.target_missing.append(output_path)
      counts.with_target += 1
    counts.items += 1
    ident = entry.get('id')
    items.append(AuroraItem(index=index, task=task, instruction=instruction, input_path=input_path,
                            output_path=output_path, id=None if ident is None else str(ident)))
  return items


def load_aurora_bench(root: PathLike, max_instruction_chars: Optional[int] = None
                      ) -> tuple[list[AuroraItem], AuroraReport]:
  """Reads AURORA-BENCH: `<root>/test.json` and the images it names (relative to root).

  Items without a target (clevr, emu, epic) and items whose listed target file is missing are kept
  (edit-quality judges score them from the source alone) and counted per task in the report.

  Args:
    root: the benchmark root (a McGill-NLP/AURORA checkout or the aurora-bench data set).
    max_instruction_chars: skip longer instructions; None (default) keeps the benchmark whole.

  Returns:
    (items in test.json order, report).
  """
  root = os.path.abspath(os.fspath(root))
  test_json = os.path.join(root, 'test.json')
  if not os.path.isfile(test_json):
    raise UserError(f'AURORA-BENCH root {root} has no test.json; point it at a McGill-NLP/AURORA '
                    'checkout (test.json plus data/).')
  report = AuroraReport(source=test_json)
  items = _parse_items(_read_json_list(test_json, 'AURORA-BENCH file'), root, None, report,
                       max_instruction_chars, require_target=False)
  return items, report


def aurora_tasks(root: PathLike, split: str = 'train') -> list[str]:
  """Task directories under `<root>/data` that have a `<split>.json`, sorted."""
  data_dir = os.path.join(os.fspath(root), 'data')
  if not os.path.isdir(data_dir):
    return []
  return sorted(t for t in os.listdir(data_dir)
                if os.path.isfile(os.path.join(data_dir, t, f'{split}.json')))


def load_aurora_train(root: PathLike, tasks: Optional[Sequence[str]] = None, split: str = 'train',
                      max_instruction_chars: Optional[int] = MAX_ACTION_CHARS
                      ) -> tuple[list[AuroraItem], AuroraReport]:
  """Reads AURORA training triplets from `<root>/data/<task>/<split>.json`.

  Only complete triplets are returned (source and target on disk, usable instruction); the rest
  are counted in the report's `skipped` with their reasons.

  Args:
    root: the McGill-NLP/AURORA checkout (paths in the JSON files are relative to it).
    tasks: task directory names; None means every `data/<task>` that has `<split>.json`.
    split: 'train' or 'valid'.
    max_instruction_chars: instructions longer than this are skipped (None: no limit).

  Returns:
    (items task by task in file order, report).
  """
  root = os.path.abspath(os.fspath(root))
  names = list(tasks) if tasks is not None else aurora_tasks(root, split)
  if not names:
    raise UserError(f'No data/<task>/{split}.json under AURORA root {root}; point it at a '
                    'McGill-NLP/AURORA checkout with the training data.')
  report = AuroraReport(source=f'{root}/data/*/{split}.json')
  items = []
  for task in names:
    path = os.path.join(root, 'data', task, f'{split}.json')
    if not os.path.isfile(path):
      raise UserError(f'AURORA task file {path} does not exist; check the task name {task!r}.')
    entries = _read_json_list(path, 'AURORA task file')
    items.extend(_parse_items(entries, root, task, report, max_instruction_chars,
                              require_target=True))
  return items, report
