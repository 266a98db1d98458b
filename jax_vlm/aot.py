"""`python -m jax_vlm.aot`: runs jax_vlm.tools.aot as the program (see its docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.tools.aot', run_name='__main__', alter_sys=True)
