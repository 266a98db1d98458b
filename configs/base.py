"""The one config tree every preset starts from.

Sections (each function takes only the sub-config it needs):
  model    decoder-only transformer (see jax_vlm/models/config.py for field meanings)
  vqgan    image tokenizer (taming VQGAN as shipped with Chameleon)
  vocab    where the text tokenizer lives and how image codes map to token ids
  data     data sets and input pipeline
  objectives / train / lora / mesh   the training loop (train.py)
  sampler / verifier / bootstrap     test-time search and IDP bootstrapping
  eval     evaluation (eval.py)
"""

import ml_collections

from jax_vlm.models.config import TransformerConfig
from jax_vlm.training import config as training_config


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The model section: TransformerConfig's defaults (jax_vlm/models/config.py documents them)."""
  c = ml_collections.ConfigDict(TransformerConfig.defaults())
  c.update(overrides)
  return c


def vqgan_config(**overrides) -> ml_collections.ConfigDict:
  """Chameleon's vqgan.yaml; Anole and Liquid use it unchanged."""
  c = ml_collections.ConfigDict()
  c.resolution = 512
  c.in_channels = 3
  c.out_channels = 3
  c.base_channels = 128
  c.channel_multiplier = (1, 1, 2, 2, 4)
  c.num_res_blocks = 2
  c.attn_resolutions = ()
  c.z_channels = 256
  c.embed_dim = 256
  c.num_embeddings = 8192
  c.double_z = False
  c.norm_groups = 32  # GroupNorm groups (taming's); a small tokenizer may use fewer
  c.patch_encoder = False  # True: each code sees only its own patch (models/vqgan.py)
  c.dropout = 0.0
  c.dtype = 'float32'
  c.param_dtype = 'float32'
  c.update(overrides)
  return c


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The stages train.py runs, in order (see jax_vlm/pipeline/stages.py), and per-stage dotted
  # overrides, as (key, value) pairs, e.g. config.stage_overrides.train_fdp =
  # (('data.recognition_weights', False),) (dotted dict keys do not survive ConfigDict copies).
  config.stages = ('train_dynamics',)
  config.stage_overrides = ml_collections.ConfigDict()
  config.model = model_config()
  config.vqgan = vqgan_config()

  config.vocab = ml_collections.ConfigDict()
  config.vocab.tokenizer_dir = ''  # a local directory transformers' AutoTokenizer loads
  config.vocab.image_token_scheme = 'chameleon'  # 'chameleon' (IMGIMG names) | 'offset'
  config.vocab.image_token_offset = -1  # 'offset': first image token id; -1 = text vocab size
  config.vocab.num_image_codes = 8192
  # Special tokens are looked up by name in the tokenizer at load time (ids never hard-coded).
  config.vocab.bos_token = '<s>'
  config.vocab.eos_token = '</s>'
  config.vocab.pad_token = '<pad>'
  config.vocab.boi_token = '<racm3:break>'  # Chameleon's begin-of-image
  config.vocab.eoi_token = '<eoss>'  # Chameleon's end-of-image

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.model_dir = ''  # transformers directory or Orbax params to start from
  config.checkpoint.vqgan_dir = ''  # directory with Flax VQGAN params (or vqgan.ckpt + yaml)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'action_world'
  config.data.dir = ''
  # Record sets under data.dir that the trainer reads, plus extra record prefixes or directories
  # (the bootstrap stage's synthetic triplets).
  config.data.train_splits = ('train',)
  config.data.extra_train = ()
  # Only the first N examples of data.train_splits (0 = all); data.extra_train is read whole. The
  # reproduction's labelled-size curve (reproduce.labelled_sizes) shrinks the labelled set with it.
  config.data.train_examples = 0
  config.data.max_seq_len = 2100
  config.data.action_max_tokens = 48
  config.data.recognition_weights = True
  # FDP target weight = floor + (1 - floor) * recognition weight (0: the pure weighting).
  config.data.recognition_floor = 0.0
  config.data.shuffle_buffer = 0
  config.data.num_workers = 0
  config.data.packing = False  # first-fit packing into rows of max_seq_len (segment_ids)
  config.data.length_buckets = ()  # pad to the smallest bucket that fits (single-process only)
  config.data.pack_lookahead = 8

  config.objectives = training_config.objectives_section()
  config.train = training_config.train_section()
  config.mesh = training_config.mesh_section()

  config.sampler = ml_collections.ConfigDict()
  config.sampler.num_candidates = 8
  config.sampler.temperature = 1.0
  config.sampler.top_k = 0
  config.sampler.top_p = 1.0
  config.sampler.cfg_text_scale = 0.0  # 0 disables classifier-free guidance
  config.sampler.cfg_image_scale = 0.0
  config.sampler.max_action_tokens = 48

  config.eval = ml_collections.ConfigDict()
  config.eval.model = ''

  # Sampler settings beyond the ones above (jax_vlm/inference/sampler.py).
  config.sampler.cache_len = 0  # KV cache slots; 0 = data.max_seq_len
  config.sampler.prompt_buckets = ()  # prompts are left-padded to the smallest bucket that fits
  config.sampler.num_image_tokens = 1024  # tokens per generated frame (25 in the action world)
  # Decode precision ('' = unchanged): compute dtype, params cast once per call, KV cache dtype.
  # 'bfloat16' weights + cache halve the bytes a memory-bound decode step reads from fp32 params.
  config.sampler.dtype = ''  # '' = model.dtype
  config.sampler.param_dtype = ''  # '' = the params as stored (fp32 from training)
  config.sampler.cache_dtype = ''  # '' = the decode compute dtype

  # The IDP verifier that ranks K sampled frames (jax_vlm/inference/verifier.py).
  config.verifier = ml_collections.ConfigDict()
  config.verifier.rank_by = 'mean'  # 'mean' (length-normalised) | 'sum' action log-likelihood
  config.verifier.params = ''  # '' = the sampler's params; else a stage name or params dir
  config.verifier.batch_size = 16  # candidates scored per forward pass

  # IDP bootstrapping: label unlabelled pairs, keep a stratified top-K (method/bootstrap.py).
  config.bootstrap = ml_collections.ConfigDict()
  # The IDP labeller: a stage of this workdir whose `params` label the pairs, or a checkpoint
  # directory (Orbax params or a transformers directory; a path, e.g. /runs/anole_export/hf).
  config.bootstrap.labeller_stage = 'train_dynamics'
  # Record prefix of the unlabelled pairs ('prepare videos' writes OUT/unlabelled); '' =
  # WORKDIR/tokenize/unlabelled (the world's tokenize stage).
  config.bootstrap.unlabelled = ''
  config.bootstrap.num_selected = 0.5  # a fraction (<= 1.0) of the labelled pairs, or a count
  config.bootstrap.decoding = 'greedy'  # 'greedy' | 'sampled' (sampler temperature/top_k/top_p)
  config.bootstrap.score = 'mean'  # label_score: 'mean' or 'sum' token log-likelihood
  # 'world' (parse_action) | 'first_word' (free text: the verb) | 'none' (one class)
  config.bootstrap.class_key = 'world'
  config.bootstrap.keep_unparsed = False  # keep labels the world cannot parse (class 'unparsed')
  config.bootstrap.true_action_field = 'hidden_action'  # withheld true action, for label accuracy
  config.bootstrap.batch_size = 32
  config.bootstrap.num_shards = 1
  return config
