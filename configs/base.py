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


def model_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = 'chameleon'  # 'chameleon' (Chameleon/Anole) or 'gemma' (Liquid).
  c.vocab_size = 65536
  c.d_model = 4096
  c.num_layers = 32
  c.num_heads = 32
  c.num_kv_heads = 32
  c.head_dim = 128
  c.mlp_dim = 11008
  c.max_positions = 4096
  c.rope_theta = 10000.0
  c.norm_eps = 1e-5
  c.qk_norm = True  # Chameleon's per-head QK LayerNorm.
  c.swin_norm = False  # Chameleon-30B style post-norm inside the residual branch.
  c.tie_embeddings = False
  c.dtype = 'bfloat16'  # compute dtype
  c.param_dtype = 'float32'
  c.scan_layers = True
  c.remat_policy = 'nothing_saveable'  # 'none' | 'nothing_saveable' | 'dots' | ...
  c.attention_impl = 'xla'  # 'xla' (einsum) | 'cudnn' | 'auto' (jax.nn.dot_product_attention)
  c.attention_chunk = 512  # 'xla' causal attention in query blocks that skip unseen keys; 0 = off
  # LoRA adapters live inside the projection layers; rank 0 means none.
  c.lora_rank = 0
  c.lora_alpha = 32.0
  c.lora_dropout = 0.0
  c.lora_targets = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
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
  # The stages train.py runs, in order (see jax_vlm/pipeline/stages.py), and per-stage dotted overrides,
  # as (key, value) pairs, e.g. config.stage_overrides.train_fdp =
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

  config.objectives = ml_collections.ConfigDict()
  config.objectives.schedule = 'alternate'  # 'alternate' | 'mixed'
  config.objectives.idp_share = 1
  config.objectives.fdp_share = 1
  config.objectives.idp_loss_weight = 1.0  # 'mixed': per-objective weight on the summed token loss
  config.objectives.fdp_loss_weight = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.mode = 'full'  # 'full' | 'lora'
  config.train.global_batch_size = 96
  config.train.num_steps = 1000
  config.train.learning_rate = 1e-4
  config.train.warmup_steps = 50
  config.train.end_lr_ratio = 0.1
  config.train.weight_decay = 0.0
  config.train.b1 = 0.9
  config.train.b2 = 0.95
  config.train.grad_clip_norm = 1.0
  config.train.grad_accum_steps = 1
  config.train.log_every = 10
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 3
  config.train.lr_schedule = 'cosine'  # 'cosine' (warmup + cosine decay) | 'constant' (warmup only)
  # 'dataset' (jax_vlm.input.pipeline) | 'synthetic' (random batches: tests, benchmarks)
  config.train.data_source = 'dataset'
  # Params to start from: Orbax params dir or an earlier stage's name ('' = checkpoint.model_dir).
  config.train.init_from = ''
  config.train.peak_flops = 0.0  # peak FLOP/s per device for MFU; 0 = MFU not reported
  config.train.progress_bar = True
  config.train.tensorboard = True  # event files next to metrics.jsonl (tensorboardX)
  config.train.save_on_preemption = True  # SIGTERM: finish the step, save, exit cleanly

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = 1
  config.mesh.fsdp = -1  # -1 fills the rest of the devices
  config.mesh.tensor = 1
  config.mesh.rules = 'fsdp'  # name of a logical-axis rule preset, see jax_vlm/training/sharding.py
  # Replaces single rules of the preset: 'mlp=tensor,vocab=' (logical=mesh axes, '+' joins two).
  config.mesh.rule_overrides = ''

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

  # The IDP verifier that ranks K sampled frames (jax_vlm/inference/verifier.py).
  config.verifier = ml_collections.ConfigDict()
  config.verifier.rank_by = 'mean'  # 'mean' (length-normalised) | 'sum' action log-likelihood
  config.verifier.params = ''  # '' = the sampler's params; else a stage name or params dir
  config.verifier.batch_size = 16  # candidates scored per forward pass

  # IDP bootstrapping: label unlabelled pairs, keep a stratified top-K (jax_vlm/method/bootstrap.py).
  config.bootstrap = ml_collections.ConfigDict()
  config.bootstrap.labeller_stage = 'train_dynamics'  # stage whose `params` label the pairs
  config.bootstrap.unlabelled = ''  # record prefix; '' = WORKDIR/tokenize/unlabelled
  config.bootstrap.num_selected = 0.5  # a fraction (<= 1.0) of the labelled pairs, or a count
  config.bootstrap.decoding = 'greedy'  # 'greedy' | 'sampled' (sampler temperature/top_k/top_p)
  config.bootstrap.score = 'mean'  # label_score: 'mean' or 'sum' token log-likelihood
  config.bootstrap.class_key = 'world'  # 'world' (parse_action) | 'first_word' | 'none'
  config.bootstrap.keep_unparsed = False  # keep labels the world cannot parse (class 'unparsed')
  config.bootstrap.true_action_field = 'hidden_action'  # withheld true action, for label accuracy
  config.bootstrap.batch_size = 32
  config.bootstrap.num_shards = 1
  return config
