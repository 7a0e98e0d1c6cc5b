"""The churn networks and their training: plain Adam, and DP-SGD through Opacus.

This is the only module that imports torch and opacus; ``lakeward.train`` imports it
when it trains, so the CLI and tests that do not train never load them. The DP model
and its non-private twin share everything but privacy: architecture, initial weights
(same seed), batch size, epochs, optimizer and learning rate::

    net, seconds = fit_non_private(z, y, config)
    dp_net, privacy, seconds = fit_private(z, y, config, epsilon=3.0, delta=1e-6, max_grad_norm=1.0,
                                            accountant="prv")
    scorer = scoring_module(preprocessor, dp_net)   # raw features (NaN = null) -> probability
"""

import logging
import secrets
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lakeward.train_data import Preprocessor

log = logging.getLogger(__name__)
# Opacus warns when the best Renyi order is at the end of its range; the epsilon it reports
# is still a valid bound, only a little looser.
_RDP_EDGE = "Optimal order is the (largest|smallest) alpha"
# A label set of one class would put the output bias at an infinite log-odds.
_RATE_FLOOR = 1e-6


@dataclass(frozen=True)
class FitConfig:
    """How a network is trained (the same for the DP model and its twin)."""

    model: str
    hidden_units: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    noise_seed: int | None = None
    """The seed of DP-SGD's noise and batch sampling. ``None``, as ``lakeward train`` runs, draws
    one from the operating system that is never logged: the epsilon bounds what the trained
    weights reveal only while the noise is unknown, and ``seed`` is logged with every run.
    torch's CPU generator (MT19937) takes 32 bits of a seed, so a secret one has 32 bits."""


@dataclass(frozen=True)
class PrivacyReport:
    """What DP-SGD did and what it spent."""

    epsilon_target: float
    epsilon_spent: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    epochs: int
    steps: int
    accountant: str

    def params(self) -> dict[str, str]:
        """As MLflow params (strings, full precision)."""
        return {
            "dp.epsilon_target": repr(self.epsilon_target),
            "dp.delta": repr(self.delta),
            "dp.noise_multiplier": repr(self.noise_multiplier),
            "dp.max_grad_norm": repr(self.max_grad_norm),
            "dp.sample_rate": repr(self.sample_rate),
            "dp.epochs": str(self.epochs),
            "dp.steps": str(self.steps),
            "dp.accountant": self.accountant,
            "dp.poisson_sampling": "true",
            "dp.mechanism": "DP-SGD (Opacus make_private_with_epsilon)",
            # Opacus samples and clips rows; a user with k labelled orders in the train split
            # is covered by group privacy, about k times epsilon (README, "Training and tracking").
            "dp.privacy_unit": "training row (one labelled order)",
            # Epsilon covers the gradient steps. The scaling in front of the model is fitted on
            # the train split without noise (README, "Training and tracking").
            "dp.preprocessing": "median imputation and standardization fitted on train, and the "
                                "output bias started at train's churn log-odds: not private",
        }


class NoiseSearchError(ValueError):
    """Opacus found no noise level that reaches the target epsilon (or refused its parameters)."""


def build_net(kind: str, inputs: int, hidden_units: int, positive_rate: float | None = None) -> nn.Module:
    """``logreg``: one linear layer; ``mlp``: linear, ReLU, linear. Outputs one logit.

    With ``positive_rate``, the output bias starts at its log-odds, so the untrained
    net predicts the base rate. From a bias of 0 (a probability of 0.5 for a class of
    about 7%), 10 epochs at the learning rate DP-SGD needs did not get there: the
    models ranked well but their log loss and Brier score were worse than a constant's.
    """
    if kind == "logreg":
        output = nn.Linear(inputs, 1)
        net = nn.Sequential(output)
    elif kind == "mlp":
        hidden = nn.Linear(inputs, hidden_units)  # made first: the seed draws its weights first
        output = nn.Linear(hidden_units, 1)
        net = nn.Sequential(hidden, nn.ReLU(), output)
    else:
        raise ValueError(f"unknown model {kind!r}; expected logreg or mlp")
    if positive_rate is not None:
        rate = min(max(positive_rate, _RATE_FLOOR), 1 - _RATE_FLOOR)
        with torch.no_grad():
            output.bias.fill_(float(np.log(rate / (1 - rate))))
    return net


def positive_rate(y: np.ndarray) -> float:
    """The share of 1s among the labels ``y`` (0/1)."""
    return float(np.mean(y)) if len(y) else 0.5


class _Rows(torch.utils.data.Dataset):
    """Features and labels as tensors, fetched a whole batch at a time.

    A ``TensorDataset`` is indexed row by row and the rows stacked again, which costs
    more than the training step of these small networks; ``__getitems__`` lets the
    DataLoader (and Opacus's Poisson loader built from it) take a batch in one index.
    """

    def __init__(self, z: np.ndarray, y: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
        self.y = torch.from_numpy(y.astype(np.float32)).unsqueeze(1)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return self.x[rows], self.y[rows]


def _as_batch(batch: Any) -> Any:
    return batch


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one intra-op thread, then restore the setting.

    These networks are a few hundred weights; splitting their kernels over threads
    costs more than it saves, and spinning threads fight Spark for the same cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _loader(
    z: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _Rows(z, y), batch_size=batch_size, shuffle=True, generator=generator, collate_fn=_as_batch
    )


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _epochs(model: nn.Module, optimizer: torch.optim.Optimizer, loader: torch.utils.data.DataLoader,
            epochs: int) -> list[float]:
    loss_fn = nn.BCEWithLogitsLoss()
    seconds = []
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        for features, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(features):
                loss_fn(model(features), labels).backward()
            else:
                _no_rows(model)
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    model.eval()
    return seconds


def _no_rows(model: nn.Module) -> None:
    """Give each weight an empty set of per-sample gradients, for a Poisson batch that drew no row.

    Expanded weights refuse a batch of size 0. DP-SGD still takes that step: its
    optimizer clips and sums no gradient, adds the noise and moves the weights, as
    the accountant assumes. (Only Opacus's DP-SGD loader ever yields an empty batch.)
    """
    for weight in model.parameters():
        if weight.requires_grad:
            weight.grad_sample = weight.new_zeros((0, *weight.shape))  # type: ignore[attr-defined]


def fit_non_private(z: np.ndarray, y: np.ndarray, config: FitConfig) -> tuple[nn.Module, list[float]]:
    """Train with Adam on shuffled mini-batches; returns the net and seconds per epoch."""
    torch.manual_seed(config.seed)
    net = build_net(config.model, z.shape[1], config.hidden_units, positive_rate(y))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    with _one_thread():
        loader = _loader(z, y, config.batch_size, _seeded(config.seed))
        seconds = _epochs(net, optimizer, loader, config.epochs)
    return net, seconds


def fit_private(
    z: np.ndarray,
    y: np.ndarray,
    config: FitConfig,
    *,
    epsilon: float,
    delta: float,
    max_grad_norm: float,
    accountant: str,
) -> tuple[nn.Module, PrivacyReport, list[float]]:
    """DP-SGD to a target (epsilon, delta) with Poisson sampling.

    Opacus picks the noise multiplier that reaches ``epsilon`` after ``epochs`` epochs
    at sample rate ``1 / ceil(rows / batch_size)`` (one over the batches of an epoch, as
    Opacus derives it from the loader: about ``batch_size / rows``; it samples, accounts
    and trains at that one rate); the report holds the epsilon the accountant
    says was actually spent. Raises :class:`NoiseSearchError` when no noise level reaches
    the target. The initial weights follow ``config.seed``, as the twin's do; the noise and
    the batches drawn follow ``config.noise_seed``, a secret one unless given.
    """
    from opacus import PrivacyEngine

    torch.manual_seed(config.seed)
    net = build_net(config.model, z.shape[1], config.hidden_units, positive_rate(y))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    # One generator for the batches and the noise: two seeded alike would draw the same
    # numbers, and a row's draw to be in a batch would then predict its noise.
    randomness = _seeded(secrets.randbits(32) if config.noise_seed is None else config.noise_seed)
    with warnings.catch_warnings():
        # Opacus's secure_mode needs torchcsprng, whose last release (0.2.1) has no build for
        # Python 3.11: the noise comes from torch's generator under a seed nobody is told.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        # The noise search probes RDP orders at their edges; the accountant reports the spend.
        warnings.filterwarnings("ignore", message=_RDP_EDGE)
        engine = PrivacyEngine(accountant=accountant)
        # The Poisson sampler draws the batches with the loader's generator.
        loader = _loader(z, y, config.batch_size, randomness)
        try:
            private_net, private_optimizer, private_loader = engine.make_private_with_epsilon(
                module=net,
                optimizer=optimizer,
                data_loader=loader,
                target_epsilon=epsilon,
                target_delta=delta,
                epochs=config.epochs,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
                noise_generator=randomness,
                # Per-sample gradients from torch's expanded weights rather than Opacus's module
                # hooks: the same gradients (to float rounding), with less work per step.
                grad_sample_mode="ew",
            )
        except ValueError as err:
            # Only the noise search's refusal: a ValueError from training is another matter.
            raise NoiseSearchError(str(err)) from err
    with warnings.catch_warnings(), _one_thread():
        # The PRV accountant bounds its domain with an RDP estimate, which warns at the edges too.
        warnings.filterwarnings("ignore", message=_RDP_EDGE)
        seconds = _epochs(private_net, private_optimizer, private_loader, config.epochs)
        spent = float(engine.get_epsilon(delta))
    report = PrivacyReport(
        epsilon_target=epsilon,
        epsilon_spent=spent,
        delta=delta,
        noise_multiplier=float(private_optimizer.noise_multiplier),
        max_grad_norm=max_grad_norm,
        sample_rate=float(private_loader.sample_rate),
        epochs=config.epochs,
        steps=sum(int(steps) for _, _, steps in engine.accountant.history),
        accountant=engine.accountant.mechanism(),
    )
    # A clean copy without Opacus's wrapper, so it can be scripted and logged.
    trained = build_net(config.model, z.shape[1], config.hidden_units)
    trained.load_state_dict(private_net._module.state_dict())
    trained.eval()
    return trained, report, seconds


def probabilities(net: nn.Module, z: np.ndarray) -> np.ndarray:
    """Churn probability of each preprocessed row."""
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)))
    return torch.sigmoid(logits).squeeze(-1).numpy().astype(np.float64)


class _Preprocess(nn.Module):
    """The fitted :class:`Preprocessor` as buffers: NaN -> median, indicators, standardize."""

    # Real annotations (no ``from __future__ import annotations`` here): TorchScript reads them.
    fill: Tensor
    indicators: Tensor
    mean: Tensor
    scale: Tensor

    def __init__(self, fill: np.ndarray, indicators: np.ndarray, mean: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32))
        self.register_buffer("indicators", torch.tensor(indicators, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        missing = torch.isnan(x)
        filled = torch.where(missing, self.fill, x)
        flags = missing.index_select(1, self.indicators).to(x.dtype)
        return (torch.cat([filled, flags], dim=1) - self.mean) / self.scale


class _Scorer(nn.Module):
    def __init__(self, preprocess: nn.Module, net: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(self.preprocess(x))).squeeze(-1)


def scoring_module(preprocessor: Preprocessor, net: nn.Module) -> torch.jit.ScriptModule:
    """Raw features in model order (NaN for null) -> churn probability, as TorchScript.

    Scripted so the logged model loads with torch alone, without lakeward installed.
    """
    preprocess = _Preprocess(preprocessor.fill, preprocessor.indicator_columns,
                             preprocessor.mean, preprocessor.scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_Scorer(preprocess, net).eval())
