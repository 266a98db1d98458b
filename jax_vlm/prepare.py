"""`python -m jax_vlm.prepare`: the command line of jax_vlm.tools.prepare (see its module docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.prepare', run_name='__main__', alter_sys=True)
