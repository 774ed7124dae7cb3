"""
Kernels from well-kept libraries, optional and for CUDA GPUs only (`pip install -e .[gpu]`). The plain
PyTorch path is the reference, and what runs wherever a library or a GPU is absent.

- Config key `output_layer`: how the output layer (hidden @ wte.T) and the cross-entropy are computed.
  'torch' (the default) materialises the logits (50,304 per token) and calls F.cross_entropy; 'liger'
  (Liger-Kernel) fuses the two, so the logits never exist in memory: 40-45% less memory, which lets GPT-2
  small take micro-batches 4-8x larger, but slower than the compiled 'torch' path at the same micro-batch.
- Config key `fp8`: torchao's float8 training for the transformer's Linear layers (opt-in, never a default).

docs/performance.md has what each measured.
"""

import importlib.util

import torch
import torch.nn.functional as F

from training.config import OUTPUT_LAYERS as OUTPUT_LAYER_NAMES


def torch_linear_cross_entropy(hidden, weight, targets, reduction="mean"):
    """Cross-entropy of softmax(hidden @ weight.T) against `targets` (-1: ignored), through the full logits
    (cast to fp32, as autocast runs cross_entropy)."""
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1,
                           reduction=reduction)


# Runs eagerly inside a compiled model (a graph break there): it launches its own Triton kernels, and
# torch.compile 2.11 fails tracing it (an addmm with out_dtype).
@torch.compiler.disable
def liger_linear_cross_entropy(hidden, weight, targets, reduction="mean"):
    """Liger-Kernel's fused linear cross-entropy: logits in chunks of rows, each chunk's loss and gradients in
    the forward pass."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    return liger_fused_linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), weight, targets.reshape(-1),
                                            ignore_index=-1, reduction=reduction)


# name: (function, the module it needs, the package that has it)
OUTPUT_LAYERS = {
    "torch": (torch_linear_cross_entropy, None, None),
    "liger": (liger_linear_cross_entropy, "liger_kernel", "liger-kernel"),
}
assert tuple(OUTPUT_LAYERS) == OUTPUT_LAYER_NAMES, "training/config.py lists the output layers computed here"


def installed(module):
    return importlib.util.find_spec(module) is not None


def check_output_layer(name, cuda):
    """Raises ValueError, saying what to do, unless output layer `name` can run here: a library's needs the
    library installed and a CUDA device."""
    _, module, package = OUTPUT_LAYERS[name]
    if module and not cuda:
        raise ValueError(f"output_layer={name!r} runs Triton kernels on CUDA GPUs only; use output_layer='torch' "
                         f"on the CPU")
    if module and not installed(module):
        raise ValueError(f"output_layer={name!r} needs the {package} package: pip install -e .[gpu] (or pip install "
                         f"{package}); or use output_layer='torch'")


def check_fp8(device):
    """Raises ValueError unless torchao's float8 training can run on `device` (CUDA, compute capability >= 8.9)."""
    if torch.device(device).type != "cuda":
        raise ValueError("fp8=True needs a CUDA GPU with float8 matrix units (H100, H200, L4, RTX 4090 or newer); "
                         "use fp8=False")
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"fp8=True needs float8 matrix units (compute capability >= 8.9); "
                         f"{torch.cuda.get_device_name(device)} has none: use fp8=False")
    if not installed("torchao"):
        raise ValueError("fp8=True needs the torchao package: pip install -e .[gpu] (or pip install torchao)")


def convert_to_float8(model):
    """Swap the transformer's Linear layers for torchao's Float8Linear (matmuls in float8 with dynamic per-tensor
    scales; weights and optimizer state stay fp32). The output layer stays as it is: the vocabulary projection is
    the most sensitive to precision, and a fused output layer does not call it as a module anyway."""
    from torchao.float8 import convert_to_float8_training

    def eligible(module, name):  # float8 matmuls need both dimensions divisible by 16
        return name != "lm_head" and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=eligible)
