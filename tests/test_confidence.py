"""Bootstrap intervals of accuracies, against the normal approximation and a naive loop."""

import math

import torch

from ssl_zoo.eval.confidence import bootstrap_interval, correct_from_text, correct_to_text, intervals_overlap


def test_interval_matches_the_binomial_normal_approximation():
    correct = torch.zeros(5000, dtype=torch.bool)
    correct[:2000] = True  # accuracy 0.4
    low, high = bootstrap_interval(correct)
    half_width = 1.96 * math.sqrt(0.4 * 0.6 / 5000)  # ~1.36 points
    assert abs(low - (0.4 - half_width)) < 0.003 and abs(high - (0.4 + half_width)) < 0.003


def test_interval_equals_a_naive_resampling_loop_with_the_same_draws():
    correct = torch.rand(300, generator=torch.Generator().manual_seed(1)) < 0.7
    generator = torch.Generator().manual_seed(0)
    means = []
    for _ in range(2):  # the same chunks of 100 resamples the function draws
        index = torch.randint(300, (100, 300), generator=generator)
        for row in index:
            means.append(sum(bool(correct[i]) for i in row.tolist()) / 300)
    expected = torch.quantile(torch.tensor(means), torch.tensor([0.025, 0.975])).tolist()
    assert bootstrap_interval(correct, resamples=200) == tuple(expected)


def test_seeds_are_resampled_jointly_and_their_mean_is_the_centre():
    first = torch.rand(4000, generator=torch.Generator().manual_seed(2)) < 0.6
    second = torch.rand(4000, generator=torch.Generator().manual_seed(3)) < 0.8
    low, high = bootstrap_interval(torch.stack([first, second]))
    mean = (first.float().mean() + second.float().mean()).item() / 2
    assert low < mean < high and high - low < 0.03
    # Two seeds that agree image by image give the single run's interval.
    assert bootstrap_interval(torch.stack([first, first])) == bootstrap_interval(first)


def test_overlap_and_the_text_form():
    assert intervals_overlap((0.1, 0.2), (0.2, 0.3)) and intervals_overlap((0.1, 0.5), (0.2, 0.3))
    assert not intervals_overlap((0.1, 0.19), (0.2, 0.3))
    correct = torch.tensor([True, False, False, True])
    assert correct_to_text(correct) == "1001"
    assert torch.equal(correct_from_text("1001"), correct)
