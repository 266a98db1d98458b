"""AURORA-BENCH evaluation of next-frame prediction (the paper's Table 2 numbers).

  python eval.py --config configs/aurora_bench.py --config.bench_root=ROOT --config.model=copy \
      --workdir DIR [--config.eval.clip_dir=... --config.eval.dino_dir=... \
      --config.eval.judge.enabled=True]

A trained model (jax_vlm/evaluation/aurora_models.py): `--config.eval.model=fdp
--config.eval.fdp_checkpoint=DIR [--config.eval.idp_checkpoint=DIR] --config.eval.num_candidates=K
--config.checkpoint.vqgan_dir=VQ [--config.vocab.tokenizer_dir=TOK]`; IDP action text:
`--config.eval.task=idp --config.eval.idp_checkpoint=DIR [--config.eval.bertscore_dir=DIR]`.

`--config.model` and `--config.bench_root` are eval.py's short names for `eval.model` and
`eval.bench_root` (`config.model` itself is the transformer's config). The optional ARG sets
eval.model: `configs/aurora_bench.py:copy`.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base.get_base_config()
  c = config.eval
  c.benchmark = 'aurora_bench'
  c.model = arg or 'copy'  # 'copy' (source frame as prediction) or a registered predictor
  c.bench_root = ''  # McGill-NLP/AURORA checkout: test.json + data/
  # Local transformers directories (model + processor); empty skips the metric, with a note.
  # MagicBrush's evaluation, which AURORA-BENCH numbers follow, uses CLIP ViT-B/32 and DINO ViT-S/16
  # (e.g. saved copies of openai/clip-vit-base-patch32 and facebook/dino-vits16).
  c.clip_dir = ''
  c.dino_dir = ''
  c.max_items = 0  # > 0: only the first N bench entries (smoke runs)
  c.save_predictions = True  # PNGs under WORKDIR/predictions, reused by reruns and the report
  c.report_items_per_task = 8  # items per task shown in report.html (-1: all)
  c.progress = True
  # Model predictors (eval.model=fdp; jax_vlm/evaluation/aurora_models.py). Checkpoints are Orbax
  # params directories (train.py / `python -m jax_vlm.export --format orbax`) or transformers
  # directories (config.json + safetensors). The VQGAN is checkpoint.vqgan_dir, the vocabulary
  # config.vocab (tokenizer_dir '' = the tokenizer files inside fdp_checkpoint); sampling follows
  # config.sampler (temperature 1, no top-k/top-p, no CFG by default), ranking config.verifier.
  c.fdp_checkpoint = ''  # the forward-dynamics (next frame) model
  c.idp_checkpoint = ''  # the IDP verifier; '' = the FDP checkpoint itself (a joint model)
  c.num_candidates = 1  # K frames sampled per item from one prefill; the verifier keeps the best
  # eval.task: 'fdp' (next frame, Table 2 / 8) or 'idp' (greedy action text per (source, target)
  # pair with idp_checkpoint, scored by BLEU / ROUGE-1 / ROUGE-L / BERTScore as in Table 1).
  c.task = 'fdp'
  c.bertscore_dir = ''  # local transformers model for BERTScore; '' skips it with a note
  # Items per sampler call: IDP pairs decoded, or FDP items sampled (each with K candidates, so
  # batch_size * K rows in one program) and scored together.
  c.batch_size = 8

  c.judge = ml_collections.ConfigDict()
  c.judge.enabled = False  # GPT-4o as judge; needs the network and an API key
  c.judge.base_url = 'https://api.openai.com/v1'  # any OpenAI-compatible chat endpoint
  c.judge.model = 'gpt-4o'
  c.judge.api_key_env = 'OPENAI_API_KEY'  # name of the environment variable; '' for no key
  c.judge.max_retries = 3  # per item, for unparseable replies, refusals and HTTP errors
  c.judge.backoff_s = 2.0  # first retry delay, doubled each retry
  c.judge.timeout_s = 120.0
  c.judge.max_tokens = 512
  c.judge.temperature = 0.0
  c.judge.max_in_flight = 4  # judge requests at once (items wait in groups of this many)
  c.judge.rejudge_invalid = False  # on a rerun, ask again about items with an invalid verdict
  return config
