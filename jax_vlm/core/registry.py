"""The one registry of named plug-ins: pipeline stages, benchmarks and AURORA-BENCH predictors.

  kind         registered object                                   registered in
  'stage'      fn(config, stage_dir) -> None                       where the stage is defined
  'benchmark'  fn(config, workdir) -> metrics dict                 jax_vlm/evaluation/
  'predictor'  factory(config) -> predictor (item -> frame)        jax_vlm/evaluation/

A plug-in registers where it is defined:

    from jax_vlm.core import registry

    @registry.register('stage', 'build_data')
    def build_data(config, stage_dir): ...

and its module is imported by the package that runs that kind (pipeline/stages.py for stages,
evaluation/__init__.py for benchmarks and predictors), so the folder that holds a new stage or
benchmark is the only place that changes.
"""

from __future__ import annotations

from typing import Any, Callable

from jax_vlm.core.errors import require

KINDS = ('stage', 'benchmark', 'predictor')
_ENTRIES: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f'registry kind {kind!r} is unknown; use one of {KINDS}')


def register(kind: str, name: str) -> Callable[[Any], Any]:
  """Decorator: registers `obj` as the `kind` called `name`; returns `obj` unchanged."""
  _check_kind(kind)

  def wrap(obj):
    entries = _ENTRIES[kind]
    if name in entries and entries[name] is not obj:
      raise ValueError(f'{kind} {name!r} is registered twice')
    entries[name] = obj
    return obj
  return wrap


def get(kind: str, name: str) -> Any:
  """The `kind` called `name`; a UserError that lists the registered names if there is none."""
  _check_kind(kind)
  entries = _ENTRIES[kind]
  require(name in entries,
          f'{kind} {name!r} is not registered; use one of {", ".join(sorted(entries))}.')
  return entries[name]


def names(kind: str) -> list[str]:
  """The registered names of `kind`, sorted."""
  _check_kind(kind)
  return sorted(_ENTRIES[kind])
