import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPT_SIZES, GPTConfig


def tiny(**overrides):
    cfg = dict(block_size=16, vocab_size=97, n_layer=3, n_head=2, n_embd=32, bias=True)
    cfg.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("name, millions", [("gpt2", 124.4), ("gpt2-medium", 354.8), ("gpt2-large", 774.0)])
def test_parameter_counts_match_gpt2(name, millions):
    with torch.device("meta"):  # count without allocating
        model = GPT(GPTConfig(vocab_size=50257, bias=True, **GPT_SIZES[name]))
    n = model.num_params(non_embedding=False) / 1e6
    assert abs(n - millions) / millions < 0.005, n


def test_forward_shapes_and_loss():
    model = tiny()
    idx = torch.randint(0, 97, (2, 16))
    logits, loss = model(idx)
    assert logits.shape == (2, 16, 97) and loss is None  # logits at every position without targets
    targets = torch.randint(0, 97, (2, 16))
    logits2, loss = model(idx, targets)
    assert torch.equal(logits, logits2)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.view(-1, 97), targets.view(-1)).item())
    # an untrained model is close to uniform: loss ~ log(vocab)
    assert abs(loss.item() - math.log(97)) < 0.3
    targets[:, :8] = -1  # ignored positions
    _, masked = model(idx, targets)
    assert masked.item() == pytest.approx(
        F.cross_entropy(logits[:, 8:].reshape(-1, 97), targets[:, 8:].reshape(-1)).item())


def test_weight_tying_and_gpt2_init():
    model = tiny(n_layer=4, n_embd=64, vocab_size=5000)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 4)
    assert model.transformer.h[0].attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
    assert torch.all(model.transformer.h[0].mlp.c_fc.bias == 0)


def test_sdpa_and_explicit_attention_agree_in_outputs_and_gradients():
    for scale_by_layer in (False, True):
        model = tiny(scale_attn_by_inverse_layer_idx=scale_by_layer)
        idx = torch.randint(0, 97, (3, 16))
        _, loss = model(idx, idx)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with model.twice_differentiable():
            assert not any(b.attn.use_sdpa for b in model.transformer.h)
            _, loss2 = model(idx, idx)
            grads2 = torch.autograd.grad(loss2, list(model.parameters()))
        assert all(b.attn.use_sdpa for b in model.transformer.h)  # restored
        assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
        for g, g2 in zip(grads, grads2):
            torch.testing.assert_close(g, g2, rtol=1e-5, atol=1e-7)


def test_explicit_attention_supports_double_backward():
    model = tiny()
    idx = torch.randint(0, 97, (2, 16))
    params = list(model.parameters())
    with model.twice_differentiable():
        _, loss = model(idx, idx)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=[torch.ones_like(p) for p in params])
    assert all(torch.isfinite(h).all() for h in hv) and any(h.abs().sum() > 0 for h in hv)


def test_inverse_layer_scaling_divides_scores_by_layer_index():
    """Layer i (1-based) must attend with softmax(q k^T / sqrt(d) / i): check against a hand-written
    attention on the layer's own q, k, v."""
    model = tiny(scale_attn_by_inverse_layer_idx=True, n_layer=3)
    plain = tiny(scale_attn_by_inverse_layer_idx=False, n_layer=3)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 16, 32)
    head_dim = 16
    for i, (block, plain_block) in enumerate(zip(model.transformer.h, plain.transformer.h)):
        attn = block.attn
        q, k, v = attn.c_attn(x).split(32, dim=2)
        q, k, v = (t.view(2, 16, 2, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim) / (i + 1)
        scores = scores.masked_fill(torch.ones(16, 16).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 16, 32)
        torch.testing.assert_close(attn(x), attn.c_proj(y), rtol=1e-5, atol=1e-6)
        if i == 0:  # layer 1: dividing by 1 changes nothing
            torch.testing.assert_close(attn(x), plain_block.attn(x))
        else:
            assert not torch.allclose(attn(x), plain_block.attn(x), atol=1e-6)


def test_optim_groups_decay_only_linear_weight_matrices():
    model = tiny()
    decay, no_decay = model.optim_groups(0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")) for n in decay_names)
    assert len(decay_names) == 4 * 3
    # the tied token embedding / output layer, position embedding, LayerNorm weights, biases: no decay
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= no_decay_names
    assert all(n.endswith("bias") or "ln_" in n or "wte" in n or "wpe" in n for n in no_decay_names)
    everything = list(model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == len(everything)
    assert sum(p.numel() for p in everything) == model.num_params(non_embedding=False)
    # sorted by name within each group, the official code's order
    assert [names[id(p)] for p in decay["params"]] == sorted(decay_names)


def test_estimate_mfu_counts_weights_and_attention():
    model = tiny()
    cfg = model.config
    n = model.num_params()
    per_token = 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
    assert model.flops_per_token() == per_token
    assert model.estimate_mfu(1000, 2.0, peak_flops=1e9) == pytest.approx(per_token * 1000 / 2.0 / 1e9)


def test_generate_respects_top_k_and_vocab_limit():
    model = tiny()
    idx = torch.randint(0, 97, (2, 5))
    g = torch.Generator().manual_seed(0)
    out = model.generate(idx, 30, temperature=1.0, top_k=1, n_vocab=90, generator=g)
    assert out.shape == (2, 35) and torch.equal(out[:, :5], idx)
    assert out.max() < 90
    # top_k=1 is greedy: the same continuation again
    assert torch.equal(out, model.generate(idx, 30, top_k=1, n_vocab=90, generator=g))
    # contexts longer than block_size are cropped
    long = model.generate(torch.randint(0, 97, (1, 20)), 3, generator=g)
    assert long.shape == (1, 23)
