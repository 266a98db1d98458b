"""The one command-line layer of every entry point (train.py, eval.py, `python -m jax_vlm.<tool>`).

Behaviour, the same everywhere:
  --help / -h / --helpfull   the program's description, its flags and the config's keys with their
                             defaults (of --config when given, else the program's default config);
                             exit 0.
  a mistake in the command   an unknown flag or config key, a value of the wrong type, a value out
                             of range (batch size, steps, learning rate, mesh sizes, K, ...) or a
                             config file that fails to load: one sentence naming it, with a
                             suggestion, on stderr; exit 2 (EXIT_USAGE).
  a runtime input error      (a UserError: a missing file, an unreadable dataset, ...): one
                             sentence; exit 1 (EXIT_INPUT).
  SIGTERM                    at any moment: a code path that saves (the trainer) finishes its step
                             and saves; anywhere else the program stops at once; exit 0 either way,
                             and rerunning the same command continues (EXIT_TERMINATED).
  host memory                on Linux with glibc >= 2.35 a program restarts itself once, at start,
                             with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 so that malloc backs
                             XLA:CPU's buffers with transparent huge pages (see
                             `restart_with_huge_pages`; JAX_VLM_HUGE_PAGES=0 turns it off).
  simulated devices          with XLA_FLAGS=--xla_force_host_platform_device_count=N (N > 1) a
                             program gives XLA:CPU's thread pools 4 N threads (PJRT_NPROC), so that
                             collectives among the N devices do not deadlock on a small host (see
                             `collective_threads_environment`).
Every entry point calls `prepare_host()` first thing in its `__main__` block for the last two.
Flag names use underscores; `--some-flag` is read as `--some_flag`.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib.util
import math
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections
from absl import flags
from absl import logging as absl_logging

from jax_vlm.core.errors import UserError

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_TERMINATED = 0
HELP_FLAGS = ('-h', '--help', '--helpfull', '--helpshort', '-help')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(ROOT, 'configs', 'base.py')


class ConfigError(UserError):
  """A mistake in the command line or the config (exit 2), as opposed to a runtime input error."""


class Terminated(BaseException):  # noqa: N818  (not an Exception: nothing may swallow it)
  """Raised by the SIGTERM handler outside the code paths that save on their own."""


def _in_gc_callback(frame) -> bool:
  """Whether `frame` runs inside a garbage-collector callback (jax registers one)."""
  codes = {getattr(cb, '__code__', None) for cb in gc.callbacks}
  while frame is not None:
    if frame.f_code in codes:
      return True
    frame = frame.f_back
  return False


def _on_sigterm(signum, frame) -> None:
  # An exception raised inside a gc callback is printed with a traceback and dropped, so there
  # the signal is sent again a moment later, to land outside it.
  if _in_gc_callback(frame):
    threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
    return
  raise Terminated()


def install_sigterm() -> None:
  """SIGTERM raises Terminated (the trainer installs its own save-then-stop handler meanwhile)."""
  try:
    signal.signal(signal.SIGTERM, _on_sigterm)
  except ValueError:  # not the main thread
    pass


# ------------------------------------------------------------------------------------------------
# Host memory: transparent huge pages for glibc's malloc.

# XLA:CPU allocates a program's large buffers (activations, gradients, the logits) with malloc on
# every run, and the pages behind them go back to the kernel between runs: every train step
# faults its working set in again, 4 KiB at a time (38,488 faults a world-size step, measured with
# getrusage; mallopt's mmap and trim thresholds did not change it). On the 2-core VM a reproduction
# spent 1,431 of its 5,046 CPU s in the kernel on 712 million such faults (docs/benchmarks.md,
# "Session 25"). glibc >= 2.35 backs them with transparent huge pages when this tunable is set, and
# reads it only at start-up, so an entry point restarts itself once with it.
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
HUGE_PAGES_OPT_OUT = 'JAX_VLM_HUGE_PAGES'  # =0: leave malloc as it is
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_pages_environment(environ: Mapping[str, str], libc: str, thp: str
                           ) -> dict[str, str] | None:
  """The environment to restart with so that malloc uses transparent huge pages, or None where
  nothing would change: opted out (JAX_VLM_HUGE_PAGES=0), not glibc >= 2.35 (`libc`, as
  os.confstr('CS_GNU_LIBC_VERSION') says, e.g. 'glibc 2.36'), the kernel's THP `never` (`thp`,
  the text of /sys/kernel/mm/transparent_hugepage/enabled), or a hugetlb tunable already set (by
  an earlier restart, or by the user, whose choice stands)."""
  if environ.get(HUGE_PAGES_OPT_OUT, '1').strip() == '0':
    return None
  name, _, version = (libc or '').partition(' ')
  try:
    major, minor = (int(x) for x in version.split('.')[:2])
  except ValueError:
    return None
  if name != 'glibc' or (major, minor) < (2, 35) or not thp or '[never]' in thp:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = f'{tunables}:{HUGE_PAGES_TUNABLE}' if tunables else HUGE_PAGES_TUNABLE
  return env


def host_huge_pages_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
  """`huge_pages_environment` for `environ` on this host (its glibc and THP setting); None on a
  host without them (not Linux, no THP)."""
  try:
    libc = os.confstr('CS_GNU_LIBC_VERSION')
    with open(_THP_SETTING) as f:
      thp = f.read()
  except (AttributeError, OSError, ValueError):
    return None
  return huge_pages_environment(environ, libc, thp)


def restart_with_huge_pages() -> None:
  """Restarts this process (same interpreter, command line, pid and open files) with the huge-page
  tunable where `host_huge_pages_environment` asks for it; returns where it does not. Only a
  program started from a file (a script or `-m`) restarts: `-c` and standard-input programs cannot
  be read again."""
  env = host_huge_pages_environment(os.environ)
  if env is None or not os.path.isfile(sys.argv[0] if sys.argv else ''):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


# ------------------------------------------------------------------------------------------------
# Threads for XLA:CPU's collectives among simulated devices.

# XLA:CPU runs a collective of N simulated devices as N tasks that each block a thread of one
# shared pool until all N have arrived, and it starts independent collectives of one program
# without waiting for the earlier ones to finish. The pool has max(cores, N) threads, so on a host
# with few cores the blocked tasks of partly-arrived collectives can take every thread, and the
# program hangs until XLA aborts it ("Expected 8 threads to join the rendezvous, but only 7
# of them arrived on time"). Measured on the 2-core VM (a shard_map program with 8 all-gathers of
# 256 x 256 weights, 8 devices, tests/test_collective_threads.py), 8 threads (the default) hung
# within 100 programs in 12 of 12 runs, 9 in 2 of 2, 12 in 1 of 2; with 16 and with 32 threads, 12
# of 12 runs of 300 programs each finished, two processes at once. PJRT_NPROC sets the pool's
# size; XLA reads it once, when jax makes its CPU client, so setting it in os.environ before the
# first jax computation is enough.
COLLECTIVE_THREADS_PER_DEVICE = 4
_DEVICE_COUNT_FLAG = re.compile(r'--xla_force_host_platform_device_count=(\d+)')


def collective_threads_environment(environ: Mapping[str, str], cpu_count: int
                                   ) -> dict[str, str] | None:
  """The variables to add to `environ` so that XLA:CPU's collectives among simulated devices
  do not run out of threads (none hung at 16 or 32 threads for 8 devices, above): PJRT_NPROC =
  max(cpu_count, 4 N) for N devices forced by XLA_FLAGS' --xla_force_host_platform_device_count
  (the last one given). None where nothing would change: no such flag or N < 2, 4 N <= cpu_count,
  or PJRT_NPROC or NPROC already set (the user's choice stands)."""
  counts = _DEVICE_COUNT_FLAG.findall(environ.get('XLA_FLAGS', ''))
  if not counts or 'PJRT_NPROC' in environ or 'NPROC' in environ:
    return None
  devices = int(counts[-1])
  threads = COLLECTIVE_THREADS_PER_DEVICE * devices
  if devices < 2 or threads <= cpu_count:
    return None
  return {'PJRT_NPROC': str(threads)}


def use_collective_threads() -> None:
  """`collective_threads_environment` applied to this process's environment (before jax makes
  its CPU client), which its children inherit; the tests' conftest calls it too."""
  os.environ.update(collective_threads_environment(os.environ, os.cpu_count() or 1) or {})


def prepare_host() -> None:
  """What every entry point does first, in its `__main__` block: enough threads for collectives
  among simulated CPU devices (`use_collective_threads`), then malloc on transparent huge pages
  (`restart_with_huge_pages`). Not part of `run`, which tests call in-process: a restart there
  would restart pytest."""
  use_collective_threads()
  restart_with_huge_pages()


# ------------------------------------------------------------------------------------------------
# Config keys.


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """Dotted key -> value of every leaf of a ConfigDict (dict-valued fields are leaves too)."""
  out = {}
  items = config.items() if isinstance(config, (ml_collections.ConfigDict, dict)) else ()
  for k, v in items:
    key = f'{prefix}{k}'
    if isinstance(v, ml_collections.ConfigDict):
      out.update(flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def _suggest(name: str, choices: Iterable[str]) -> str:
  choices = list(choices)
  close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
  if not close:  # a misspelt leaf under the right section: compare leaves only
    leaf = name.split('.')[-1]
    by_leaf = {c.split('.')[-1]: c for c in choices}
    close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)]
  return f'did you mean {close[0]}?' if close else 'see --help for the keys.'


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads configs/NAME.py[:ARG] as --config does (get_config(ARG), or get_base_config());
  ConfigError (one sentence) when it fails. Overrides in sys.argv are not applied here."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'The config file {path!r} does not exist; pass --config configs/NAME.py '
                      f'(e.g. {os.path.relpath(DEFAULT_CONFIG)}).')
  try:
    module_spec = importlib.util.spec_from_file_location('_cli_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if hasattr(module, 'get_config'):
      value = module.get_config(arg) if arg else module.get_config()
    else:
      value = module.get_base_config()
  except BaseException as e:  # noqa: BLE001  (any error in the user's file is one sentence)
    if isinstance(e, (KeyboardInterrupt, Terminated, SystemExit)):
      raise
    raise ConfigError(f'The config file {spec!r} failed to load ({_first_line(e)}); fix the file '
                      'or its argument.') from None
  if not isinstance(value, ml_collections.ConfigDict):
    raise ConfigError(f'The config file {spec!r} did not return a ConfigDict from get_config(); '
                      'return one.')
  return value


def _first_line(e: BaseException) -> str:
  text = str(e.args[0] if getattr(e, 'args', None) else e).strip() or type(e).__name__
  text = text.replace("\\'", "'").replace('\\n', '\n')
  line = text.splitlines()[0] if text else type(e).__name__
  return f'{type(e).__name__}: {line}'[:200]


# ------------------------------------------------------------------------------------------------
# Ranges of the keys a run cannot start without: (check, what it must be).

def _positive(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _non_negative(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _mesh_size(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1)


def _k_list(v) -> bool:
  try:
    return len(v) > 0 and all(isinstance(k, int) and k >= 1 for k in v)
  except TypeError:
    return False


RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    'train.global_batch_size': (_positive, 'a positive integer'),
    'train.num_steps': (_positive, 'a positive integer'),
    'train.learning_rate': (lambda v: _non_negative(v), 'a finite number >= 0'),
    'train.warmup_steps': (_non_negative, 'an integer >= 0'),
    'train.grad_accum_steps': (_positive, 'a positive integer'),
    'train.log_every': (_positive, 'a positive integer'),
    'train.checkpoint_every': (_positive, 'a positive integer'),
    'train.keep_checkpoints': (_non_negative, 'an integer >= 0 (0 keeps all)'),
    'mesh.data': (_mesh_size, 'a positive integer or -1 (fill the devices)'),
    'mesh.fsdp': (_mesh_size, 'a positive integer or -1 (fill the devices)'),
    'mesh.tensor': (_mesh_size, 'a positive integer or -1 (fill the devices)'),
    'data.max_seq_len': (_positive, 'a positive integer'),
    'world_eval.k_list': (_k_list, 'a non-empty list of integers >= 1 (e.g. 1,2,4,8)'),
    'world_eval.batch_size': (_positive, 'a positive integer'),
    'world_eval.max_items': (_non_negative, 'an integer >= 0 (0 = all)'),
    'eval.batch_size': (_positive, 'a positive integer'),
    'eval.k': (_positive, 'a positive integer'),
    'eval.num_samples': (_positive, 'a positive integer'),
    'bootstrap.top_k': (_non_negative, 'an integer >= 0'),
    'reproduce.dynamics_steps': (_non_negative, 'an integer >= 0 (0 = train.num_steps)'),
    'reproduce.fdp_steps': (_non_negative, 'an integer >= 0 (0 = train.num_steps)'),
    'reproduce.curve_points': (_positive, 'a positive integer'),
    'reproduce.eval_items': (_non_negative, 'an integer >= 0 (0 = all)'),
    'reproduce.fdp_learning_rate': (_non_negative,
                                    'a finite number >= 0 (0 = train.learning_rate)'),
}


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """ConfigError (one sentence) for the first key of RANGES the config holds out of range."""
  flat = flatten(config)
  for key, (ok, what) in RANGES.items():
    if key in flat and flat[key] is not None and not ok(flat[key]):
      raise ConfigError(f'config.{key}={flat[key]!r} is out of range; it must be {what} '
                        f'(pass --config.{key}=VALUE).')


# ------------------------------------------------------------------------------------------------
# Parsing.


def underscore_flags(argv: Sequence[str]) -> list[str]:
  """`--some-flag[=v]` -> `--some_flag[=v]` (flag names only, not values or positionals)."""
  out = []
  for arg in argv:
    if arg.startswith('--') and len(arg) > 2:
      name, sep, value = arg[2:].partition('=')
      arg = '--' + name.replace('-', '_') + sep + value
    out.append(arg)
  return out


def _config_spec(argv: Sequence[str], name: str = 'config') -> str | None:
  for i, arg in enumerate(argv):
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  return None


def help_text(doc: str, fl: flags.FlagValues, config: ml_collections.ConfigDict | None,
              config_source: str, skip: Iterable[str] = ()) -> str:
  lines = [doc.strip(), '', 'Flags:']
  skip = set(skip)
  for name in sorted(fl):
    flag = fl[name]
    if name != flag.name or name in skip or name.startswith('config.') or name in _ABSL_NAMES:
      continue
    lines.append(f'  --{name}={flag.default!r}    {flag.help}')
  if config is not None:
    lines += ['', f'Config keys (--config.KEY=VALUE) with their defaults, from {config_source}:']
    for key, value in sorted(flatten(config).items()):
      lines.append(f'  {key} = {value!r}')
  return '\n'.join(lines)


_ABSL_NAMES = frozenset(flags.FlagValues().__dict__) | {
    'logtostderr', 'alsologtostderr', 'log_dir', 'verbosity', 'v', 'logger_levels',
    'stderrthreshold', 'showprefixforinfo', 'run_with_pdb', 'pdb_post_mortem', 'pdb',
    'run_with_profiling', 'profile_file', 'use_cprofile_for_profiling', 'only_check_args',
    'help', 'helpshort', 'helpfull', 'helpxml', '?', 'flagfile', 'undefok', 'log_every_n',
    'use_absl_log_file', 'alsologtostderr'}


def parse(argv: Sequence[str], fl: flags.FlagValues, doc: str, *,
          default_config: str | None = DEFAULT_CONFIG) -> list[str]:
  """Parses `argv` into `fl`; help exits 0, a mistake raises ConfigError (one sentence).

  Before absl sees them, every `--config.KEY=VALUE` is checked against the loaded config (unknown
  key -> a suggestion) and its value against the key's type.
  """
  argv = underscore_flags(list(argv))
  has_config = 'config' in fl
  spec = _config_spec(argv) if has_config else None
  config = load_config_file(spec) if spec else None
  if any(a in HELP_FLAGS for a in argv[1:]):
    source = spec
    if config is None and has_config and default_config:
      try:
        config, source = load_config_file(default_config), os.path.relpath(default_config)
      except ConfigError:
        config = None
    print(help_text(doc, fl, config, source or ''))
    raise SystemExit(EXIT_OK)
  if has_config:
    flat = flatten(config) if config is not None else {}
    for arg in argv[1:]:
      if not arg.startswith('--config.'):
        continue
      key, sep, value = arg[len('--config.'):].partition('=')
      if config is None:
        raise ConfigError(f'--config.{key} needs a config; pass --config configs/NAME.py first.')
      if key not in flat and not any(k.startswith(key + '.') for k in flat):
        raise ConfigError(f'--config.{key} names a config key that does not exist in {spec}; '
                          f'{_suggest(key, flat)}')
      if sep and key in flat:
        _check_type(key, value, flat[key])
  try:
    return fl(argv)
  except flags.UnrecognizedFlagError as e:
    name = getattr(e, 'flagname', '') or _first_line(e)
    known = [n for n in fl if not n.startswith('config.') and n not in _ABSL_NAMES]
    raise ConfigError(f'--{name} is not a flag of this program; {_suggest(name, known)}'
                      ) from None
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    raise ConfigError(f'The flags could not be applied ({_first_line(e)}); see --help.') from None


def _check_type(key: str, text: str, default: Any) -> None:
  """ConfigError when `text` cannot be read as the type of the key's default."""
  kind = type(default)
  try:
    if isinstance(default, bool):
      ok = text.lower() in ('true', 'false', '1', '0', 'yes', 'no')
    elif isinstance(default, int):
      int(text)
      ok = True
    elif isinstance(default, float):
      float(text)
      ok = True
    else:
      ok = True
  except ValueError:
    ok = False
  if not ok:
    name = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false'}.get(
        kind.__name__, f'a {kind.__name__}')
    raise ConfigError(f'--config.{key}={text} is not {name} (the default is {default!r}); pass '
                      f'{name}.')


def run(body: Callable[[list[str]], int | None], fl: flags.FlagValues, doc: str,
        argv: Sequence[str] | None = None, *, default_config: str | None = DEFAULT_CONFIG,
        config_flag: Any = None, rewrite: Callable[[list[str]], list[str]] | None = None) -> int:
  """Parses, checks the config's ranges, runs `body(rest_of_argv)`; returns the exit code.

  `config_flag`: the program's --config holder, whose loaded config is range-checked before the
  body runs. `rewrite`: maps argv before parsing (e.g. eval.py's short flag names).
  """
  install_sigterm()
  absl_logging.use_absl_handler()
  argv = list(sys.argv if argv is None else argv)
  if rewrite is not None:
    argv = rewrite(argv)

  def parse_and_run():
    rest = parse(argv, fl, doc, default_config=default_config)
    if config_flag is not None and config_flag.value is not None:
      check_ranges(config_flag.value)
    return body(rest)
  return exit_code(parse_and_run)


def exit_code(fn: Callable[[], int | None]) -> int:
  """Runs `fn`; its result as an exit code, or a mistake reported in one sentence: ConfigError
  2, UserError 1, SIGTERM 0."""
  try:
    code = fn()
    return EXIT_OK if code is None else int(code)
  except ConfigError as e:
    _error(str(e))
    return EXIT_USAGE
  except UserError as e:
    _error(str(e))
    return EXIT_INPUT
  except Terminated:
    _error('Stopped by SIGTERM; what was written is kept, and rerunning the same command '
           'continues.')
    return EXIT_TERMINATED


def _error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)


def check_keys(given: Mapping[str, Any], known: Iterable[str], where: str) -> None:
  """ConfigError for a key of `given` that is not in `known` (with a suggestion)."""
  known = list(known)
  for key in given:
    if key not in known:
      raise ConfigError(f'{where} key {key!r} does not exist; {_suggest(key, known)}')


# ------------------------------------------------------------------------------------------------
# argparse programs (convert, prepare): the same rules.


class ArgumentParser(argparse.ArgumentParser):
  """argparse with this layer's behaviour: a mistake is one sentence and exit 2; `--some-flag`
  is read as `--some_flag` (declare underscore names); no abbreviated flag names."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('allow_abbrev', False)
    super().__init__(*args, **kwargs)

  def parse_args(self, args=None, namespace=None):  # noqa: D102
    args = underscore_flags(sys.argv[1:] if args is None else list(args))
    return super().parse_args(args, namespace)

  def error(self, message: str):  # noqa: D102
    _error(f'{message.rstrip(".")} ({self.prog}); see {self.prog} --help.')
    raise SystemExit(EXIT_USAGE)


def run_argparse(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
                 argv: Sequence[str] | None = None) -> int:
  """Parses with `parser` (a cli.ArgumentParser), runs `body(args)`; returns the exit code (as
  `run`: ConfigError 2, UserError 1, SIGTERM 0)."""
  install_sigterm()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or a mistake (2, already reported)
    return int(e.code or 0)
  return exit_code(lambda: body(args))
