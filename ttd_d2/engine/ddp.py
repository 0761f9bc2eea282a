"""DistributedDataParallel wrapping as detectron2 does it, for CPU models too."""
from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from torch import nn


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model`` (the model itself for one process, else
    ``DistributedDataParallel``), with ``device_ids=None`` for a CPU model.

    detectron2 passes ``device_ids=[local_rank]`` unless told otherwise, which DDP rejects for
    a module on the CPU: multi-process CPU training (gloo) would fail when the model is wrapped.
    """
    if "device_ids" not in kwargs and all(p.device.type == "cpu" for p in model.parameters()):
        kwargs["device_ids"] = None
    return d2_create_ddp_model(model, **kwargs)
