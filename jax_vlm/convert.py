"""`python -m jax_vlm.convert`: runs jax_vlm.tools.convert as the program (see its docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.convert', run_name='__main__', alter_sys=True)
