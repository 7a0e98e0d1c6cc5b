"""DP-SGD and its twin on small separable data (trains torch models: marked ``training``)."""

import warnings

import numpy as np
import pytest

from lakeward.train_data import Preprocessor, scores

pytestmark = pytest.mark.training


def separable(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    x = rng.normal(size=(rows, 3)) + np.where(y[:, None] == 1, 1.5, -1.5) * np.array([1.0, 0.5, 0.0])
    x[rng.random(rows) < 0.2, 2] = np.nan  # a nullable feature
    return x, y


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_dp_sgd_spends_at_most_the_target_and_still_learns(accountant: str) -> None:
    from lakeward.dpsgd import FitConfig, fit_private, probabilities

    x, y = separable(2000)
    prep = Preprocessor.fit(x)
    config = FitConfig("logreg", 8, epochs=3, batch_size=100, learning_rate=0.05, seed=1, noise_seed=2)
    net, report, seconds = fit_private(prep.transform(x), y, config, epsilon=2.0, delta=1e-5,
                                       max_grad_norm=1.0, accountant=accountant)
    assert report.epsilon_spent <= 2.0 and report.epsilon_spent > 1.5
    assert report.accountant == accountant and report.noise_multiplier > 0
    assert report.sample_rate == pytest.approx(100 / 2000)
    assert report.steps == 3 * 20 and len(seconds) == 3
    assert scores(y, probabilities(net, prep.transform(x)))["roc_auc"] > 0.9


def test_twin_is_reproducible_and_the_scorer_embeds_the_preprocessing() -> None:
    import torch

    from lakeward.dpsgd import FitConfig, fit_non_private, probabilities, scoring_module

    x, y = separable(600, seed=2)
    prep = Preprocessor.fit(x)
    config = FitConfig("mlp", 8, epochs=2, batch_size=64, learning_rate=0.01, seed=5)
    first, _ = fit_non_private(prep.transform(x), y, config)
    second, _ = fit_non_private(prep.transform(x), y, config)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    scorer = scoring_module(prep, first)
    raw = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        scored = scorer(raw).numpy()
    np.testing.assert_allclose(scored, probabilities(first, prep.transform(x)), rtol=1e-5)


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_both_models_start_at_the_base_rate_and_end_near_it_without_signal(model: str) -> None:
    """A rare class and features that say nothing: predictions stay at the base rate, not near 0.5."""
    from lakeward.dpsgd import (
        FitConfig,
        build_net,
        fit_non_private,
        fit_private,
        positive_rate,
        probabilities,
    )

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(4000, 3)), (rng.random(4000) < 0.07).astype(np.int64)
    z = Preprocessor.fit(x).transform(x)
    untrained = build_net(model, 3, 8, positive_rate(y))
    assert probabilities(untrained, z).mean() == pytest.approx(y.mean(), abs=0.03)
    # The configured training: 10 epochs of Adam at 0.003 (conf/base.yml).
    config = FitConfig(model, 8, epochs=10, batch_size=256, learning_rate=0.003, seed=3, noise_seed=4)
    twin, _ = fit_non_private(z, y, config)
    private, _, _ = fit_private(z, y, config, epsilon=3.0, delta=1e-5, max_grad_norm=1.0, accountant="prv")
    constant = scores(y, np.full(len(y), y.mean()))["log_loss"]
    for net in (twin, private):
        assert probabilities(net, z).mean() == pytest.approx(y.mean(), abs=0.03)
        assert scores(y, probabilities(net, z))["log_loss"] < constant + 0.02


def test_unreachable_epsilon_is_a_noise_search_error() -> None:
    from lakeward.dpsgd import FitConfig, NoiseSearchError, fit_private

    x, y = separable(200)
    config = FitConfig("logreg", 8, epochs=50, batch_size=200, learning_rate=0.05, seed=1)
    with pytest.raises(NoiseSearchError, match="privacy budget is too low"):
        fit_private(Preprocessor.fit(x).transform(x), y, config, epsilon=1e-4, delta=1e-5,
                    max_grad_norm=1.0, accountant="rdp")


def test_an_order_at_the_edge_of_opacus_range_is_not_warned_about() -> None:
    from lakeward.dpsgd import FitConfig, fit_private

    x, y = separable(2000)
    config = FitConfig("logreg", 8, epochs=3, batch_size=100, learning_rate=0.05, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_private(Preprocessor.fit(x).transform(x), y, config, epsilon=50.0, delta=1e-5,
                    max_grad_norm=1.0, accountant="prv")
    assert not [w for w in caught if "Optimal order" in str(w.message)]


def test_dp_sgd_trains_the_model_opacus_hooks_train_empty_batches_included() -> None:
    """Expanded weights and Opacus's module hooks give one model, also when Poisson draws no row."""
    import torch
    from opacus import PrivacyEngine
    from torch import nn

    from lakeward.dpsgd import FitConfig, _loader, build_net, fit_private, positive_rate

    x, y = separable(12, seed=3)
    z = Preprocessor.fit(x).transform(x)
    # One row expected per batch out of 12: about a third of the 120 steps draw none.
    config = FitConfig("mlp", 4, epochs=10, batch_size=1, learning_rate=0.05, seed=7, noise_seed=11)
    net, report, _ = fit_private(z, y, config, epsilon=8.0, delta=1e-3, max_grad_norm=1.0, accountant="rdp")

    torch.manual_seed(config.seed)
    randomness = torch.Generator().manual_seed(11)  # the batches and the noise, as fit_private draws them
    reference = build_net(config.model, z.shape[1], config.hidden_units, positive_rate(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=reference, optimizer=torch.optim.Adam(reference.parameters(), lr=config.learning_rate),
            data_loader=_loader(z, y, config.batch_size, randomness), target_epsilon=8.0, target_delta=1e-3,
            epochs=config.epochs, max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode="hooks",
            noise_generator=randomness,
        )
        empty, threads = 0, torch.get_num_threads()
        torch.set_num_threads(1)  # as fit_private trains
        for _ in range(config.epochs):
            for features, labels in loader:
                empty += len(features) == 0
                optimizer.zero_grad(set_to_none=True)
                nn.BCEWithLogitsLoss()(model(features), labels).backward()
                optimizer.step()
        torch.set_num_threads(threads)
    assert empty > 10 and report.steps == 120
    assert report.epsilon_spent == pytest.approx(engine.get_epsilon(1e-3))
    for ours, theirs in zip(net.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_noise_is_secret_unless_its_seed_is_given() -> None:
    """The logged seed fixes the initial weights; the noise and the batches follow a seed nobody is told."""
    import torch

    from lakeward.dpsgd import FitConfig, fit_private

    x, y = separable(300, seed=5)
    z = Preprocessor.fit(x).transform(x)

    def weights(noise_seed: int | None) -> list[torch.Tensor]:
        config = FitConfig("logreg", 4, epochs=2, batch_size=50, learning_rate=0.05, seed=3,
                           noise_seed=noise_seed)
        net, _, _ = fit_private(z, y, config, epsilon=2.0, delta=1e-4, max_grad_norm=1.0, accountant="rdp")
        return list(net.state_dict().values())

    given = weights(9)
    assert all(torch.equal(a, b) for a, b in zip(given, weights(9), strict=True))
    secret = weights(None)
    assert not all(torch.equal(a, b) for a, b in zip(secret, weights(None), strict=True))
