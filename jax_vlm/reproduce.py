"""`python -m jax_vlm.reproduce`: runs jax_vlm.pipeline.reproduce (see its docstring)."""

import runpy

if __name__ == '__main__':
  runpy.run_module('jax_vlm.pipeline.reproduce', run_name='__main__', alter_sys=True)
