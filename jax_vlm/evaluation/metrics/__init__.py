"""Metrics of predicted frames (L1, CLIP-I, CLIP-T, DINO) and actions (BLEU, ROUGE, BERTScore).

Shell-layer code: the embedding models run in PyTorch from local transformers directories, never
downloaded. Import the submodules: `jax_vlm.evaluation.metrics.image_metrics` and
`jax_vlm.evaluation.metrics.text_metrics`.
"""
