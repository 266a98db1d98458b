"""`python -m jax_vlm.export`: the command line of jax_vlm.tools.export (see its module docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.export', run_name='__main__', alter_sys=True)
