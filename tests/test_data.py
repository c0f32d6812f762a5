import pytest
import torch

from dropkit.data import load_diabetes, load_digits, load_mnist1d, split_train_val


def test_mnist1d_is_generated_locally_with_the_papers_split():
    d = load_mnist1d()
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.y_train.dtype == torch.int64 and set(d.y_train.unique().tolist()) == set(range(10))
    assert d.n_classes == 10 and d.task == "classification"


def test_mnist1d_seed_changes_the_draw_and_is_reproducible():
    a, b, c = (
        load_mnist1d(seed=1, num_samples=200),
        load_mnist1d(seed=1, num_samples=200),
        load_mnist1d(seed=2, num_samples=200),
    )
    assert torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_sklearn_sets_are_split_without_overlap():
    d = load_digits()
    assert d.x_train.shape[0] + d.x_test.shape[0] == 1797
    assert float(d.x_train.max()) <= 1.0
    r = load_diabetes()
    assert r.task == "regression" and r.x_train.shape[1] == 10
    assert abs(float(r.x_train.mean())) < 1e-5


def test_split_train_val_partitions_the_rows():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100)
    xt, yt, xv, yv = split_train_val(x, y, 0.2, seed=3)
    assert len(xv) == 20 and len(xt) == 80
    assert sorted(torch.cat([yt, yv]).tolist()) == list(range(100))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_train_val_rejects_a_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(torch.zeros(10, 1), torch.zeros(10), fraction)


def test_split_train_val_rejects_a_set_too_small_to_split():
    with pytest.raises(ValueError, match="cannot split 1 examples"):
        split_train_val(torch.zeros(1, 1), torch.zeros(1), 0.5)


def test_load_table_without_standardising_refuses_values_beyond_float32(tmp_path):
    import numpy as np

    from dropkit.data import load_table

    x = np.random.default_rng(0).normal(size=(20, 2))
    x[4, 0] = 1e39
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    with pytest.raises(
        ValueError, match=r"column 'x\[0\]': value 1e\+39 \(row \d+\) is beyond float32"
    ):
        load_table(tmp_path / "d.npz", label="y", standardize=False)
    x[4, 0] = 3e38
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    d = load_table(tmp_path / "d.npz", label="y", standardize=False)
    assert torch.cat([d.x_train, d.x_test]).isfinite().all()
