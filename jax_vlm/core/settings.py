"""Config sections with defaults, and dotted overrides ('objectives.idp_share': 0) on a copy.

Stages and evaluations read their own section with `section_with_defaults`, so a config may leave a
section out and a misspelt key fails before any work; per-stage settings are dotted overrides
applied with `with_overrides`.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from jax_vlm.core.errors import require


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Any,
                   where: str, keep: Mapping[str, Any] | Any = ()) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted `overrides` applied, except the keys that are in `keep`.

  `overrides` is a dict or (key, value) pairs; a key that does not exist in the config is a
  UserError naming `where` (e.g. 'stage_overrides.train_fdp'). `keep`: keys a caller has set on
  purpose (e.g. the config's own stage_overrides), which these defaults do not replace.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  keep = set(dict(keep))
  for key, value in dict(overrides).items():
    if key in keep:
      continue
    *parents, leaf = key.split('.')
    node = out
    for p in parents:
      require(p in node, f'{where} key {key!r} does not exist in the config; fix the key.')
      node = node[p]
    require(leaf in node, f'{where} key {key!r} does not exist in the config; fix the key.')
    node[leaf] = value
  return out


def section_with_defaults(defaults: Mapping[str, Any], given, name: str
                          ) -> ml_collections.ConfigDict:
  """`config.<name>` (`given`, may be None) on top of `defaults`; unknown keys are a UserError."""
  out = ml_collections.ConfigDict(dict(defaults))
  if given:
    unknown = sorted(set(given.keys()) - set(defaults))
    require(not unknown, f'config.{name} has unknown key(s) {", ".join(unknown)}; use '
            f'{", ".join(sorted(defaults))}.')
    for k in given.keys():
      out[k] = given[k]
  return out
