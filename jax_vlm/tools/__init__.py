"""Command-line tools, run as `python -m jax_vlm.<tool>`: aot (compile ahead of time for a TPU/GPU
mesh), convert (checkpoint formats), export (a trained stage's params), prepare (tokenize a data set
once)."""
