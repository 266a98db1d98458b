"""Ahead-of-time compilation (jax_vlm/tools/aot.py): tables, errors, the JSON writer, a CPU-device
compile of the real train step, and (only where libtpu is importable) a compile for a TPU
topology."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from configs import train_smoke
from jax_vlm.core.errors import UserError
from jax_vlm.tools import aot
from jax_vlm.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_chip_table_lookup():
  v5e = aot.chip_spec('v5e:16x16')
  assert (v5e.hbm_gib, v5e.peak_bf16_flops) == (16.0, 197e12)
  assert aot.chip_spec('v5p:4x4x4').hbm_gib == 95.0
  assert aot.chip_spec('v4:2x2x2').peak_bf16_flops == 275e12
  assert aot.chip_spec('V6E:8x8').hbm_gib == 32.0
  with pytest.raises(UserError, match="'v9:2x2' names no known chip"):
    aot.chip_spec('v9:2x2')


def test_global_batch_rounds_to_the_mesh():
  assert aot.aot_global_batch(96, 32) == 96
  assert aot.aot_global_batch(96, 64) == 128  # tie between 64 and 128 goes up
  assert aot.aot_global_batch(96, 256) == 256
  assert aot.aot_global_batch(96, 8, accum_steps=2) == 96
  assert aot.aot_global_batch(100, 16) == 96


def test_mfu_from_an_estimated_time():
  assert aot.estimate_mfu(2e12, 1.0, 4, 1e12) == pytest.approx(0.5)
  assert aot.estimate_mfu(2e12, None, 4, 1e12) is None
  assert aot.estimate_mfu(2e12, 1.0, 4, None) is None


def test_libtpu_missing_says_what_to_install(monkeypatch):
  monkeypatch.setattr(aot.chips, 'libtpu_available', lambda: False)
  with pytest.raises(UserError, match=rf'pip install "jax\[tpu\]=={jax.__version__}"'):
    aot.topology_devices('v5e:4x8')


def test_mesh_that_does_not_divide_the_devices():
  cfg = train_smoke.get_config('fsdp')
  cfg.mesh.data = 3
  with pytest.raises(UserError, match='do not divide the 8 devices'):
    aot.abstract_train_step(cfg, jax.devices()[:8])


def test_sweep_points_parse_and_apply():
  cfg = train_smoke.get_config('fsdp')
  point = aot.parse_point('rules=fsdp_tp, tensor=2 ,mode=lora,remat=dots,model.scan_layers=false')
  new = aot.apply_point(cfg, point)
  assert (new.mesh.rules, new.mesh.tensor, new.train.mode) == ('fsdp_tp', 2, 'lora')
  assert new.model.remat_policy == 'dots' and new.model.scan_layers is False
  assert new.model.lora_rank == aot.PAPER_LORA_RANK and cfg.model.lora_rank == 0  # a copy
  assert aot.apply_point(cfg, {'rules': 'dp'}).mesh.fsdp == 1
  with pytest.raises(UserError, match="'colour' is not in the config"):
    aot.apply_point(cfg, {'colour': 'red'})
  with pytest.raises(UserError, match='is not key=value'):
    aot.parse_point('rules')


def test_json_writer(tmp_path):
  path = tmp_path / 'sub' / 'r.json'
  aot.write_json(str(path), {'fits': True, 'memory_per_chip_gib': 1.5, 'hbm_per_chip_gib': 16.0,
                             'estimated_step_s': 0.25, 'mfu': 0.4})
  assert json.loads(path.read_text()) == {'estimated_step_s': 0.25, 'fits': True,
                                          'hbm_per_chip_gib': 16.0, 'memory_per_chip_gib': 1.5,
                                          'mfu': 0.4}


def test_same_program_as_the_trainer(tmp_path):
  """The AOT tool lowers the Trainer's own step (build_train_step): the same StableHLO."""
  cfg = train_smoke.get_config('fsdp_tp,lora')
  devices = jax.devices()[:8]
  parts = aot.abstract_train_step(cfg, devices)
  t = trainer.Trainer(cfg, str(tmp_path), devices=devices)
  with jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
    theirs = t._step_fn.lower(parts.state, parts.batch).as_text()
  ours = aot.lower_train_step(parts).as_text()
  assert ours == theirs
  assert parts.global_batch == cfg.train.global_batch_size and parts.seq_len == 32


def test_cpu_compile_reports_memory_cost_and_decode():
  cfg = train_smoke.get_config('fsdp')
  r = aot.analyze_topology(cfg, 'cpu', devices=jax.devices()[:8], num_candidates=4)
  assert r['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1} and r['chips'] == 8
  assert r['argument_gib'] > 0 and r['memory_per_chip_gib'] >= r['argument_gib']
  assert r['alias_gib'] > 0  # the donated train state is reused for the new one
  assert r['compiler_flops'] > 0 and r['model_flops_per_step'] > 0
  assert r['fits'] is None and r['mfu'] is None  # no HBM / peak for a CPU host
  assert r['decode']['batch'] == 8 and r['decode']['memory_per_chip_gib'] > 0
  text = aot.format_report(r)
  assert 'COMPILER-ESTIMATED' in text and 'decode step (batch 8' in text


def test_out_of_hbm_compile_error_is_a_does_not_fit_row():
  # The message libtpu gave for Anole-7B LoRA on v5e:16x16 with remat=dots.
  msg = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
         'temporaries (29.68G) exceeds available HBM (15.75G).')
  assert aot.out_of_memory(msg) == {'fits': False, 'temp_gib': 29.68, 'hbm_per_chip_gib': 15.75}
  assert aot.out_of_memory('mesh axes do not divide 8 devices') == {}
  row = aot.sweep_row('anole', {'topology': 'v5e:16x16', 'error': msg, 'mesh_text': 'rules=fsdp',
                                **aot.out_of_memory(msg)})
  assert row['fits'] is False and row['temp_gib'] == 29.68
  assert '| NO | - | 15.75 | 29.68 |' in aot.sweep_markdown([row])


def test_sweep_table_keeps_failed_points(tmp_path):
  cfg = train_smoke.get_config('fsdp')
  rows = aot.run_sweep(cfg, ['cpu'], ['rules=fsdp', 'rules=fsdp_tp,tensor=3'], name='smoke',
                       decode=False, log=lambda s: None)
  assert rows[0]['error'] == '' and rows[0]['mesh'] == '1x8x1'
  assert 'do not divide' in rows[1]['error']
  md = aot.sweep_markdown(rows)
  assert md.count('\n') == 4 and '| smoke | cpu |' in md
  csv_text = aot.sweep_csv(rows)
  assert csv_text.splitlines()[0].split(',')[:3] == ['config', 'topology', 'chips']
  # A time estimate above the chips' peak is flagged, not silently reported.
  flagged = aot.sweep_markdown([dict(rows[0], mfu=6.9, estimated_step_s=0.07)])
  assert 'implausible' in flagged and 'implausible' not in md


def _run_cli(args, env_extra=None, timeout=240):
  env = dict(os.environ, **(env_extra or {}))
  env.pop('XLA_FLAGS', None)
  env.pop('PJRT_NPROC', None)  # conftest's threads are for its 8 devices
  return subprocess.run([sys.executable, '-m', 'jax_vlm.aot', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_unknown_chip_is_one_sentence():
  out = _run_cli(['--config', 'configs/train_smoke.py', '--topology', 'v9:2x2'], timeout=120)
  assert out.returncode == 1
  assert "error: TPU topology 'v9:2x2' names no known chip" in out.stderr
  assert 'Traceback' not in out.stderr


@pytest.mark.skipif(not aot.libtpu_available(),
                    reason='libtpu is not importable here (pip install "jax[tpu]" or put it on '
                           'PYTHONPATH); the TPU topology compile needs it')
def test_tpu_topology_compile(tmp_path):
  path = tmp_path / 'r.json'
  out = _run_cli(['--config', 'configs/train_smoke.py', '--topology', 'v5e:2x2', '--json',
                  str(path)])
  assert out.returncode == 0, out.stderr[-2000:]
  r = json.loads(path.read_text())
  assert r['chips'] == 4 and r['hbm_per_chip_gib'] == 16.0 and r['fits'] is True
  assert 0 < r['memory_per_chip_gib'] < 1 and r['estimated_step_s'] > 0 and 0 < r['mfu'] < 1
  assert 'COMPILER-ESTIMATED' in out.stdout
  # libtpu gives v5p programs an optimal_seconds, but for a scanned model it counts one layer:
  # the estimate must come from the 1-2 layer extrapolation (Anole-7B read 1,051% MFU without).
  out = _run_cli(['--config', 'configs/train_smoke.py', '--topology', 'v5p:2x2x1', '--json',
                  str(path), '--config.model.num_layers=4', '--nodecode'])
  assert out.returncode == 0, out.stderr[-2000:]
  r = json.loads(path.read_text())
  assert 'extrapolation' in r['estimate_source'] and 0 < r['mfu'] < 1
  bad = _run_cli(['--config', 'configs/train_smoke.py', '--topology', 'v5e:3x3'])
  assert bad.returncode == 1 and "error: TPU topology 'v5e:3x3' does not exist" in bad.stderr


def test_roofline_and_layer_extrapolation():
  v5e = aot.chip_spec('v5e:2x2')
  assert aot.roofline_seconds(197e12, 0.0, v5e) == pytest.approx(1.0)
  assert aot.roofline_seconds(0.0, 819e9, v5e) == pytest.approx(1.0)
  # 1- and 2-layer compiles extrapolate to the FLOPs of an unscanned 3-layer program.
  cfg = train_smoke.get_config('fsdp')
  cfg.model.num_layers = 3
  devices = jax.devices()[:8]
  counts = aot.per_layer_counts(cfg, devices, 32, 8, decode_rows=None)
  cfg.model.scan_layers = False
  parts = aot.abstract_train_step(cfg, devices)
  flops = aot._cost(aot.lower_train_step(parts).compile())['flops']
  assert counts['train']['flops'] == pytest.approx(flops, rel=0.02)
