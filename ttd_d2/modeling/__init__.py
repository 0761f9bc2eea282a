from .backbone import TCL, CLIPDense, DENSE_MODES
from .masker import Masker
from .meta_arch import TTD
