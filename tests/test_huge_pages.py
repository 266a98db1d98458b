"""Entry points restart once with glibc's huge-page tunable (jax_vlm/core/cli.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

from jax_vlm.core import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THP = 'always [madvise] never\n'


def test_environment_adds_the_tunable_and_keeps_the_users():
  env = cli.huge_pages_environment({'PATH': '/bin'}, 'glibc 2.36', THP)
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  env = cli.huge_pages_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'glibc 2.39',
                                   '[always] madvise never\n')
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


@pytest.mark.parametrize('environ,libc,thp', [
    ({'JAX_VLM_HUGE_PAGES': '0'}, 'glibc 2.36', THP),  # opted out
    ({}, 'glibc 2.31', THP),  # before the tunable existed
    ({}, '', THP),  # not glibc (musl, macOS)
    ({}, 'glibc x', THP),
    ({}, 'glibc 2.36', 'always madvise [never]\n'),  # THP off in the kernel
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'glibc 2.36', THP),  # the user's choice
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, 'glibc 2.36', THP),  # already restarted
])
def test_environment_changes_nothing(environ, libc, thp):
  assert cli.huge_pages_environment(environ, libc, thp) is None


def _host_restarts() -> bool:
  environ = {k: v for k, v in os.environ.items()
             if k not in ('GLIBC_TUNABLES', 'JAX_VLM_HUGE_PAGES')}
  return cli.host_huge_pages_environment(environ) is not None


def test_a_program_restarts_once_with_its_command_line(tmp_path):
  """A script that logs each start: it starts twice where this host supports the tunable (same
  pid, same arguments, the tunable set), once where it does not, and never loops."""
  log = tmp_path / 'starts.txt'
  script = tmp_path / 'prog.py'
  script.write_text(textwrap.dedent(f'''
      import os, sys
      sys.path.insert(0, {ROOT!r})
      with open({str(log)!r}, 'a') as f:
        f.write(f"{{os.getpid()}} {{os.environ.get('GLIBC_TUNABLES', '')}} {{sys.argv[1:]}}\\n")
      from jax_vlm.core import cli
      cli.restart_with_huge_pages()
      print('ran', flush=True)
      '''))
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'JAX_VLM_HUGE_PAGES')}
  out = subprocess.run([sys.executable, str(script), '--a', 'b c'], env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count('ran') == 1
  starts = log.read_text().splitlines()
  if _host_restarts():
    assert len(starts) == 2, starts
    first, second = (line.split(' ', 2) for line in starts)
    assert first[0] == second[0]  # the same process, restarted in place
    assert first[1] == '' and second[1] == 'glibc.malloc.hugetlb=1'
    assert starts[0].endswith("['--a', 'b c']") and starts[1].endswith("['--a', 'b c']")
  else:
    assert len(starts) == 1, starts
  # Opted out: one start, whatever the host.
  log.unlink()
  out = subprocess.run([sys.executable, str(script)], env={**env, 'JAX_VLM_HUGE_PAGES': '0'},
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and len(log.read_text().splitlines()) == 1
