"""`python -m jax_vlm.aot`: the command line of jax_vlm.tools.aot (see its module docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.aot', run_name='__main__', alter_sys=True)
