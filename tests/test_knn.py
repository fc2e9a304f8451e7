import torch
import torch.nn.functional as F

from ssl_zoo.eval.knn import knn_top1


def test_knn_matches_a_hand_computed_vote():
    # Bank: two points of class 0 near +x, one of class 1 at +y.
    bank = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    # Query at 60 degrees: closer to +y (cos 0.87) than to the class-0 points (cos ~0.41 and ~0.58).
    query = torch.tensor([[0.5, 3**0.5 / 2]])
    # With T = 0.1 the single class-1 neighbour outweighs both class-0 ones: exp(8.66) > exp(4.1) + exp(5.8)
    assert knn_top1(bank, labels, query, torch.tensor([1]), num_classes=2, k=3, temperature=0.1) == 1.0
    # With T = 10 the votes are nearly equal weights, so the majority (class 0) wins.
    assert knn_top1(bank, labels, query, torch.tensor([0]), num_classes=2, k=3, temperature=10.0) == 1.0
    # k = 1 is nearest neighbour.
    assert knn_top1(bank, labels, query, torch.tensor([1]), num_classes=2, k=1) == 1.0


def test_knn_on_separable_clusters_is_perfect_and_on_noise_is_chance():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(50)
    bank = F.normalize(centres[labels] + 0.05 * torch.randn(200, 16, generator=g), dim=1)
    query = F.normalize(centres[labels] + 0.05 * torch.randn(200, 16, generator=g), dim=1)
    assert knn_top1(bank, labels, query, labels, num_classes=4, k=20) == 1.0
    noise = F.normalize(torch.randn(2000, 16, generator=g), dim=1)
    noise_labels = torch.randint(0, 4, (2000,), generator=g)
    accuracy = knn_top1(noise[:1000], noise_labels[:1000], noise[1000:], noise_labels[1000:], num_classes=4, k=20)
    assert 0.18 < accuracy < 0.32


def test_chunked_knn_equals_lightlys_to_the_last_prediction():
    """Queries in blocks, the bank in chunks (and in float16, as the streamed cache holds it):
    the same predictions as lightly's knn_predict over the whole (normalised) bank at once."""
    from lightly.utils.benchmarking import knn_predict

    from ssl_zoo.eval.knn import knn_predictions

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (3000,), generator=g)
    bank = (torch.randn(10, 64, generator=g)[labels] + 2.0 * torch.randn(3000, 64, generator=g)).half()
    queries = torch.randn(700, 64, generator=g)
    expected = knn_predict(F.normalize(queries, dim=1), F.normalize(bank.float(), dim=1).T.contiguous(), labels, 10,
                           knn_k=50, knn_t=0.1)[:, 0]
    for query_block, bank_block in ((1024, 1 << 20), (128, 500), (97, 64)):
        got = knn_predictions(bank, labels, queries, 10, k=50, temperature=0.1, query_block=query_block, bank_block=bank_block)
        assert torch.equal(got, expected), (query_block, bank_block)
