"""The authors' VRNN in eager PyTorch, timed beside kpflow in the same run: ``python -m eval.bench
forecast --torch_reference``. Random weights: timing does not depend on their values.

The architecture follows the authors' published code (facts, not their code): a ``GRUCell`` fed the
frame's 6K numbers and z, a prior MLP on the state, a posterior MLP on the state and the frame, and
a deterministic decoder ``tanh(W2 relu(W1 [h, z]))``. Two ways of drawing S samples of an N-M
window, timed by ``python -m eval.bench.torch_reference '{"num_observed": 12, ...}'`` (prints JSON).
``eval.bench forecast`` runs that in a child process, so that PyTorch's and XLA's thread pools never share
the two cores:

- :func:`authors_procedure`, what their evaluation code does, and what the 128 ms of docs/design.md ("Reference measurements") measured:
  one recurrent state, fed the *true* frame and the first of the S latents at every step, with the
  S latents of a step decoded one by one in a Python loop (S decoder calls per step, N + M steps).
  The measured 128 ms is slower than this function (about 65 ms here, under ``torch.no_grad``);
  with autograd recording it took about 97 ms.
- :func:`closed_loop`, the computation ``kpflow`` does: the observed frames encoded once, then S
  independent closed-loop trajectories, each with its own state, fed its own outputs, batched as
  one ``[S, ...]`` batch per step. It is S times the recurrent work of the authors' procedure.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from eval.bench.timing import ms_stats, time_calls  # standard library only: no JAX in this process


def _torch():
    try:
        import torch
    except ImportError:
        raise SystemExit("error: eval.bench forecast --torch_reference needs PyTorch: `make torch` or "
                         "pip install 'torch==2.13.0' (the CPU wheel), then pip install -e '.[torch]'") from None
    return torch


def build(dim: int = 60, hidden: int = 256, latent: int = 20, prior_hidden: int = 128,
          posterior_hidden: int = 128, decoder_hidden: int = 128, seed: int = 0) -> Any:
    """The authors' VRNN with random weights, in evaluation mode (a ``torch.nn.Module``)."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)

    class GaussianMLP(nn.Module):
        def __init__(self, inputs, width):
            super().__init__()
            self.hidden, self.mean, self.std = nn.Linear(inputs, width), nn.Linear(width, latent), nn.Linear(width, latent)

        def forward(self, x):
            x = torch.relu(self.hidden(x))
            return self.mean(x), nn.functional.softplus(self.std(x)) + 1e-4

    class VRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.dim, self.hidden, self.latent = dim, hidden, latent
            self.cell = nn.GRUCell(dim + latent, hidden)
            self.prior = GaussianMLP(hidden, prior_hidden)
            self.posterior = GaussianMLP(hidden + dim, posterior_hidden)
            self.dec1, self.dec2 = nn.Linear(hidden + latent, decoder_hidden), nn.Linear(decoder_hidden, dim)

        def decode(self, h, z):
            return torch.tanh(self.dec2(torch.relu(self.dec1(torch.cat([h, z], -1)))))

    return VRNN().eval()


def authors_procedure(model, window, num_observed: int, samples: int):
    """``window [B, N+M, D]`` (a torch tensor) -> ``[S, B, N+M, D]`` as the authors' code draws it."""
    torch = _torch()
    normal = torch.distributions.Normal
    with torch.no_grad():
        b = window.shape[0]
        h = torch.zeros(b, model.hidden)
        outputs = []
        for t in range(window.shape[1]):
            frame = window[:, t]
            mean, std = model.prior(h)
            if t < num_observed:
                q_mean, q_std = model.posterior(torch.cat([h, frame], -1))
                torch.distributions.kl_divergence(normal(q_mean, q_std), normal(mean, std)).sum(-1)
                mean, std = q_mean, q_std
            z = normal(mean, std).rsample((samples,))  # [S, B, L]
            outputs.append(torch.stack([model.decode(h, z[i]) for i in range(samples)]))
            h = model.cell(torch.cat([frame, z[0]], -1), h)  # the true frame and the first latent
        return torch.stack(outputs, 2)


def closed_loop(model, context, horizon: int, samples: int):
    """``context [B, N, D]`` -> ``[S * B, M, D]``: S independent closed-loop trajectories, batched."""
    torch = _torch()
    with torch.no_grad():
        b = context.shape[0]
        h = torch.zeros(b, model.hidden)
        for t in range(context.shape[1]):  # the observed frames, once per window
            q_mean, q_std = model.posterior(torch.cat([h, context[:, t]], -1))
            z = q_mean + q_std * torch.randn_like(q_std)
            h = model.cell(torch.cat([context[:, t], z], -1), h)
        h = h.repeat(samples, 1)
        frames = []
        for _ in range(horizon):
            mean, std = model.prior(h)
            z = mean + std * torch.randn_like(std)
            frame = model.decode(h, z)
            frames.append(frame)
            h = model.cell(torch.cat([frame, z], -1), h)
        return torch.stack(frames, 1)


def time_reference(num_observed: int = 12, horizon: int = 12, samples: int = 100, repeats: int = 20,
                   seed: int = 0, dim: int = 60, **sizes) -> dict[str, Any]:
    """Timing statistics (``eval.bench``'s) of both procedures on a random window, one warm-up call each."""
    torch = _torch()
    model = build(dim=dim, seed=seed, **sizes)
    window = torch.randn(1, num_observed + horizon, dim)
    calls = {
        "authors_procedure": lambda: authors_procedure(model, window, num_observed, samples),
        "closed_loop_batched": lambda: closed_loop(model, window[:, :num_observed], horizon, samples),
    }
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name, fn in calls.items():
        out[name] = ms_stats(time_calls(fn, repeats))
    return out


if __name__ == "__main__":
    print(json.dumps(time_reference(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))))
