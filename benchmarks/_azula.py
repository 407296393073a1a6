"""The peer, adapted once for the benchmark scripts: azula 0.11.1's ``MMPSDenoiser`` as ``d(z [B, *shape], sigma
[B]) -> E[z | z_t, y]``, driven at our noise levels (its schedule is made the identity, ``t = sigma``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def azula_mmps(
    denoise: Denoise,
    observe: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    y: torch.Tensor,
    variance: torch.Tensor,
    k: int,
) -> Denoise | None:
    """azula's MMPS with ``k`` GMRES iterations from zero per call, diagonal observation covariance ``variance``
    ``[M]``, in ``y``'s dtype; ``None`` when azula is not installed (``pip install azula --no-deps einops``)."""
    try:
        from azula.denoise import Denoiser as AzDenoiser
        from azula.denoise import DiracPosterior
        from azula.guidance.mmps import MMPSDenoiser
        from azula.linalg.covariance import DiagonalCovariance
    except ImportError:
        return None

    class SigmaSchedule:  # azula's schedule protocol with t = sigma (our sampler chooses the noise levels)
        def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.ones_like(t), t

    class Wrap(AzDenoiser):
        def __init__(self) -> None:
            super().__init__()
            self.schedule = SigmaSchedule()

        def forward(self, x_t, t, **kw):  # type: ignore[no-untyped-def]
            b = x_t.shape[0]
            z = denoise(x_t.reshape(b, *shape), t.reshape(-1).expand(b))
            return DiracPosterior(mean=z.reshape(b, -1))

    def flat_observe(x: torch.Tensor) -> torch.Tensor:
        return observe(x.reshape(x.shape[0], *shape)).to(x.dtype)

    mmps = MMPSDenoiser(Wrap(), y, flat_observe, DiagonalCovariance(variance.to(y.dtype)), "gmres", k)

    def d(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        return mmps(z.reshape(b, -1), sigma.reshape(b, 1).to(y.dtype)).mean.reshape(z.shape)

    return d
