"""Config validation at build time: ``build_model`` refuses a bad model key before CLIP is
loaded, ``TTDTrainer(cfg)`` a bad training key before any data loader is built; every error
names the key and what is allowed."""
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import make_tiny_cfg
from ttd_d2 import add_ttd_config
from ttd_d2.config_checks import check_model_config, check_training_config
from ttd_d2.config_checks_tcl import tcl_objective_on
from ttd_d2.engine import TTDTrainer
from ttd_d2.modeling.backbone import clip_dense

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_ROOT.rglob("*.yaml"))
UNREGISTERED = ("ttd_d2_test_config_checks_not_a_dataset",)

# (key, bad value, fragment of the message): one row per kind of check.
MODEL_CASES = [
    ("MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.NAME = 'build_resnet_backbone'"),
    ("INPUT.FORMAT", "BGR", "INPUT.FORMAT = 'BGR' is unknown: use one of RGB"),
    ("MODEL.CLIP.DENSE_MODE", "maskclip++", "MODEL.CLIP.DENSE_MODE = 'maskclip++' is unknown: use one of vanilla, maskclip"),
    ("MODEL.CLIP.ATTN_SCALE", -0.1, "MODEL.CLIP.ATTN_SCALE = -0.1: must be >= 0"),
    ("MODEL.CLIP.NACLIP_SIGMA", 0.0, "MODEL.CLIP.NACLIP_SIGMA = 0.0: must be > 0"),
    ("MODEL.CLIP.PROMPT_TEMPLATES", ["a photo"], "MODEL.CLIP.PROMPT_TEMPLATES = ['a photo']"),
    ("MODEL.CLIP.CONTRASTIVE_WEIGHT", -1.0, "MODEL.CLIP.CONTRASTIVE_WEIGHT = -1.0: must be >= 0"),
    ("MODEL.CLIP.BF16", 1, "MODEL.CLIP.BF16 = 1: must be True or False"),
    ("MODEL.TCL.WEIGHTS", "tcl.pth", "MODEL.TCL.WEIGHTS = 'tcl.pth' is set but MODEL.BACKBONE.NAME is 'CLIPDense'"),
    ("MODEL.TCL.WEIGHTS", None, "MODEL.TCL.WEIGHTS = None: must be a path to a TCL checkpoint or ''"),
    ("MODEL.TCL.MASKER_FROM_WEIGHTS", 1, "MODEL.TCL.MASKER_FROM_WEIGHTS = 1: must be True or False"),
    ("MODEL.TCL.PIXEL_MEAN", [0.5, 0.5], "MODEL.TCL.PIXEL_MEAN = [0.5, 0.5], MODEL.TCL.PIXEL_STD = [0.229, 0.224, 0.225]: must be 3 numbers each"),
    ("MODEL.TCL.PIXEL_MEAN", [], "or [] for both to use the CLIP's own"),
    ("MODEL.TCL.PIXEL_STD", [0.2, 0.0, 0.2], "MODEL.TCL.PIXEL_STD = [0.2, 0.0, 0.2]: must be 3 numbers each"),
    ("MODEL.TCL.TRAIN_DECODER", "no", "MODEL.TCL.TRAIN_DECODER = 'no': must be True or False"),
    ("MODEL.TCL.GUMBEL_TAU", 0.0, "MODEL.TCL.GUMBEL_TAU = 0.0: must be > 0"),
    ("MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT", -0.1, "MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT = -0.1: must be >= 0"),
    ("MODEL.TCL.LOSS.AREA_WEIGHT", "0.4", "MODEL.TCL.LOSS.AREA_WEIGHT = '0.4': must be a number >= 0"),
    ("MODEL.TCL.LOSS.TV_WEIGHT", float("inf"), "MODEL.TCL.LOSS.TV_WEIGHT = inf: must be a number >= 0"),
    ("MODEL.TCL.LOSS.TV_WEIGHT", 1.0, "MODEL.TCL.LOSS weights > 0 but MODEL.BACKBONE.NAME is 'CLIPDense'"),
    ("MODEL.TCL.LOSS.POSITIVE_AREA_PRIOR", 1.5, "MODEL.TCL.LOSS.POSITIVE_AREA_PRIOR = 1.5: must be in [0, 1]"),
    ("MODEL.TCL.LOSS.NEGATIVE_AREA_PRIOR", -0.1, "MODEL.TCL.LOSS.NEGATIVE_AREA_PRIOR = -0.1: must be in [0, 1]"),
    ("MODEL.TCL.LOSS.INIT_TEMPERATURE", 0.005, "MODEL.TCL.LOSS.INIT_TEMPERATURE = 0.005: must be >= 0.01 (the logit scale 1 / T is capped at 100)"),
    ("MODEL.MASKER.INIT_W", 0.0, "MODEL.MASKER.INIT_W = 0.0: must be > 0"),
    ("MODEL.MASKER.INIT_B", float("nan"), "MODEL.MASKER.INIT_B = nan: must be a number"),
    ("MODEL.TTD.TAG_SCORING", "s_caption", "MODEL.TTD.TAG_SCORING = 's_caption' is unknown: use one of s_image, s_text, s_pixel, image_text, nltk"),
    ("MODEL.TTD.TAG_THRESHOLD", 1.5, "MODEL.TTD.TAG_THRESHOLD = 1.5: must be in [0, 1]"),
    ("MODEL.TTD.MAX_TAGS", 0, "MODEL.TTD.MAX_TAGS = 0: must be >= 1"),
    ("MODEL.TTD.TEACHER", "student", "MODEL.TTD.TEACHER = 'student' is unknown: use one of self, frozen, ema"),
    ("MODEL.TTD.EMA_DECAY", 1.001, "MODEL.TTD.EMA_DECAY = 1.001: must be in [0, 1]"),
    ("MODEL.TTD.EMA_DECAY", -0.5, "MODEL.TTD.EMA_DECAY = -0.5: must be in [0, 1]"),
    ("MODEL.TTD.TARGET_NORM", "softmax", "MODEL.TTD.TARGET_NORM = 'softmax' is unknown: use one of minmax, none"),
    ("MODEL.TTD.LOSS.DISTANCE", "l2", "MODEL.TTD.LOSS.DISTANCE = 'l2' is unknown: use one of l1, mse, bce"),
    ("MODEL.TTD.LOSS.DISTILL_WEIGHT", -1.0, "MODEL.TTD.LOSS.DISTILL_WEIGHT = -1.0: must be >= 0"),
    ("MODEL.TTD.LOSS.TAG_WEIGHT", -0.5, "MODEL.TTD.LOSS.TAG_WEIGHT = -0.5: must be >= 0"),
    ("MODEL.TTD.LORA.RANK", 0, "MODEL.TTD.LORA.RANK = 0: must be >= 1"),
    ("MODEL.TTD.LORA.RANK", 2.5, "MODEL.TTD.LORA.RANK = 2.5: must be an integer"),
    ("MODEL.TTD.LORA.ALPHA", 0.0, "MODEL.TTD.LORA.ALPHA = 0.0: must be > 0"),
    ("MODEL.TTD.LORA.TARGETS", ["attn.qkv"], "MODEL.TTD.LORA.TARGETS = ['attn.qkv']: must be a non-empty list of distinct names from attn.in_proj"),
    ("MODEL.TTD.LORA.TARGETS", [], "MODEL.TTD.LORA.TARGETS = []"),
    ("MODEL.TTD.LORA.TARGETS", "mlp.c_fc", "(not a string)"),
    ("MODEL.TTD.LORA.TOWERS", ["image", "audio"], "MODEL.TTD.LORA.TOWERS = ['image', 'audio']: must be a non-empty list of distinct names from image, text"),
    ("MODEL.TTD.LORA.IMAGE_LAYERS", -1, "MODEL.TTD.LORA.IMAGE_LAYERS = -1: must be in [0, 2]"),
    ("MODEL.TTD.LORA.IMAGE_LAYERS", 3, "MODEL.TTD.LORA.IMAGE_LAYERS = 3: must be in [0, 2]"),  # tiny CLIP: 2 blocks
    ("MODEL.SEG_INFERENCE.SLIDE_CROP", -8, "MODEL.SEG_INFERENCE.SLIDE_CROP = -8: must be 0 (whole image) or >= the patch size (8)"),
    ("MODEL.SEG_INFERENCE.SLIDE_CROP", 4, "MODEL.SEG_INFERENCE.SLIDE_CROP = 4: must be 0 (whole image) or >= the patch size (8)"),
    ("MODEL.SEG_INFERENCE.SLIDE_STRIDE", -1, "MODEL.SEG_INFERENCE.SLIDE_STRIDE = -1: must be in [0, MODEL.SEG_INFERENCE.SLIDE_CROP = 0]"),
    ("MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD", 1.5, "MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD = 1.5: must be <= 1"),
    ("MODEL.SEG_INFERENCE.FLIP", "yes", "MODEL.SEG_INFERENCE.FLIP = 'yes': must be True or False"),
    ("MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD", 1.2, "MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD = 1.2: must be in [0, 1]"),
    ("MODEL.CLIP.PROMPT_TEMPLATE_SET", "imagenet", "MODEL.CLIP.PROMPT_TEMPLATE_SET = 'imagenet' is unknown: use one of imagenet80 or ''"),
    ("MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET", [["ttd_voc21_val", 0]],
     "MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET = [['ttd_voc21_val', 0]]: must be a list of [dataset name, short side"),
    ("MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET", [["a", 448], ["a", 560]], "each dataset once"),
    ("MODEL.SEG_INFERENCE.MIN_SIZE_TEST_BY_DATASET", ["ttd_voc21_val"], "[dataset name, short side in pixels] pairs"),
    ("MODEL.SEG_INFERENCE.WINDOW_BATCH", -1, "MODEL.SEG_INFERENCE.WINDOW_BATCH = -1: must be >= 0"),
    ("MODEL.SEG_INFERENCE.WINDOW_BATCH", 2.5, "MODEL.SEG_INFERENCE.WINDOW_BATCH = 2.5: must be an integer >= 0"),
    ("MODEL.SEG_INFERENCE.SCALES", [], "MODEL.SEG_INFERENCE.SCALES = []: must be a non-empty list of positive numbers"),
    ("MODEL.SEG_INFERENCE.SCALES", [1.0, -0.5], "MODEL.SEG_INFERENCE.SCALES = [1.0, -0.5]: must be a non-empty list"),
    ("MODEL.SEG_INFERENCE.CLASS_SCORES", "sigmoid", "MODEL.SEG_INFERENCE.CLASS_SCORES = 'sigmoid' is unknown: use one of ttd, softmax"),
    ("MODEL.SEG_INFERENCE.LOGIT_SCALE", 0.0, "MODEL.SEG_INFERENCE.LOGIT_SCALE = 0.0: must be > 0"),
    ("MODEL.SEG_INFERENCE.PROB_THRESHOLD", 1.5, "MODEL.SEG_INFERENCE.PROB_THRESHOLD = 1.5: must be in [0, 1]"),
    ("MODEL.SEG_INFERENCE.PAMR.NUM_ITER", -1, "MODEL.SEG_INFERENCE.PAMR.NUM_ITER = -1: must be >= 0 (0 = off)"),
    ("MODEL.SEG_INFERENCE.PAMR.DILATIONS", [1, 0], "MODEL.SEG_INFERENCE.PAMR.DILATIONS = [1, 0]: must be a non-empty list of positive integers"),
    ("MODEL.SEG_INFERENCE.PAMR.KERNEL", "cuda", "MODEL.SEG_INFERENCE.PAMR.KERNEL = 'cuda' is unknown: use one of auto, eager, triton"),
]

# Keys only training reads: refused by TTDTrainer(cfg), not by build_model (--eval-only).
TRAINING_CASES = [
    ({"SOLVER.AMP.ENABLED": True}, "SOLVER.AMP.ENABLED = True: not supported"),
    ({"SOLVER.OPTIMIZER": "LAMB"}, "SOLVER.OPTIMIZER = 'LAMB' is unknown: use one of ADAMW, SGD"),
    ({"SOLVER.BETAS": (0.9, 1.0)}, "SOLVER.BETAS = (0.9, 1.0): must be two numbers in [0, 1)"),
    ({"MODEL.TTD.ENABLED": False}, "nothing to train: MODEL.TTD.ENABLED is False, MODEL.CLIP.CONTRASTIVE_WEIGHT and the MODEL.TCL.LOSS weights are 0"),
    ({"MODEL.TTD.LOSS.DISTILL_WEIGHT": 0.0, "MODEL.TTD.LOSS.TAG_WEIGHT": 0.0}, "nothing to train: MODEL.TTD.LOSS.DISTILL_WEIGHT"),
    ({"MODEL.TTD.LORA.MERGE_FOR_INFERENCE": True}, "MODEL.TTD.LORA.MERGE_FOR_INFERENCE = True"),
    ({"INPUT.TRAIN_SIZE": 36}, "INPUT.TRAIN_SIZE = 36: must be > 0 and a multiple of the patch size (8)"),
    ({"INPUT.TRAIN_SIZE": 0}, "INPUT.TRAIN_SIZE = 0: must be > 0"),
    ({"INPUT.RANDOM_FLIP": "horizonal"}, "INPUT.RANDOM_FLIP = 'horizonal' is unknown: use one of none, horizontal, vertical"),
    ({"DATASETS.TRAIN": ()}, "DATASETS.TRAIN = ()"),
    ({"DATASETS.IMAGE_TEXT.SHARDS": [""]}, "DATASETS.IMAGE_TEXT.SHARDS = ['']: must be a list of shard patterns"),
    ({"DATASETS.IMAGE_TEXT.WEIGHTS": [1.0, 0.0]}, "DATASETS.IMAGE_TEXT.WEIGHTS = [1.0, 0.0]: must be positive numbers"),
    ({"DATASETS.IMAGE_TEXT.KEEP_LISTS": [1]}, "DATASETS.IMAGE_TEXT.KEEP_LISTS = [1]: must be a list of keep-list paths"),
    ({"DATALOADER.PACKED_BATCHES": 1}, "DATALOADER.PACKED_BATCHES = 1: must be True or False"),
    ({"DATASETS.IMAGE_TEXT.FOLDERS": [""]}, "DATASETS.IMAGE_TEXT.FOLDERS = ['']: must be a list of folder paths"),
    ({"DATASETS.IMAGE_TEXT.FOLDERS": ["/a"], "DATASETS.IMAGE_TEXT.SHARDS": ["/b/*.tar"]},
     "DATASETS.IMAGE_TEXT.FOLDERS with shard sources: train on one kind"),
    ({"DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER": -1}, "DATASETS.IMAGE_TEXT.SHUFFLE_BUFFER = -1: must be >= 0"),
    ({"DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION": 1.5}, "DATASETS.IMAGE_TEXT.MAX_BAD_FRACTION = 1.5: must be in [0, 1]"),
    ({"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.ENABLED": False, "MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0},
     "MODEL.BACKBONE.NAME = 'TCL' with MODEL.TTD.ENABLED False and MODEL.CLIP.CONTRASTIVE_WEIGHT > 0"),
    ({"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.ENABLED": False, "MODEL.TCL.TRAIN_DECODER": True},
     "MODEL.TCL.TRAIN_DECODER = True is read only with MODEL.TTD.ENABLED True"),
    ({"MODEL.TCL.DECODER_ONLY_ITERS": 10}, "MODEL.TCL.DECODER_ONLY_ITERS = 10 is read only by TCL's objective"),
    ({"MODEL.TCL.DECODER_ONLY_ITERS": -1}, "MODEL.TCL.DECODER_ONLY_ITERS = -1: must be in [0, SOLVER.MAX_ITER = 40000)"),
    ({"MODEL.TCL.DECODER_ONLY_ITERS": 2.5}, "MODEL.TCL.DECODER_ONLY_ITERS = 2.5: must be an integer in [0, SOLVER.MAX_ITER"),
    ({"SOLVER.MAX_ITER": 10, "MODEL.TCL.DECODER_ONLY_ITERS": 10}, "MODEL.TCL.DECODER_ONLY_ITERS = 10: must be in [0, SOLVER.MAX_ITER = 10)"),
]

# TCL's objective on: the TCL backbone, TTD off, TCL's weights (configs/synthetic/pretrain_tcl.yaml)
TCL_OBJECTIVE = {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.ENABLED": False, "MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT": 0.1,
                 "MODEL.TCL.LOSS.AREA_WEIGHT": 0.4, "MODEL.TCL.LOSS.TV_WEIGHT": 1.0}


@pytest.fixture
def no_clip(monkeypatch):
    """Loading CLIP fails the test: a check must come first."""
    def load_clip(*args, **kwargs):
        raise AssertionError("CLIP was loaded before the config was checked")

    monkeypatch.setattr(clip_dense, "load_clip", load_clip)


@pytest.fixture
def no_loader(monkeypatch):
    """Building a data loader fails the test (and the training dataset is not even registered)."""
    def build_train_loader(cls, cfg):
        raise AssertionError("a data loader was built before the config was checked")

    monkeypatch.setattr(TTDTrainer, "build_train_loader", classmethod(build_train_loader))


def set_keys(cfg, keys):
    for key, value in keys.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = value  # direct assignment: values yacs' merge would refuse by type reach the checks too
    return cfg


def train_cfg(tmp_path, **keys):
    cfg = make_tiny_cfg()
    cfg.MODEL.TTD.ENABLED = True
    cfg.DATASETS.TRAIN = UNREGISTERED
    cfg.DATASETS.TEST = ()
    cfg.INPUT.TRAIN_SIZE = 32
    cfg.OUTPUT_DIR = str(tmp_path)
    return set_keys(cfg, keys)


@pytest.mark.parametrize("key, value, fragment", MODEL_CASES)
def test_build_model_refuses_bad_key_before_loading_clip(no_clip, key, value, fragment):
    cfg = set_keys(make_tiny_cfg(), {key: value})
    with pytest.raises(ValueError) as info:
        build_model(cfg)
    assert fragment in str(info.value)


def test_tcl_backbone_refuses_another_dense_mode(no_clip):
    cfg = set_keys(make_tiny_cfg(), {"MODEL.BACKBONE.NAME": "TCL", "MODEL.CLIP.DENSE_MODE": "naclip"})
    with pytest.raises(ValueError, match="MODEL.CLIP.DENSE_MODE = 'naclip': the TCL backbone runs its copied last block as MaskCLIP"):
        build_model(cfg)


def test_tcl_dense_path_is_checked(no_clip):
    cfg = set_keys(make_tiny_cfg(), {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.DENSE_PATH": "clear"})
    with pytest.raises(ValueError, match="MODEL.TCL.DENSE_PATH = 'clear' is unknown: use one of vanilla, maskclip"):
        build_model(cfg)


def test_tcl_decoder_conv_is_checked(no_clip):
    cfg = set_keys(make_tiny_cfg(), {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.DECODER_CONV": "fft"})
    with pytest.raises(ValueError, match="MODEL.TCL.DECODER_CONV = 'fft' is unknown: use one of auto, winograd, direct"):
        build_model(cfg)


@pytest.mark.parametrize("keys", [{"MODEL.TTD.ENABLED": True}, {"MODEL.TTD.LORA.WEIGHTS": "model_lora_final.pth"}])
def test_tcl_objective_is_refused_beside_ttd_and_lora_files(no_clip, keys):
    cfg = set_keys(make_tiny_cfg(), {**TCL_OBJECTIVE, **keys})
    with pytest.raises(ValueError, match="TCL's objective trains TCL's head from its frozen CLIP, TTD adapts a trained"):
        build_model(cfg)


def test_valid_tcl_objective_config_reaches_the_loader(tmp_path, no_loader):
    with pytest.raises(AssertionError, match="data loader was built"):
        TTDTrainer(train_cfg(tmp_path, **TCL_OBJECTIVE, **{"SOLVER.MAX_ITER": 10, "MODEL.TCL.DECODER_ONLY_ITERS": 6}))


def test_slide_stride_larger_than_crop_is_refused(no_clip):
    cfg = set_keys(make_tiny_cfg(), {"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 48})
    with pytest.raises(ValueError, match=r"SLIDE_STRIDE = 48: must be in \[0, MODEL.SEG_INFERENCE.SLIDE_CROP = 32\]"):
        build_model(cfg)


def test_every_problem_is_reported_at_once(no_clip):
    cfg = set_keys(make_tiny_cfg(), {"MODEL.TTD.LOSS.DISTANCE": "l2", "MODEL.TTD.EMA_DECAY": 2.0})
    with pytest.raises(ValueError, match=r"2 problem\(s\)") as info:
        build_model(cfg)
    assert "MODEL.TTD.LOSS.DISTANCE" in str(info.value) and "MODEL.TTD.EMA_DECAY" in str(info.value)


@pytest.mark.parametrize("keys, fragment", TRAINING_CASES)
def test_trainer_refuses_bad_training_key_before_any_loader(tmp_path, no_clip, no_loader, keys, fragment):
    with pytest.raises(ValueError) as info:
        TTDTrainer(train_cfg(tmp_path, **keys))
    assert fragment in str(info.value)


def test_trainer_refuses_bad_model_key_before_any_loader(tmp_path, no_clip, no_loader):
    with pytest.raises(ValueError, match="MODEL.TTD.LOSS.DISTANCE = 'l2'"):
        TTDTrainer(train_cfg(tmp_path, **{"MODEL.TTD.LOSS.DISTANCE": "l2"}))


def test_amp_refusal_points_at_bf16(tmp_path, no_clip, no_loader):
    with pytest.raises(ValueError, match="MODEL.CLIP.BF16 True") as info:
        TTDTrainer(train_cfg(tmp_path, **{"SOLVER.AMP.ENABLED": True}))
    assert "float16" in str(info.value)


def test_trainer_refuses_a_model_with_no_trainable_parameter(tmp_path, no_loader, monkeypatch):
    cfg = train_cfg(tmp_path)
    frozen = build_model(cfg).requires_grad_(False)
    monkeypatch.setattr(TTDTrainer, "build_model", classmethod(lambda cls, cfg: frozen))
    with pytest.raises(ValueError, match="nothing to train: no parameter of the model requires grad"):
        TTDTrainer(cfg)


def test_eval_only_model_is_not_refused_for_training_keys(tmp_path):
    """--eval-only builds the model with TTDTrainer.build_model: training keys do not matter."""
    keys = {key: value for keys, _ in TRAINING_CASES for key, value in keys.items()}
    keys.update({"MODEL.TTD.ENABLED": True, "MODEL.TTD.LORA.MERGE_FOR_INFERENCE": True})
    model = TTDTrainer.build_model(train_cfg(tmp_path, **keys))
    assert model.ttd_enabled


def test_valid_trainer_config_reaches_the_loader(tmp_path, no_loader):
    """The checks pass a good config: the trainer gets as far as the (patched) loader."""
    with pytest.raises(AssertionError, match="data loader was built"):
        TTDTrainer(train_cfg(tmp_path))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(CONFIG_ROOT).as_posix() for p in CONFIGS])
def test_shipped_configs_pass_the_checks(path):
    cfg = get_cfg()
    add_ttd_config(cfg)
    cfg.merge_from_file(str(path))
    check_model_config(cfg)
    if cfg.MODEL.TTD.ENABLED or cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT > 0 or tcl_objective_on(cfg):  # training configs
        check_training_config(cfg)


def test_a_masker_init_that_a_tcl_checkpoint_would_override_is_refused(no_clip, tmp_path):
    from ttd_d2.config_checks_tcl import MASKER_DEFAULTS
    cfg = make_tiny_cfg()
    assert (cfg.MODEL.MASKER.INIT_W, cfg.MODEL.MASKER.INIT_B) == MASKER_DEFAULTS
    cfg = set_keys(cfg, {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.WEIGHTS": str(tmp_path / "tcl.pth"),
                         "MODEL.MASKER.INIT_B": -2.8})
    with pytest.raises(ValueError, match="MASKER_FROM_WEIGHTS False"):
        build_model(cfg)


def test_problems_are_raised_as_one_config_error_and_listed_alike():
    """raise_problems: a ConfigError (a ValueError, for library callers) holding each problem;
    model_config_problems gives the same sentences as a list (engine.preflight lists them)."""
    from ttd_d2.config_checks import ConfigError, model_config_problems
    cfg = set_keys(make_tiny_cfg(), {"MODEL.TTD.TAG_THRESHOLD": 2.0, "MODEL.TTD.LOSS.DISTANCE": "l3"})
    expected = ["MODEL.TTD.TAG_THRESHOLD = 2.0: must be in [0, 1] (tag scores are probabilities)",
                "MODEL.TTD.LOSS.DISTANCE = 'l3' is unknown: use one of l1, mse, bce"]
    assert model_config_problems(cfg) == expected
    with pytest.raises(ConfigError) as error:
        check_model_config(cfg)
    assert isinstance(error.value, ValueError) and error.value.problems == expected
    assert str(error.value) == "invalid model config (2 problem(s)):\n  - " + "\n  - ".join(expected)
    assert model_config_problems(make_tiny_cfg()) == []
