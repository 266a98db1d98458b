"""`python -m jax_vlm.prepare`: runs jax_vlm.tools.prepare as the program (see its docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.prepare', run_name='__main__', alter_sys=True)
