"""ml_collections presets: every run is `--config configs/NAME.py[:ARG]` plus overrides."""
