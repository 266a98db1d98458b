"""`python -m jax_vlm.export`: runs jax_vlm.tools.export as the program (see its docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.export', run_name='__main__', alter_sys=True)
