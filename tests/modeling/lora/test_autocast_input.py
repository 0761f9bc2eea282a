"""``low_rank_linear`` under autocast casts a float32 input once for both of its matrix products
(autocast would cast it once per product): the same output, one cast fewer."""
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ttd_d2.modeling.lora.layers import LoRALinear, low_rank_linear


class _CountCasts(TorchDispatchMode):
    """Counts ``aten._to_copy`` calls that turn a tensor of ``shape`` (or a reshape of it) into
    bfloat16."""

    def __init__(self, shape):
        super().__init__()
        self.numel, self.count = torch.Size(shape).numel(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].numel() == self.numel \
                and kwargs.get("dtype") == torch.bfloat16:
            self.count += 1
        return func(*args, **kwargs)


def _adapter(seed=0):
    torch.manual_seed(seed)
    layer = LoRALinear(torch.nn.Linear(24, 40), rank=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)
    layer.base.requires_grad_(False)
    return layer


def _two_cast_reference(x, layer):
    """``low_rank_linear``'s products with ``x`` cast for each: by autocast for the low-rank
    one, by hand for the in-place frozen one (autocast does not cast in-place ops)."""
    flat = x.reshape(-1, x.shape[-1])
    low = F.linear(flat, layer.lora_A)
    y = torch.addmm(layer.base.bias, low, (layer.scaling * layer.lora_B).t())
    y.addmm_(flat.to(y.dtype), layer.base.weight.to(y.dtype).t())
    return y.view(*x.shape[:-1], -1)


def test_one_cast_and_the_same_bits_under_autocast():
    layer = _adapter()
    x = torch.randn(3, 5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _two_cast_reference(x, layer)
        with _CountCasts(x.shape) as counter:
            got = layer(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)
    assert counter.count == 1

    with torch.autocast("cpu", dtype=torch.bfloat16), _CountCasts(x.shape) as counter:
        _two_cast_reference(x, layer)
    assert counter.count == 2  # the count above is not vacuous


def test_adapter_gradients_agree_with_the_two_cast_path():
    layer, reference = _adapter(), _adapter()
    x = torch.randn(2, 7, 24)
    for module, run in ((layer, lambda: layer(x)), (reference, lambda: _two_cast_reference(x, reference))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
        out.float().square().sum().backward()
    for name in ("lora_A", "lora_B"):
        torch.testing.assert_close(getattr(layer, name).grad, getattr(reference, name).grad, rtol=2e-2, atol=1e-3)


def test_float32_without_autocast_is_unchanged():
    layer = _adapter()
    x = torch.randn(4, 24)
    assert torch.equal(low_rank_linear(x, layer.base.weight, layer.base.bias, layer), _two_cast_reference(x, layer))
