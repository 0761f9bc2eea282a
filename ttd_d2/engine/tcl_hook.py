"""Training hook of TCL's own objective: the trained TCL written in the authors' checkpoint
format, which ``MODEL.TCL.WEIGHTS`` reads (zero-shot TCL configs, TTD on TCL)."""
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..modeling.backbone.tcl_checkpoint import tcl_checkpoint
from ..modeling.lora.file import save_lora_file
from .hooks import unwrap

# TCL's names of its two InfoNCE temperatures (skipped by MODEL.TCL.WEIGHTS, kept for TCL's code)
TEMPERATURE_KEYS = {"tcli_loss.logit_scale": "image_temperature", "tclf_loss.logit_scale": "feature_temperature"}


def tcl_objective_checkpoint(model, step: int = 0) -> dict:
    """A TCL checkpoint in the authors' format (docs/BACKBONES.md) of a model trained with TCL's
    objective: the head, the masker's w, b and, with the contrastive weight on, the two learnable
    temperatures; plain CPU tensors, without the frozen CLIP."""
    model = unwrap(model)
    content = tcl_checkpoint(model.backbone.head, model.masker.state_dict(), step=step)
    objective = model.backbone.objective
    for key, name in TEMPERATURE_KEYS.items():
        if hasattr(objective, name):
            content["model"][key] = getattr(objective, name).logit_scale.detach().cpu().clone()
    return content


class TCLCheckpointHook(HookBase):
    """Added by the trainer when the backbone trains with TCL's objective. Every ``period``
    steps and at the end, the main process writes ``model_tcl_<iter>.pth`` /
    ``model_tcl_final.pth`` in ``output_dir`` (:func:`tcl_objective_checkpoint`; detectron2's own
    ``model_*.pth`` beside them hold the whole model, the frozen CLIP included)."""

    def __init__(self, output_dir: str, period: int):
        self.output_dir = output_dir
        self.period = period

    def after_step(self):
        next_iter = self.trainer.iter + 1  # named like detectron2's PeriodicCheckpointer does
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self._save(f"model_tcl_{self.trainer.iter:07d}.pth", next_iter)

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # iter is max_iter after a finished run
            self._save("model_tcl_final.pth", self.trainer.max_iter)

    def _save(self, name: str, steps: int):
        if comm.is_main_process():
            content = tcl_objective_checkpoint(self.trainer.model, steps)
            save_lora_file(content, os.path.join(self.output_dir, name))  # an atomic torch.save
