from .clip_dense import CLIPDense
from .clip_loading import load_clip, resolve_arch
from .dense_heads import DENSE_MODES
from .tcl import TCL
