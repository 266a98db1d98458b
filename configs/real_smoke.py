"""The real-data flow at toy size: a tiny Chameleon-family model and a 16 px VQGAN (4 x 4 codes),
for dry runs of README's steps 1 -> 4 on a few real items and videos (tests/test_real_smoke.py).

  python -m jax_vlm.convert tiny CKPT --words_from BENCH/test.json        # tokenizer + VQGAN
  python -m jax_vlm.prepare aurora --root BENCH --split test --vqgan CKPT/vqgan --out DATA
  python -m jax_vlm.prepare videos --videos VIDEOS --vqgan CKPT/vqgan --out DATA --kf 3 --if 4
  python train.py --config configs/real_smoke.py --workdir W --config.data.dir=DATA \
      --config.bootstrap.unlabelled=DATA/unlabelled --config.vocab.tokenizer_dir=CKPT/tokenizer \
      --config.checkpoint.vqgan_dir=CKPT/vqgan
  python eval.py --config configs/real_smoke.py --config.bench_root=BENCH \
      --config.eval.fdp_checkpoint=W/train_fdm/params \
      --config.eval.idp_checkpoint=W/train_dynamics/params --config.eval.num_candidates=2 \
      --config.vocab.tokenizer_dir=CKPT/tokenizer --config.checkpoint.vqgan_dir=CKPT/vqgan \
      --workdir E

The stages: train_dynamics (IDP + FDP from random init), bootstrap (the IDP model labels the
video key-frame pairs; stratified top-K by label likelihood, class = the label's first word),
train_fdm (FDP on labelled + synthetic pairs, recognition-weighted). The evaluation sections are
configs/aurora_bench.py's. Nothing here measures quality: the model is a few steps old.
"""

import ml_collections

from configs import aurora_bench
from jax_vlm.tools.convert import TINY_VQGAN


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = aurora_bench.get_config(arg or 'fdp')
  config.stages = ('train_dynamics', 'bootstrap', 'train_fdm')
  config.model.update(
      family='chameleon', vocab_size=256, d_model=32, num_layers=2, num_heads=2, num_kv_heads=2,
      head_dim=16, mlp_dim=64, max_positions=128, norm_eps=1e-5, qk_norm=True, swin_norm=False,
      tie_embeddings=False, dtype='float32', param_dtype='float32', remat_policy='none')
  config.vqgan.update(TINY_VQGAN)
  config.vocab.num_image_codes = TINY_VQGAN['num_embeddings']
  # IDP rows: <bos> <boi> 16 <eoi> <boi> 16 <eoi> action <eos>; FDP rows as long.
  config.data.update(name='aurora', train_splits=('train',), max_seq_len=64, action_max_tokens=16)
  config.train.update(global_batch_size=8, num_steps=3, warmup_steps=1, learning_rate=3e-3,
                      log_every=1, checkpoint_every=3, keep_checkpoints=1, progress_bar=False,
                      tensorboard=False)
  config.sampler.update(max_action_tokens=8, num_image_tokens=16, num_candidates=2)
  config.verifier.batch_size = 2
  config.bootstrap.update(class_key='first_word', num_selected=1.0, batch_size=4)
  config.eval.update(num_candidates=2, batch_size=4, report_items_per_task=-1, progress=False)
  return config
