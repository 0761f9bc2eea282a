"""ttd_d2: TTD (Text-Tag Self-Distillation) for CLIP-based dense models, as a Detectron2 plugin."""
from . import data  # noqa: F401  (registers datasets)
from .config import add_ttd_config
from .config_loading import load_config
from .engine import TTDHook, TTDTrainer
from .modeling import TCL, TTD, CLIPDense, Masker
