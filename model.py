"""
GPT-2 language model, as in nanoGPT and the official Sophia code (github.com/Liuhong99/Sophia).

Pre-LayerNorm transformer blocks, GELU MLP, token embedding tied to the output layer, GPT-2
initialisation. One addition over nanoGPT: `scale_attn_by_inverse_layer_idx`, which the official
Sophia scripts turn on for every model size: the attention scores of layer i (1-based) are divided
by i on top of the usual 1/sqrt(head_dim).
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; the paper's runs use False
    scale_attn_by_inverse_layer_idx: bool = False


# Named sizes: the paper's three GPT-2 models, and small ones for tests and CPU demos.
GPT_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-mini": dict(n_layer=6, n_head=6, n_embd=384),  # 30M, most of it the embedding
    "gpt2-tiny": dict(n_layer=2, n_head=2, n_embd=32),
}


def explicit_attention(q, k, v, scale, dropout_p=0.0, training=False):
    """Causal attention written out (matmul, mask, softmax, matmul).

    Twice differentiable, unlike the fused SDPA kernels, so Hessian-vector products work through it.
    """
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) * scale
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~causal, float("-inf"))
    att = F.dropout(F.softmax(att, dim=-1), p=dropout_p, training=training)
    return att @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.scale = 1.0 / math.sqrt(config.n_embd // config.n_head)
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.use_sdpa = True  # False: explicit_attention (see GPT.twice_differentiable)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=self.scale)
        else:
            y = explicit_attention(q, k, v, self.scale, dropout_p, self.training)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        # fn(hidden, weight, targets) -> mean cross-entropy, computing output layer and loss in one kernel
        # (kernels.OUTPUT_LAYERS); None: the logits, then F.cross_entropy
        self.fused_loss = None

        self.apply(self._init_weights)
        # GPT-2: residual projections scaled down so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Parameter count; the tied token embedding counts once (it is also the output layer),
        position embeddings only when non_embedding=False."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None):
        """Logits for every position, and the mean cross-entropy against `targets` when given
        (positions with target -1 are ignored).

        With a fused output layer (`fused_loss`, e.g. kernels.liger_linear_cross_entropy) and targets given,
        the logits are never made: the first value is then the output layer's input, `hidden_states(idx)`."""
        x = self.hidden_states(idx)
        if targets is not None and self.fused_loss:
            return x, self.fused_loss(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx):
        """The last LayerNorm's output (B, T, n_embd): what the output layer multiplies by wte.T."""
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of length {T} > block_size {self.config.block_size}"
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    @contextmanager
    def twice_differentiable(self):
        """Inside the block, the model has a double backward (e.g. for Hutchinson's Hessian-vector
        products): attention goes through `explicit_attention` and the loss through the logits, since the
        fused kernels (SDPA's, a fused output layer's) have none."""
        attns = [block.attn for block in self.transformer.h]
        fused_loss = self.fused_loss
        for attn in attns:
            attn.use_sdpa = False
        self.fused_loss = None
        try:
            yield self
        finally:
            for attn in attns:
                attn.use_sdpa = True
            self.fused_loss = fused_loss

    def param_sets(self):
        """The parameters by kind, each sorted by name (the official code's order): the embeddings
        (token, tied to the output layer, and position), the 2-D weight matrices of the Linear layers,
        and the rest (biases, LayerNorm weights). Diagnostics are reported per set."""
        embeddings = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight)}
        named = sorted(self.named_parameters())  # named_parameters lists the tied weight once
        return {
            "embedding": [p for _, p in named if id(p) in embeddings],
            "matrices": [p for _, p in named if p.dim() >= 2 and id(p) not in embeddings],
            "other": [p for _, p in named if p.dim() < 2],
        }

    def optim_groups(self, weight_decay):
        """Two parameter groups: decay on the 2-D weight matrices of the Linear layers, none on biases,
        LayerNorm weights and the embeddings.

        The token embedding is tied to the output layer (lm_head); like the official Sophia and
        nanoGPT code, it is treated as an embedding and not decayed. Within a group the parameters
        are sorted by name, the official code's order, so its optimizer state_dicts line up with ours.
        """
        named = sorted(self.named_parameters())
        sets = {id(p): kind for kind, params in self.param_sets().items() for p in params}
        return [
            {"params": [p for _, p in named if sets[id(p)] == "matrices"], "weight_decay": weight_decay},
            {"params": [p for _, p in named if sets[id(p)] != "matrices"], "weight_decay": 0.0},
        ]

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N for the weights plus
        12·L·H·Q·T for attention scores and values (counted as if not causal, as PaLM and nanoGPT)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.num_params() + 12 * L * H * Q * T

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops=989e12):
        """Model FLOPs utilisation: achieved training FLOP/s over `peak_flops`
        (H100 SXM bf16 dense 989e12, A100 bf16 312e12)."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, n_vocab=None, generator=None):
        """Extend each sequence of `idx` (B, T) by `max_new_tokens` sampled tokens.

        `temperature` 0 means greedy: always the likeliest token (the limit of ever lower temperatures).
        `n_vocab` (the tokenizer's size) keeps the padding ids of the output layer from being sampled.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]
            logits, _ = self(context)
            logits = logits[:, -1, :n_vocab]
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
