"""Detectron2's checkpointer, refusing files that would load nothing or the wrong model.

detectron2 loads ``MODEL.WEIGHTS`` with ``strict=False`` and only logs what did not match: a LoRA
file, another model's checkpoint or a state dict of other weights then evaluates the base model
as if it were the checkpoint's. ``TTDCheckpointer`` raises instead, naming the file and the fix.
"""
from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.lora.file import WEIGHTS_KEY, is_lora_file

_SHOWN = 3  # keys quoted per error


def _first(keys) -> str:
    keys = list(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(map(str, keys[:_SHOWN])) + more


class TTDCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose loads fail with one message naming the file when:

    - the file cannot be read (truncated, not a torch file), or ``last_checkpoint`` under
      ``--resume`` names a missing file or is not text;
    - it is a LoRA file (give it as ``MODEL.TTD.LORA.WEIGHTS``);
    - none of its weights is one of the model's;
    - it holds weights the model lacks (another backbone or head, LoRA adapters the config does
      not add) or weights of other shapes: the config is not the one it was trained with.

    Weights the model has and the file lacks are only logged, as detectron2 does (e.g. a
    checkpoint written before a buffer was added)."""

    _loading = ""  # the file whose "model" _load_model is loading

    def get_checkpoint_file(self):
        try:
            return super().get_checkpoint_file()
        except (UnicodeDecodeError, OSError) as e:
            raise ValueError(f"--resume: {self.save_dir}/last_checkpoint cannot be read ({type(e).__name__}: {e}); "
                             "delete it (the latest model_*.pth is then not resumed) or run without --resume") from e

    def load(self, path, checkpointables=None):
        if path and "://" not in path and not self.path_manager.isfile(path):  # URLs: fvcore fetches them
            hint = (f"; it is named by {self.save_dir}/last_checkpoint (--resume): fix or delete that file, or run "
                    "without --resume") if path == self._last_checkpoint_target() else ""
            raise FileNotFoundError(f"checkpoint '{path}' does not exist{hint}")
        return super().load(path, checkpointables)

    def _last_checkpoint_target(self):
        try:
            return super().get_checkpoint_file() if self.has_checkpoint() else None
        except Exception:  # an unreadable last_checkpoint: get_checkpoint_file reports it
            return None

    def _load_file(self, filename):
        try:
            loaded = super()._load_file(filename)
        except Exception as e:  # truncated zip, random bytes, an empty file...
            raise ValueError(f"checkpoint '{filename}' cannot be read ({type(e).__name__}: {e}); it is not an intact "
                             "model_*.pth: give another file (under --resume: delete it and the last_checkpoint "
                             "naming it)") from e
        if is_lora_file(loaded.get("model", loaded) if isinstance(loaded, dict) else loaded):
            raise ValueError(
                f"MODEL.WEIGHTS '{filename}' is a LoRA file (the adapters and masker of a TTD run), not a full "
                f"checkpoint: give it as {WEIGHTS_KEY} {filename} (MODEL.WEIGHTS takes a model_*.pth, or '')"
            )
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            held = loaded.get("model") if isinstance(loaded, dict) else loaded  # fvcore wraps a bare object
            raise ValueError(f"checkpoint '{filename}' holds no state dict of weights (a {type(held).__name__}); "
                             "give a model_*.pth written by tools/train_net.py")
        self._loading = filename
        return loaded

    def _load_model(self, checkpoint):
        names = [k[len("module."):] if k.startswith("module.") else k for k in checkpoint["model"]]
        incompatible = super()._load_model(checkpoint)
        path = self._loading or "the checkpoint"
        model_keys = set(self.model.state_dict())
        if names and not model_keys.intersection(names):
            raise ValueError(f"checkpoint '{path}' has none of this model's weights (its keys: {_first(names)}): "
                             "give a model_*.pth of a ttd_d2 run")
        if incompatible.unexpected_keys or incompatible.incorrect_shapes:
            found = (f"weights this model lacks ({_first(incompatible.unexpected_keys)})"
                     if incompatible.unexpected_keys else
                     f"weights of other shapes ({_first(k for k, *_ in incompatible.incorrect_shapes)})")
            raise ValueError(f"checkpoint '{path}' holds {found}: it was trained with another config (backbone, "
                             "head, LoRA adapters); evaluate it with that config, or give that run's LoRA file as "
                             f"{WEIGHTS_KEY}")
        return incompatible
