"""The embedded action world end to end on a CPU: build, tokenizer, tokenize, dynamics training.

  python train.py --config configs/action_world.py[:default|smoke] --workdir /tmp/world

'default': 2,000 labelled / 20,000 unlabelled / 500 + 500 test examples; 'smoke': 10x fewer, a
shorter tokenizer training with a looser accuracy bar. Stages write under WORKDIR/<stage>/; paths
here are templates with '{workdir}' that jax_vlm.input.datasets.resolve_paths fills in at run time.
"""

import ml_collections

from configs import base
from data.action_world import SPECIAL_TOKENS, WorldConfig, vocabulary_words

SIZES = ('default', 'smoke')


def _text_vocab_size(size: str) -> int:
  """Number of ids in the world's word-level tokenizer (the image codes follow them)."""
  words = set(vocabulary_words(WorldConfig.preset(size))) - set(SPECIAL_TOKENS)
  return len(SPECIAL_TOKENS) + len(words)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or 'default'
  if size not in SIZES:
    raise ValueError(f'configs/action_world.py takes one of {SIZES}, not {size!r}')
  smoke = size == 'smoke'
  config = base.get_base_config()
  # The data stages and joint training; configs/reproduce.py runs the whole method.
  config.stages = ('build_data', 'train_tokenizer', 'tokenize', 'pretrain', 'train_dynamics')

  config.world = ml_collections.ConfigDict()
  config.world.size = size
  config.world.seed = 0
  # One wording per action: with the varied wordings (`varied`, 2-70 per action) greedy IDP
  # decoding from a model trained for minutes starts almost every label with "move", the word the
  # most templates share, whatever the model believes the action type is.
  config.world.phrasings = 'plain'
  config.world.dir = '{workdir}/build_data'

  # The world's VQGAN: 40x40 frames, 3 downsamplings -> 5x5 codes, one code a cell. The encoder
  # reads each 8x8 cell on its own (patch_encoder), so a cell's code does not depend on its
  # neighbours: with taming's encoder (receptive field ~4 cells) the 25 cell appearances were
  # spread over 122 context-dependent codes and one moved object changed ~8 codes of a frame.
  config.vqgan.update(resolution=40, base_channels=16, channel_multiplier=(1, 1, 1, 1),
                      num_res_blocks=0, attn_resolutions=(), z_channels=64, embed_dim=32,
                      num_embeddings=128, norm_groups=2, patch_encoder=True)
  config.checkpoint.vqgan_dir = '{workdir}/train_tokenizer/params'

  # Tokenizer training (jax_vlm/training/vq_training.py); see its module docstring for the tricks.
  t = config.vq_train = ml_collections.ConfigDict()
  # The cosine schedule's length; training stops early once every validation frame reads back
  # (docs/benchmarks.md has the step it stops at).
  # 'smoke' checks that every stage runs and writes what the next one reads, in a minute or two:
  # its tokenizer trains a few steps and reads few frames back exactly (no accuracy bar), so its
  # scores say nothing about the method.
  t.num_steps = 30 if smoke else 3000
  t.batch_size = 16
  t.learning_rate = 3e-3
  t.warmup_steps = 20
  # Plain autoencoder steps before the codebook is set by k-means on encoder features.
  t.ae_warmup_steps = 10 if smoke else 300
  t.kmeans_iters = 10
  t.l1_weight = 1.0
  t.l2_weight = 1.0
  t.foreground_weight = 4.0
  t.beta = 0.25
  t.restart_every = 25
  t.restart_min_usage = 1.0
  t.max_objects = 20  # training scenes are busier than the world's (more shapes per step)
  t.eval_every = 1000 if smoke else 100
  t.val_frames = 16 if smoke else 256
  t.target_accuracy = 1.0  # stop early when every validation frame reads back exactly
  t.test_frames = 32 if smoke else 1000
  t.min_accuracy = 0.0 if smoke else 0.995  # the stage fails below this held-out accuracy
  t.log_every = 10
  t.progress_bar = True

  config.tokenize = ml_collections.ConfigDict()
  config.tokenize.batch_size = 256
  config.tokenize.num_shards = 1

  # Vocabulary: the world's word tokenizer, image codes after its ids.
  num_text = _text_vocab_size(size)
  v = config.vocab
  v.tokenizer_dir = '{workdir}/build_data/tokenizer'
  v.image_token_scheme = 'offset'
  v.image_token_offset = -1  # = number of text ids
  v.num_image_codes = config.vqgan.num_embeddings
  v.bos_token, v.eos_token, v.pad_token = '<bos>', '<eos>', '<pad>'
  v.boi_token, v.eoi_token = '<boi>', '<eoi>'

  # IDP: 1 + 27 + 27 + action (<= 15 words) + 1 = 71 tokens at most; FDP one fewer.
  d = config.data
  d.name = 'action_world'
  d.dir = '{workdir}/tokenize'
  d.train_splits = ('labelled',)
  d.extra_train = ()  # record prefixes or directories (the bootstrap stage's synthetic triplets)
  # Augmented copies of each labelled triplet that train_dynamics reads besides the labelled
  # split (the `augment` stage, data/action_world/augment.py: the same change mirrored left to
  # right, shifted on the grid, with the colours permuted; its action text redrawn). train.py and
  # the reproduction add the stage before train_dynamics and its records to train_dynamics'
  # data.extra_train (world_stages.with_augmentation); 0 = none. Ten copies lifted the IDP from
  # 0.649 to 0.785 on `validation` over five seeds (docs/reproduction.md, session 18; 20 copies
  # gave no more on seed 0). The FDP variants fine-tune on the labelled split as before.
  d.augment_copies = 2 if smoke else 10
  d.augment_transforms = ('mirror', 'shift', 'colors')
  d.max_seq_len = 80
  d.action_max_tokens = 20
  # Training rows are padded to the smallest of these that fits the batch's longest row, not to
  # max_seq_len: a plain-phrased row is 60-67 tokens (actions of 4-11 words), a varied one at most
  # 71, so batches train at 68 (or 72) tokens. The train_dynamics step is about 20% faster at 68
  # than at 80 on one core (docs/benchmarks.md, session 16); the loss and gradients are those of
  # the same rows (padding is masked), equal up to float rounding.
  d.length_buckets = (68, 72)
  d.recognition_weights = True
  # The world's patch encoder gives unchanged cells exactly zero feature change, so the pure
  # weighting would never train the model to copy them: keep a floor.
  d.recognition_floor = 0.1
  # train_dynamics stands in for the pretrained model every FDP variant starts from: the plain
  # FDP loss, so it learns to copy unchanged cells (which the weighting all but ignores).
  # It starts from the pretrain stage's params: the world's stand-in for a pretrained unified VLM.
  # IDP gets three rows and three parts of the loss in four: with IDP and FDP weighted equally,
  # IDP's effect match after 1,000 steps was 0.08 against 0.20 for IDP alone from the same base
  # (development world; docs/reproduction.md, session 6); the 3:1 loss weight alone did not close
  # that gap (0.073), more IDP rows may. FDP still learns to copy in ~100 steps.
  config.stage_overrides.train_dynamics = (('data.recognition_weights', False),
                                           ('train.init_from', 'pretrain'),
                                           ('objectives.idp_share', 3),
                                           ('objectives.fdp_share', 1),
                                           ('objectives.idp_loss_weight', 3.0))

  vocab_size = num_text + config.vqgan.num_embeddings
  config.model.update(
      family='chameleon', vocab_size=-(-vocab_size // 16) * 16,  # padded: shards evenly
      d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=512,
      max_positions=128, dtype='float32', param_dtype='float32',
      # Unrolled: XLA:CPU runs the 4 layers 6-24% faster than a scan at this size
      # (docs/benchmarks.md); compile time is small either way.
      scan_layers=False, remat_policy='none', qk_norm=True)

  tr = config.train
  tr.global_batch_size = 16 if smoke else 32
  tr.num_steps = 200 if smoke else 1200
  tr.learning_rate = 3e-3
  tr.warmup_steps = 50
  tr.weight_decay = 0.01
  tr.log_every = 20
  tr.checkpoint_every = 500
  tr.tensorboard = False
  config.objectives.schedule = 'mixed'
  # Each objective's own mean, averaged: with the token-weighted mean FDP's 26 target tokens a
  # row outweighed IDP's ~6 action tokens about 4:1 in mixed batches.
  config.objectives.loss_normalization = 'objective'

  # The pretrain stage (jax_vlm/pipeline/world_stages.py, data/action_world/pretrain.py): the
  # model learns to read and write scenes from action-free documents over fresh scenes before it
  # sees any action. Built once and shared by every seed and variant, like a released checkpoint.
  pre = config.pretrain = ml_collections.ConfigDict()
  # 2,400 steps: after the 800 of v2 the base read one single-frame caption in ~100 entirely right
  # and IDP stayed on its plateau; from a 2,400-step base it leaves the plateau within ~1,000 IDP
  # steps (docs/reproduction.md, sessions 3-6).
  pre.num_steps = 6 if smoke else 2400
  pre.batch_size = 8 if smoke else 32
  pre.learning_rate = 3e-3
  pre.warmup_steps = 50
  pre.num_scenes = 64 if smoke else 20000  # the pool documents draw their scenes from
  pre.max_seq_len = 112  # two images and a 7-object caption: 55 + 57 tokens
  # The mix of the base IDP was shown to learn from (docs/reproduction.md, session 6): `repeat`
  # (an image twice) is left out; train_dynamics' FDP rows teach copying within ~100 steps.
  pre.documents = ('caption', 'text_to_image', 'multi_caption')
  pre.eval_scenes = 64 if smoke else 256  # held-out scenes the base's reading is measured on
  # Text-output documents' weight against image-output ones in the per-objective loss (1.0: each
  # half). At 1.0 the base did not read shapes (0.26, chance 0.25; held-out captions 0.016 whole);
  # at 2.0 (two thirds, as the development probes' grouping gave captions) held-out captions are
  # 0.50 whole, text-to-image unchanged (docs/reproduction.md, sessions 6-7).
  pre.text_loss_weight = 2.0
  # The first phase is checked on held-out scenes and trained again from another initialisation
  # (up to `restarts` times) when some document kind has fewer than `restart_below` of its
  # documents entirely right. Builds from one config landed on either side of a plateau on float
  # rounding alone: text-to-image 0.914 whole against 0.000 (every cell 'empty'), captions 0.680
  # against 0.000 (docs/reproduction.md, session 24); good builds on record read 0.34-0.97.
  pre.restarts = 0 if smoke else 2
  pre.restart_below = 0.2
  # An attempt with restarts left is also read at check_step, half its steps, and restarted there
  # when no document kind has check_below of its documents entirely right: a stalled first phase
  # read 0.000 in every kind at every 200th step to 1,200, a good one 0.180 of captions at 1,200
  # (0.047 at 1,000; each kind rises at its own time), and training on from there costs
  # ~400 s (docs/reproduction.md, session 27). A phase that passes trains on exactly as before.
  pre.check_step = 0 if smoke else 1200
  pre.check_below = 0.02
  # A second pretraining phase (0 = none): this many more steps from the first phase's params on
  # continue_documents (a kind named twice is drawn twice as often), with the warmup and decay
  # restarted. Three eighths of its documents say what differs between two photos of one place (no
  # action words); it lifted IDP effect match from 0.170 to 0.295 on three seeds (paired +0.125,
  # 95% CI [+0.044, +0.206]) and the bootstrap labels from 12% to 21% correct (sessions 8-9).
  # A quarter are `region` documents (a photo, then itself with a strip of three cells replaced,
  # no text): with every strip cell changed they lifted IDP to 0.698 from 0.548 on five seeds
  # (paired +0.150 [+0.099, +0.201]) and the labels to 59% from 49%, at a cost to FT (-0.145
  # [-0.224, -0.067]) and none shown to FDM (-0.046 [-0.097, +0.005]) (docs/reproduction.md,
  # sessions 11-13).
  pre.continue_steps = 4 if smoke else 3000
  pre.continue_documents = ('caption', 'text_to_image', 'multi_caption', 'difference',
                            'difference', 'difference', 'region', 'region')
  # How many times the second phase runs, each cycle from the last one's params with its warmup
  # and decay restarted and fresh documents (a warm restart; 1 = once). Two cycles made the base
  # read differences far better yet left the IDP where it was (0.624 against 0.628 on seed 0's
  # `validation`; with `relations` added, five seeds +0.028 [-0.006, +0.063]: session 15).
  pre.continue_cycles = 1
  # How many of a `region` strip's 3 cells must differ from the photo's own: 3 = every cell, as an
  # edited region of a real photo changes every patch it covers (1 = any, as session 11 ran it,
  # when most strips changed one cell of mostly empty background).
  pre.region_changed_cells = 3
  # World actions are at most 15 words; the sampler's cache (data.max_seq_len) must hold the prompt
  # plus this many new tokens.
  config.sampler.max_action_tokens = d.action_max_tokens
  return config
