"""Config keys of ttd_d2: one node per component, a comment per key."""
from detectron2.config import CfgNode as CN


def add_ttd_config(cfg):
    """Add the ttd_d2 nodes (``MODEL.CLIP``, ``MODEL.TCL``, ``MODEL.MASKER``, ``MODEL.TTD``,
    ``MODEL.SEG_INFERENCE``, ``DATASETS.IMAGE_TEXT``) and ttd_d2's keys of detectron2's nodes
    (``SOLVER.OPTIMIZER``, ``SOLVER.BETAS``, ``SOLVER.DEFER_METRICS``, ``INPUT.TRAIN_SIZE``,
    ``DATALOADER.PACKED_BATCHES``) to ``cfg``."""
    # ---------------------------------------------------------------- CLIP backbone
    cfg.MODEL.CLIP = CN()
    # open_clip model name (e.g. "ViT-B-16") or a path to an open_clip-style JSON model config
    # (a relative path is looked up in the working directory, then in ttd_d2/model_configs/).
    cfg.MODEL.CLIP.ARCH = "ViT-B-16"
    # open_clip pretrained tag (e.g. "openai"), a local checkpoint file, or "" for random init.
    # A tag trained with QuickGELU (OpenAI's) builds ARCH with QuickGELU; for a local file of
    # OpenAI's weights name the "-quickgelu" architecture (e.g. "ViT-B-16-quickgelu").
    cfg.MODEL.CLIP.PRETRAINED = ""
    # Folder where open_clip caches downloaded weights ("" = open_clip's default).
    cfg.MODEL.CLIP.CACHE_DIR = ""
    # Training-free dense head applied to the last ViT block:
    # vanilla | maskclip | sclip | clearclip | naclip.
    cfg.MODEL.CLIP.DENSE_MODE = "maskclip"
    # Attention temperature of the sclip/clearclip/naclip heads (0 = 1/sqrt(head_dim)).
    cfg.MODEL.CLIP.ATTN_SCALE = 0.0
    # Standard deviation, in patches, of NACLIP's Gaussian neighbourhood prior.
    cfg.MODEL.CLIP.NACLIP_SIGMA = 5.0
    # Prompt templates for tags and class names ("{}" = the word); embeddings are averaged.
    cfg.MODEL.CLIP.PROMPT_TEMPLATES = ["a photo of a {}."]
    # A named template set used instead of PROMPT_TEMPLATES: "imagenet80" (CLIP's 80 ImageNet
    # templates, the training-free literature's) | "" (use PROMPT_TEMPLATES).
    cfg.MODEL.CLIP.PROMPT_TEMPLATE_SET = ""
    # Weight of CLIP's own contrastive loss in training (0 = off). With MODEL.TTD.ENABLED False
    # and a positive weight, training is plain CLIP (pre)training of all weights.
    cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT = 0.0
    # Run the towers under bf16 autocast on CUDA (maps, masker and losses stay fp32).
    cfg.MODEL.CLIP.BF16 = True
    # The same on the CPU (off: fp32). Pays on CPUs with bf16 instructions (AVX512-BF16, AMX:
    # ~2x the fp32 rate of convolutions and matrix products); elsewhere bf16 is emulated, slower.
    cfg.MODEL.CLIP.BF16_CPU = False
    # torch.compile of both towers' transformer blocks, and of the image tower's dense path as
    # one region for gradient-free calls (the test-time protocol's windows)
    # (ttd_d2/modeling/compile.py; a block or region whose compilation fails runs eagerly, with
    # a warning).
    cfg.MODEL.CLIP.COMPILE = CN()
    # "" (eager) | default | reduce-overhead (CUDA graphs: no per-kernel launch cost) |
    # max-autotune | max-autotune-no-cudagraphs (torch.compile's modes, read by inductor).
    cfg.MODEL.CLIP.COMPILE.MODE = ""
    # torch.compile backend: inductor (generates kernels; on CPU it needs a C++ compiler) or any
    # other registered one (aot_eager: traced but not optimised, what the tests use).
    cfg.MODEL.CLIP.COMPILE.BACKEND = "inductor"
    # Mode of the text blocks: "same" (MODE) or one of MODE's values. Text batches change shape
    # every step (the tag count), and CUDA graphs record one graph per shape even when compiled
    # with dynamic shapes: "default" keeps CUDA graphs for the fixed-shape image blocks only.
    cfg.MODEL.CLIP.COMPILE.TEXT_MODE = "same"

    # ---------------------------------------------------------------- TCL backbone
    # Read when MODEL.BACKBONE.NAME is "TCL" (docs/BACKBONES.md); MODEL.CLIP gives its frozen CLIP.
    cfg.MODEL.TCL = CN()
    # TCL checkpoint in the authors' format (tcl.pth: head + masker, no CLIP weights), or "" to
    # start the head as copies of the CLIP's last block, ln_post and proj (gates 0: MaskCLIP).
    cfg.MODEL.TCL.WEIGHTS = ""
    # How the head's copied last block runs: maskclip (TCL's value path) or another training-free
    # head (clearclip, naclip, sclip, vanilla: an experiment, not TCL; docs/BACKBONES.md).
    cfg.MODEL.TCL.DENSE_PATH = "maskclip"
    # Start the masker at the checkpoint's trained w, b instead of MODEL.MASKER.INIT_W / INIT_B.
    cfg.MODEL.TCL.MASKER_FROM_WEIGHTS = True
    # Pixel mean and std in [0, 1] (TCL's ImageNet values); [] for both = the CLIP's own.
    cfg.MODEL.TCL.PIXEL_MEAN = [0.485, 0.456, 0.406]
    # Pixel standard deviation in [0, 1] (see PIXEL_MEAN).
    cfg.MODEL.TCL.PIXEL_STD = [0.229, 0.224, 0.225]
    # With MODEL.TTD.ENABLED, also train the decoder in full (False: frozen; LoRA adapters only).
    cfg.MODEL.TCL.TRAIN_DECODER = False
    # How the decoder's 3x3 convolutions run: auto (Winograd F(4x4, 3x3) on float32 CPU tensors,
    # about 1.4x faster there; PyTorch's own elsewhere), winograd, or direct (PyTorch's F.conv2d).
    cfg.MODEL.TCL.DECODER_CONV = "auto"
    # Temperature of the Gumbel-sigmoid that samples the masks cutting captions' regions out of
    # images in training (TCL's objective, loss_tcl_image).
    cfg.MODEL.TCL.GUMBEL_TAU = 1.0
    # Decoder-only warm-up of TCL's objective: for the first N iterations the head's copied last
    # block keeps its weights (learning rate 0) while the decoder, ln_post/proj copies, masker
    # and temperatures train (TCL: 30000 of 50000). 0 = none.
    cfg.MODEL.TCL.DECODER_ONLY_ITERS = 0
    # TCL's own training objective (docs/BACKBONES.md); every weight 0 = off (TTD's configs).
    cfg.MODEL.TCL.LOSS = CN()
    # Weight of both text-grounded contrastive losses, on the cut-out image and on the masked
    # dense features (TCL's tcl_w: 0.1).
    cfg.MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT = 0.0
    # Weight of both area priors, on the masks of positive and of negative pairs (area_w: 0.4).
    cfg.MODEL.TCL.LOSS.AREA_WEIGHT = 0.0
    # Weight of both total-variation terms, on the dense embeddings and on the masks (tv_w: 1.0).
    cfg.MODEL.TCL.LOSS.TV_WEIGHT = 0.0
    # Mean mask area the masks of an image and its own caption are pulled to (TCL: 0.4).
    cfg.MODEL.TCL.LOSS.POSITIVE_AREA_PRIOR = 0.4
    # Mean mask area the masks of an image and the other captions are pulled to (TCL: 0).
    cfg.MODEL.TCL.LOSS.NEGATIVE_AREA_PRIOR = 0.0
    # Initial temperature of both contrastive losses (learnable, logit scale 1 / T capped at 100).
    cfg.MODEL.TCL.LOSS.INIT_TEMPERATURE = 0.07

    # ---------------------------------------------------------------- masker
    cfg.MODEL.MASKER = CN()
    # Initial scale w of the masker sigmoid(w * cos + b) (TCL's value).
    cfg.MODEL.MASKER.INIT_W = 10.0
    # Initial bias b of the masker.
    cfg.MODEL.MASKER.INIT_B = -2.5

    # ---------------------------------------------------------------- TTD
    cfg.MODEL.TTD = CN()
    # Master switch: train with text-tag self-distillation (LoRA adapters, TTD losses, hook).
    cfg.MODEL.TTD.ENABLED = False
    # Tag scoring used to select tags: s_pixel | s_image | s_text | image_text | nltk.
    cfg.MODEL.TTD.TAG_SCORING = "s_pixel"
    # A tag is selected when its score >= this threshold (ignored by "nltk").
    cfg.MODEL.TTD.TAG_THRESHOLD = 0.5
    # Drop NLTK English stopwords from the candidate tags.
    cfg.MODEL.TTD.REMOVE_STOPWORDS = True
    # Keep at most this many candidate tags per caption (the first in caption order, after
    # dropping words past the text tower's context window); bounds the memory of tag maps.
    cfg.MODEL.TTD.MAX_TAGS = 32
    # Where distillation targets come from: self (the model being trained) | frozen (the
    # base model = adapters off) | ema (an exponential moving average of the adapters).
    cfg.MODEL.TTD.TEACHER = "frozen"
    # EMA decay of the "ema" teacher, an EMA of each adapted weight's delta s*B*A.
    cfg.MODEL.TTD.EMA_DECAY = 0.999
    # How a selected tag's mask (from the teacher) becomes its distillation target: minmax
    # (the paper's spatial min-max normalisation) | none (the masker probabilities as they are).
    cfg.MODEL.TTD.TARGET_NORM = "minmax"
    cfg.MODEL.TTD.LOSS = CN()
    # Distance between masks: l1 | mse | bce.
    cfg.MODEL.TTD.LOSS.DISTANCE = "l1"
    # Weight a of L_distill (caption mask vs the union of selected tag masks), Eq. 4.
    cfg.MODEL.TTD.LOSS.DISTILL_WEIGHT = 1.0
    # Weight b of L_tag (each tag mask vs its own target), Eq. 5.
    cfg.MODEL.TTD.LOSS.TAG_WEIGHT = 1.0
    cfg.MODEL.TTD.LORA = CN()
    # Rank of the LoRA adapters.
    cfg.MODEL.TTD.LORA.RANK = 8
    # LoRA alpha; the adapter output is scaled by ALPHA / RANK.
    cfg.MODEL.TTD.LORA.ALPHA = 16.0
    # Adapted projections in each block: attn.in_proj, attn.out_proj, mlp.c_fc, mlp.c_proj.
    cfg.MODEL.TTD.LORA.TARGETS = ["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
    # Towers that get adapters: image, text.
    cfg.MODEL.TTD.LORA.TOWERS = ["image", "text"]
    # Adapt only the last N image blocks (0 = all). The blocks before them run once, without
    # a graph, for both student and teacher: faster steps, fewer trainable weights.
    cfg.MODEL.TTD.LORA.IMAGE_LAYERS = 0
    # A LoRA file (model_lora_*.pth of a TTD run, docs/LORA_FILES.md) applied on any config,
    # TTD on or off; its recorded settings must match these keys. "" = none.
    cfg.MODEL.TTD.LORA.WEIGHTS = ""
    # Fold the adapters into the base weights before inference (no extra inference cost);
    # evaluation only, refused in training.
    cfg.MODEL.TTD.LORA.MERGE_FOR_INFERENCE = False

    # ---------------------------------------------------------------- inference
    cfg.MODEL.SEG_INFERENCE = CN()
    # Short side per dataset, overriding INPUT.MIN_SIZE_TEST for the datasets named: pairs
    # [dataset name, pixels] (the training-free literature evaluates COCO-Stuff at 448 and
    # Cityscapes at 560 beside 336 elsewhere; configs/literature/). [] = INPUT.MIN_SIZE_TEST for all.
    cfg.MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET = []
    # Sliding-window crop size in pixels of the resized input (0 = whole image at once).
    cfg.MODEL.SEG_INFERENCE.SLIDE_CROP = 0
    # Sliding-window stride in pixels, at most SLIDE_CROP (0 = SLIDE_CROP: windows do not overlap).
    cfg.MODEL.SEG_INFERENCE.SLIDE_STRIDE = 0
    # Sliding windows per forward pass, pooled over an image's flip and scales (the windows of one
    # size from every pass; 0 = all of a size at once): batching keeps a GPU busy (a batch-1
    # ViT-B/16 forward is launch-bound); memory grows with it (eagerly each window's class maps are
    # names x crop x crop floats).
    cfg.MODEL.SEG_INFERENCE.WINDOW_BATCH = 8
    # How the windows' low-resolution maps become a pass's scores (upsampling, masker, synonym
    # maximum, window average): auto (one Triton kernel on CUDA when Triton is importable, else
    # eager; eager with a warning if it fails) | eager (any device) | triton (CUDA, errors
    # without Triton); ttd_d2/modeling/stitch_kernel.py.
    cfg.MODEL.SEG_INFERENCE.STITCH_KERNEL = "auto"
    # Constant background score for datasets whose class 0 is "background"; a negative value
    # uses the dataset's `background_threshold` metadata.
    cfg.MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD = -1.0
    # Average predictions with the horizontally flipped image (of every scale in SCALES).
    cfg.MODEL.SEG_INFERENCE.FLIP = False
    # Multi-scale inference: resize factors of the (INPUT.MIN_SIZE_TEST-resized) input whose
    # predictions are averaged (paper: 1.0 0.5 1.5 2.0); [1.0] = single scale.
    cfg.MODEL.SEG_INFERENCE.SCALES = [1.0]
    # How class scores are formed: ttd (masker probabilities, constant background score) |
    # softmax (the training-free literature's: softmax over the class names of LOGIT_SCALE x
    # cosine, background = PROB_THRESHOLD); docs/EVALUATION.md.
    cfg.MODEL.SEG_INFERENCE.CLASS_SCORES = "ttd"
    # Logit scale of CLASS_SCORES "softmax" (SCLIP / NACLIP / ClearCLIP: 40).
    cfg.MODEL.SEG_INFERENCE.LOGIT_SCALE = 40.0
    # Background score of CLASS_SCORES "softmax": a pixel whose largest class probability is
    # below it is background (the literature's prob_thd), for datasets with a background class.
    cfg.MODEL.SEG_INFERENCE.PROB_THRESHOLD = 0.0
    # PAMR refinement of the class scores by the image's colour affinities (ttd_d2.modeling.pamr).
    cfg.MODEL.SEG_INFERENCE.PAMR = CN()
    # PAMR iterations (0 = off; the paper's protocol: 10).
    cfg.MODEL.SEG_INFERENCE.PAMR.NUM_ITER = 0
    # Dilations of PAMR's 3x3 neighbourhoods.
    cfg.MODEL.SEG_INFERENCE.PAMR.DILATIONS = [1, 2, 4, 8, 12, 24]
    # How each PAMR iteration runs: auto (the Triton kernels on CUDA when Triton is importable,
    # else eager; eager with a warning if they fail) | eager (the neighbour stack, any device) | triton (one fused kernel,
    # ttd_d2/modeling/pamr_kernel.py; CUDA, errors without Triton).
    cfg.MODEL.SEG_INFERENCE.PAMR.KERNEL = "auto"
    # Masker threshold that turns a caption's mask into its region (caption evaluation).
    cfg.MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD = 0.5

    # ---------------------------------------------------------------- solver
    # Optimizer: ADAMW (CLIP and LoRA training) | SGD (detectron2's default).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # AdamW betas.
    cfg.SOLVER.BETAS = (0.9, 0.98)
    # Read each step's losses and TTD statistics on the host once per writer period (20 steps),
    # in one copy, and write them at their own iterations (ttd_d2/engine/deferred_scalars.py):
    # the step never waits for the GPU. A non-finite loss then stops training at the next write,
    # naming its iteration. False: detectron2's read of every loss every step.
    cfg.SOLVER.DEFER_METRICS = True

    # ---------------------------------------------------------------- data
    # Input size (square) of TTD / contrastive training images after augmentation.
    cfg.INPUT.TRAIN_SIZE = 224
    # Images are RGB (open_clip convention).
    cfg.INPUT.FORMAT = "RGB"
    # Training batches are collated in the loader workers with each array field ("image",
    # "caption_tokens") stacked once (ttd_d2/data/collate.py), so a batch reaches the main process
    # as one tensor per field and the step stacks nothing. False: detectron2's per-sample path
    # (aspect-ratio grouping for record datasets, its trivial collator for streamed ones).
    cfg.DATALOADER.PACKED_BATCHES = True

    # ---------------------------------------------------------------- streamed image-text data
    # Training sources read as webdataset tar shards (ttd_d2/data/streams; docs/DATASETS.md):
    # the DATASETS.TRAIN names registered as shard sources (ttd_cc3m_train, ttd_cc12m_train, or
    # register_shard_source), plus the patterns below.
    cfg.DATASETS.IMAGE_TEXT = CN()
    # Extra sources from any path: one brace / glob pattern of tar shards per source
    # (e.g. ["/data/cc3m/{00000..00331}.tar"]), read after the DATASETS.TRAIN ones.
    cfg.DATASETS.IMAGE_TEXT.SHARDS = []
    # Extra folder sources from any path: folders each holding image/ and json/ (the TTD authors'
    # layout, docs/DATASETS.md), read as map-style datasets after the DATASETS.TRAIN ones (record
    # datasets only: not mixed with shard sources).
    cfg.DATASETS.IMAGE_TEXT.FOLDERS = []
    # Mixing weights, one per source (DATASETS.TRAIN's shard sources, then SHARDS); [] = each
    # source in proportion to its number of shards.
    cfg.DATASETS.IMAGE_TEXT.WEIGHTS = []
    # Sample-level pruning: one keep-list file per source (DATASETS.TRAIN's datasets, then SHARDS'
    # patterns or FOLDERS' folders; "" = that source unpruned), each the sample keys to train on
    # (a shard's __key__, a record's image_id: a folder's file stems), one per line (or a JSON
    # object with a "keys" list); [] = no pruning. Other samples are skipped (counted as not_kept).
    cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS = []
    # Records held by each loader worker's shuffle buffer (compressed images, before decoding).
    cfg.DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER = 2000
    # Training stops with an error once more than this fraction of the samples read are bad
    # (corrupt images, missing or empty captions, unreadable shards; counted from 1000 samples on),
    # for every training source: shard streams and record datasets (folders) alike.
    cfg.DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION = 0.05
