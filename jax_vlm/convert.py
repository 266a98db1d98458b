"""`python -m jax_vlm.convert`: the command line of jax_vlm.tools.convert (see its module docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.convert', run_name='__main__', alter_sys=True)
