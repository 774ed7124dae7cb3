"""
Sophia's Hessian refresh in the training loop: after every hess_interval-th step, an estimate of the Hessian's
diagonal is folded into the optimizer's EMA by sophia.py's refresh functions, which also leave the optimizer
the bs of its steps (the tokens behind the estimate). Each kind below knows when it is due, which batch it
reads and how; training/optimizers.py gives each optimizer its kind.
"""

from contextlib import nullcontext

import torch

from sophia import (fold_in_estimate, gnb_refresh, hutchinson_refresh, micro_batch_seed, sampled_cross_entropy,
                    sampled_gradient, sampled_linear_cross_entropy)
from training.distributed import generator
from training.step import compiler, data_loss


class Refresh:
    """No refresh (AdamW, Lion, sign momentum): never due. The kinds below are due after every
    hess_interval-th step; `steps` counts the steps done, the refreshing one included."""

    def __init__(self, cfg, dist, network, optimizer, precision, batches):
        self.cfg, self.dist, self.network, self.optimizer = cfg, dist, network, optimizer
        self.precision, self.batches = precision, batches

    def due(self, steps):
        return False

    def training_loss(self, steps):
        """The loss the step before a refresh backpropagates (`loss_fn(model, X, Y)`)."""
        return data_loss

    def step_settings(self):
        """What every training step runs under for this refresh."""
        return nullcontext()

    def params(self):
        return list(self.network.model.parameters())


class Periodic(Refresh):
    def due(self, steps):
        return steps % self.cfg.hess_interval == 0


class FreshGNB(Periodic):
    """Sophia-G, the official way (gnb_batch='fresh'): g_hat from labels sampled on the next hess_total_bs
    sequences of data, an extra forward and backward pass by the compiled model without DDP (the refresh
    averages over ranks itself). Labels are seeded by (seed, steps, micro-batch index): the same for any
    number of processes, and on resume. With a fused output layer the logits never exist: labels are sampled
    from the hidden states a block of rows at a time."""

    def __init__(self, *parts):
        super().__init__(*parts)
        compiled, model, ctx = compiler(self.cfg), self.network.model, self.precision.ctx
        if model.fused_loss:
            forward = compiled(model.hidden_states)

            def linear_loss(hidden):  # the output layer runs in the loss: under autocast, as the training step's
                with ctx:
                    return sampled_linear_cross_entropy(hidden, model.lm_head.weight, model.fused_loss)

            self.sampled_loss = compiled(linear_loss)
        else:
            compiled_model = self.network.compiled
            forward = lambda X: compiled_model(X)[0]  # noqa: E731 (the logits)
            self.sampled_loss = compiled(sampled_cross_entropy)

        def outputs(X):
            with ctx:
                return forward(X)

        self.outputs = outputs

    def __call__(self, steps):
        cfg = self.cfg
        inputs = [X for X, _ in self.batches.next_batch(cfg.hess_total_bs, cfg.hess_accumulation_steps)]
        gnb_refresh(self.optimizer, self.outputs, inputs, params=self.params(), max_norm=cfg.grad_clip,
                    seed=(cfg.seed, steps), loss_fn=self.sampled_loss, loss_scale=self.precision.loss_scale())


class TrainBatchGNB(FreshGNB):
    """Sophia-G with gnb_batch='train': g_hat from the first hess_total_bs sequences of the refreshing step's own
    batch, sampled from the logits of its forward pass (one extra backward, no extra forward), seeded as the
    fresh refresh's labels."""

    def __init__(self, *parts):
        super().__init__(*parts)
        self.gradient, self.tokens = None, 0

    def step_settings(self):
        # the refresh backpropagates twice through a forward pass (retain_graph), which the compiled backward's
        # donated buffers (saved activations reused as scratch space) do not allow
        return torch._functorch.config.patch(donated_buffer=False)

    def training_loss(self, steps):
        """data_loss that, on the first hess_accumulation_steps micro-batches, also adds the gradient of the
        cross-entropy against labels sampled from the same forward pass into self.gradient."""
        params, n_micro = self.params(), self.cfg.hess_accumulation_steps
        self.gradient, self.tokens = [torch.zeros_like(p) for p in params], 0
        index = iter(range(n_micro))
        scale = (self.precision.loss_scale() or 1) / n_micro  # once: under fp16 the loss scale is a host sync

        def loss_fn(model, X, Y):
            outputs, loss = model(X, Y)  # logits, or hidden states for a fused output layer
            i = next(index, None)
            if i is not None:
                seed = micro_batch_seed((self.cfg.seed, steps), self.dist.rank * n_micro + i)
                torch._foreach_add_(self.gradient, sampled_gradient(outputs, params, scale=scale, seed=seed,
                                                                    loss_fn=self.sampled_loss))
                self.tokens += outputs[..., 0].numel()
            return loss

        return loss_fn

    def __call__(self, steps):
        params = self.params()
        for p, g in zip(params, self.gradient):
            p.grad = g
        self.gradient = None
        fold_in_estimate(self.optimizer, params, bs=self.tokens * self.dist.world_size, max_norm=self.cfg.grad_clip,
                         loss_scale=self.precision.loss_scale())


def gnb(*parts):
    """Sophia-G's refresh, by the config's gnb_batch."""
    cfg = parts[0]
    return (TrainBatchGNB if cfg.gnb_batch == "train" else FreshGNB)(*parts)


class Hutchinson(Periodic):
    """Sophia-H: u * (H u) for the Hessian of the mean loss over the next hess_total_bs sequences, with one
    Rademacher u seeded by (seed, steps), so the same on every rank. Runs on the plain model made twice
    differentiable: double backward needs neither compile nor DDP nor fused kernels."""

    def __call__(self, steps):
        cfg, model, ctx = self.cfg, self.network.model, self.precision.ctx

        def loss_fn(batch):
            with ctx:
                return data_loss(model, *batch)

        with model.twice_differentiable():
            hutchinson_refresh(self.optimizer, loss_fn,
                               self.batches.next_batch(cfg.hess_total_bs, cfg.hess_accumulation_steps),
                               params=self.params(), loss_scale=self.precision.loss_scale(),
                               generator=generator(hash((cfg.seed, steps)), self.dist.device))
