"""float16 training (the official code's dtype on GPUs without bf16) on the CPU: losses scaled for their
backward by a GradScaler, the Hessian estimated from unscaled gradients (sophia.fold_in_estimate's
loss_scale), an overflowed estimate dropped rather than folded in, and the scaler's state checkpointed."""

import os

import pytest
import torch
from conftest import args, records, run_main

from sophia import SophiaG, fold_in_estimate
from training.checkpoint import load_checkpoint


def test_a_scaled_estimate_is_unscaled_before_it_is_folded_in():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(3)]
    hessians = []
    for loss_scale in (None, 1024.0):  # a power of two: unscaling is exact
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        optimizer = SophiaG(params, betas=(0.9, 0.5))
        for p, g in zip(params, grads):
            p.grad = g * (loss_scale or 1)
        assert fold_in_estimate(optimizer, loss_scale=loss_scale)
        hessians.append([optimizer.state[p]["hessian"] for p in params])
    for unscaled, scaled in zip(*hessians):
        assert torch.equal(unscaled, scaled)
        assert torch.allclose(unscaled, 0.5 * grads[0].square()) or unscaled.shape != grads[0].shape


def test_an_overflowed_estimate_is_dropped():
    params = [torch.nn.Parameter(torch.zeros(4))]
    optimizer = SophiaG(params)
    params[0].grad = torch.tensor([1.0, float("inf"), 2.0, 3.0])
    assert not fold_in_estimate(optimizer, loss_scale=65536.0)
    assert params[0].grad is None and optimizer.state[params[0]].get("hessian") is None
    assert optimizer.param_groups[0].get("hessian_updates", 0) == 0


@pytest.mark.parametrize("gnb_batch", ["fresh", "train"])
def test_fp16_training_estimates_the_hessian_from_unscaled_gradients(gnb_batch, data_root, tmp_path):
    """Three refreshes in fp16 against float32: the Hessian norms agree to fp16 noise, where an estimate
    left scaled (65536, squared) would be ~4e9 times larger; the losses fall alike."""
    norms = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        run_main(args(out_dir=out, dtype=dtype, hess_interval=1, max_iters=3, eval_interval=3, gnb_batch=gnb_batch,
                      hess_total_bs=4), data_root)
        logged = records(out, "train")
        norms[dtype] = [logged[it]["hessian_norm"] for it in (1, 2, 3)]
        assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in logged.values())
    for a, b in zip(norms["float32"], norms["float16"]):
        assert b == pytest.approx(a, rel=0.05), norms


def test_the_grad_scaler_is_checkpointed_and_resumed(data_root, tmp_path):
    out = tmp_path / "out"
    run_main(args(out_dir=out, dtype="float16", max_iters=3, eval_interval=3), data_root)
    scaler = load_checkpoint(os.path.join(out, "ckpt.pt"))["grad_scaler"]
    assert scaler["scale"] > 0 and "growth_tracker" in "".join(scaler)
    run_main(args(out_dir=out, dtype="float16", max_iters=5, eval_interval=5, init_from="resume"), data_root)
    assert sorted(records(out, "train")) == [1, 2, 3, 4, 5]
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["grad_scaler"]["_growth_tracker"] == 5  # 5 good steps
