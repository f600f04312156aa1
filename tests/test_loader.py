"""The in-memory loader: every sample once per epoch, a new order each epoch, disjoint rank shards."""

from __future__ import annotations

import tracemalloc
from functools import partial
from itertools import islice

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from rmsprop_lightning import FeedForward, RegressionModule
from rmsprop_lightning.data import InMemoryBatchLoader, RegressionDataModule, Table
from rmsprop_lightning.data.sources import from_csv, from_numpy, synthetic
from rmsprop_lightning.optim import RMSprop


def rows_seen(loader: InMemoryBatchLoader) -> list[int]:
    """The sample ids of one epoch, in order (column 0 of the features holds the id)."""
    return [int(i) for features, _ in loader for i in features[:, 0]]


def make_loader(count: int = 103, batch_size: int = 8, **kwargs) -> InMemoryBatchLoader:
    ids = torch.arange(count, dtype=torch.float32).unsqueeze(1)
    return InMemoryBatchLoader(ids.repeat(1, 3), ids * 2, batch_size, **kwargs)


def test_every_sample_once_per_epoch_in_a_new_order():
    loader = make_loader()
    epochs = [rows_seen(loader) for _ in range(3)]
    assert all(sorted(epoch) == list(range(103)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert len(loader) == 13
    features, targets = next(iter(loader))
    assert torch.equal(targets[:, 0], features[:, 0] * 2)


def test_no_two_seeds_or_epochs_share_an_order():
    loaders = [make_loader(seed=seed) for seed in (0, 1, 2, 2**32, -1)]
    orders = [tuple(rows_seen(loader)) for _ in range(4) for loader in loaders]
    assert len(set(orders)) == len(orders) == 20


def test_same_seed_same_order_and_drop_last():
    assert rows_seen(make_loader(seed=5)) == rows_seen(make_loader(seed=5))
    loader = make_loader(drop_last=True)
    assert len(loader) == 12 and len(rows_seen(loader)) == 96


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_are_disjoint_and_cover_the_epoch(world_size):
    loaders = [make_loader(rank=rank, world_size=world_size, seed=1) for rank in range(world_size)]
    shards = [rows_seen(loader) for loader in loaders]
    assert len({len(shard) for shard in shards}) == 1
    padded = -(-103 // world_size) * world_size
    assert sum(len(shard) for shard in shards) == padded
    assert set().union(*shards) == set(range(103))
    distinct = [set(shard) for shard in shards]
    assert sum(len(shard) for shard in distinct) - len(set().union(*distinct)) == padded - 103


def test_rank_batches_together_form_the_single_process_batches():
    single = make_loader(count=96, batch_size=8, seed=2)
    ranks = [make_loader(count=96, batch_size=4, seed=2, rank=rank, world_size=2) for rank in range(2)]
    for (whole, _), (part0, _), (part1, _) in zip(single, *ranks, strict=True):
        assert sorted(whole[:, 0].tolist()) == sorted(part0[:, 0].tolist() + part1[:, 0].tolist())


def test_state_dict_resumes_mid_epoch():
    reference = make_loader(seed=3)
    expected = rows_seen(reference)[40:] + rows_seen(reference)
    loader = make_loader(seed=3)
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    resumed = make_loader(seed=3)
    resumed.load_state_dict(loader.state_dict())
    assert rows_seen(resumed) + rows_seen(resumed) == expected


def served_together(loaders: list[InMemoryBatchLoader], batches: int | None = None) -> list[int]:
    """The sample ids that ranks' loaders serve in lockstep (all their epoch, or its first ``batches``)."""
    steps = zip(*(iter(loader) for loader in loaders), strict=True)
    return [int(i) for step in islice(steps, batches) for features, _ in step for i in features[:, 0]]


def test_a_position_saved_by_two_ranks_goes_on_with_the_rows_they_left_in_one_process():
    ranks = [make_loader(seed=3, rank=rank, world_size=2) for rank in range(2)]
    served = served_together(ranks, 5)  # 80 of 103 rows, the order padded to 104
    single = make_loader(seed=3)
    single.load_state_dict(ranks[0].state_dict())
    reference = make_loader(seed=3)
    whole, next_epoch = rows_seen(reference), rows_seen(reference)
    rest = rows_seen(single)
    assert sorted(served + rest) == list(range(103)) and rest == whole[80:]
    assert rows_seen(single) == next_epoch
    finished = make_loader(seed=3)
    finished.load_state_dict({"epoch": 0, "position": 52, "world_size": 2})  # the padded epoch served
    assert rows_seen(finished) == next_epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_position_saved_by_one_process_goes_on_with_the_rows_it_left_in_several(world_size, caplog):
    single = make_loader(count=102, seed=4)
    whole = rows_seen(make_loader(count=102, seed=4))
    iterator = iter(single)
    for _ in range(5):  # 40 rows: 2 ranks take the next 62, 3 ranks skip 2 (not a multiple of 3)
        next(iterator)
    ranks = [make_loader(count=102, seed=4, rank=rank, world_size=world_size) for rank in range(world_size)]
    for loader in ranks:
        loader.load_state_dict(single.state_dict())
    start = -(-40 // world_size) * world_size
    assert sorted(served_together(ranks)) == sorted(whole[start:])
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    if world_size == 3:
        assert warnings == [
            "The checkpoint's 1 process(es) served 40 of the 102 rows of epoch 0, which 3 process(es) "
            "cannot split evenly: the epoch goes on after its first 42 rows, 2 row(s) unseen in it"
        ]
    else:
        assert warnings == []


def test_a_position_saved_without_a_world_size_is_taken_as_this_worlds():
    loader = make_loader(seed=3, rank=1, world_size=2)
    loader.load_state_dict({"epoch": 0, "position": 40})
    assert rows_seen(loader) == rows_seen(make_loader(seed=3, rank=1, world_size=2))[40:]


def test_datamodule_splits_and_standardises_on_training_rows():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 4, generator=generator) * 5 + 3
    table = Table(features, features[:, :1] * 2, ("a", "b", "c", "d"), ("y",))
    datamodule = RegressionDataModule(table, batch_size=10, val_fraction=0.2, test_fraction=0.1)
    splits = datamodule.splits
    assert [len(splits[name][0]) for name in ("train", "val", "test")] == [140, 40, 20]
    train_features = splits["train"][0]
    assert torch.allclose(train_features.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(train_features.std(0, unbiased=False), torch.ones(4), atol=1e-5)
    assert not torch.allclose(splits["val"][0].mean(0), torch.zeros(4), atol=1e-5)


@pytest.mark.parametrize(
    ("text", "features", "message"),
    [
        ("a,a,y\n1,2,3\n", None, "column 'a' is named twice"),
        ("a,b,y\n1,2,3\n", ["a", "y"], "column 'y' is named twice"),
        ("a,b,y\n1,2,3\n\n4,x,6\n", None, "line 4, column 'b': 'x' is not a number"),
        ("a,b,y\n1,2,3\n  \n,,\n", None, "line 4, column 'a': '' is not a number"),
        (",b,y\n1,2,3\n", None, "header column 1 has no name"),
    ],
)
def test_csv_columns_named_twice_are_refused_and_lines_counted_from_the_file(
    tmp_path, text, features, message
):
    path = tmp_path / "table.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        from_csv(path, "y", features)


def test_a_csv_quote_left_open_is_refused_with_its_line(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text('a,y\n"1,2\n' + "3,4\n" * 40_000)  # the rest of the file in one field
    with pytest.raises(ValueError, match=r"table.csv, line \d+: field larger than field limit"):
        from_csv(path, "y")


def test_a_corrupt_compressed_archive_is_refused(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez_compressed(path, X=np.random.default_rng(0).normal(size=(100, 3)), y=np.zeros(100))
    data = bytearray(path.read_bytes())
    data[58] ^= 0xFF  # inside X's compressed bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is not a numeric NumPy file"):
        from_numpy(path)


@pytest.mark.parametrize("value", [0.5, 0.1, -3.3])  # std of a constant 0.1 in float64: about 1e-17, not 0
def test_a_constant_column_is_centred_not_scaled(value):
    features = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    constant = torch.full((200, 1), value, dtype=torch.float64)
    data = RegressionDataModule(
        Table(torch.cat([features, constant], 1), constant.clone(), ("a", "b", "k"), ("y",)),
        standardize_targets=True,
    )
    state = data.state_dict()
    assert state["features_scale"][2].item() == state["targets_scale"].item() == 1.0
    assert data.splits["test"][1].abs().max().item() == 0.0


def test_any_changed_row_is_a_change_of_the_data():
    features = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    saved = RegressionDataModule(Table(features, features[:, :1], ("a", "b"), ("y",))).state_dict()
    for row in range(0, 200, 7):  # training, validation and test rows alike
        changed = features.clone()
        changed[row, 1] += 1e-3  # the scaling barely moves
        assert RegressionDataModule(Table(changed, features[:, :1], ("a", "b"), ("y",))).changes(saved)
    assert not RegressionDataModule(Table(features, features[:, :1], ("a", "b"), ("y",))).changes(saved)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"standardize_targets": "no"}, "true or false"),
        ({"split_seed": 1.5}, "integer in"),
        ({"shuffle_seed": 2**64}, "integer in"),
        ({"batch_size": True}, "positive integer"),
        ({"val_fraction": None}, r"must lie in \[0, 1\), got None"),
        ({"test_fraction": "0.1"}, r"must lie in \[0, 1\), got '0.1'"),
    ],
)
def test_a_data_module_refuses_settings_of_other_kinds(option, message):
    with pytest.raises(ValueError, match=message):
        RegressionDataModule(**option)


@pytest.mark.parametrize(
    ("features", "targets", "message"),
    [
        (torch.randn(4, 2), torch.randn(4), "2-D"),  # a target vector, not a column
        (torch.randint(0, 3, (4, 2)), torch.randn(4, 1), "floating-point"),
    ],
)
def test_a_table_of_other_shapes_or_kinds_is_refused(features, targets, message):
    with pytest.raises(ValueError, match=message):
        Table.numbered(features, targets)


def test_a_csv_without_a_path_or_a_target_is_refused_by_key(tmp_path):
    (tmp_path / "table.csv").write_text("a,y\n1,2\n")
    for path in (None, ""):
        with pytest.raises(ValueError, match=r"^data.source.path=.* names no file; allowed: the path"):
            from_csv(path, "y")
    with pytest.raises(ValueError, match=r"^data.source.target is empty; allowed: a column name"):
        from_csv(tmp_path / "table.csv", None)


def test_csv_reads_only_the_columns_it_uses_past_a_byte_order_mark(tmp_path):
    path = tmp_path / "table.csv"
    path.write_bytes("\ufeffid,a,y\nx1,2,3\nx2,5,6\n".encode())
    table = from_csv(path, "y", ["a"])
    assert table.features.tolist() == [[2.0], [5.0]] and table.targets.tolist() == [[3.0], [6.0]]


def test_a_tab_is_typed_as_backslash_t_and_other_delimiters_are_one_character(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("a\ty\n1\t2\n3\t4\n")
    table = from_csv(path, "y", delimiter="\\t")  # as data.source.delimiter='\t' reaches it
    assert table.features.tolist() == [[1.0], [3.0]] and table.targets.tolist() == [[2.0], [4.0]]
    with pytest.raises(ValueError, match=r"data.source.delimiter='ab' is not one character; allowed: "):
        from_csv(path, "y", delimiter="ab")


def test_synthetic_data_may_have_more_targets_than_features():
    table = synthetic(num_samples=64, num_features=2, num_targets=3)
    assert table.features.shape == (64, 2) and table.targets.shape == (64, 3)


def test_csv_columns_named_by_numbers_are_found_as_typed(tmp_path):
    path = tmp_path / "years.csv"
    path.write_text("2024,2025\n1,2\n3,4\n")
    for target, features in ((2025, 2024), ([2025], [2024])):  # as Hydra reads target=2025 and =[2025]
        table = from_csv(path, target, features)
        assert table.targets.tolist() == [[2.0], [4.0]] and table.target_names == ("2025",)


def test_the_standardisation_is_kept_to_map_new_rows_and_predictions():
    generator = torch.Generator().manual_seed(0)
    features, targets = 3 + 2 * torch.randn(200, 2, generator=generator), 50 + 9 * torch.randn(200, 1)
    data = RegressionDataModule(Table(features, targets, ("a", "b"), ("y",)), standardize_targets=True)
    (train_features, train_targets), rows = data.splits["train"], data.splits["train"][0].shape[0]
    state = data.state_dict()
    scaling = {"features_mean", "features_scale", "targets_mean", "targets_scale"}
    assert rows == 160 and set(state) == {*scaling, "rows_digest"}
    raw = train_targets * state["targets_scale"] + state["targets_mean"]
    assert raw.mean().item() == pytest.approx(state["targets_mean"].item(), rel=1e-5)
    assert torch.allclose(train_features.mean(0), torch.zeros(2), atol=1e-5)
    assert raw.std(unbiased=False).item() == pytest.approx(state["targets_scale"].item(), rel=1e-4)


def test_files_keep_float64_precision(tmp_path):
    """Timestamps near 1.7e9 and integers above 2**24 keep every unit (float32 would round them)."""
    offsets = list(range(0, 200, 7))
    path = tmp_path / "table.csv"
    path.write_text("t,y\n" + "".join(f"{1_700_000_000 + k},{2**24 + k}\n" for k in offsets))
    table = from_csv(path, "y")
    assert table.features.dtype == table.targets.dtype == torch.float64
    assert (table.features[:, 0] - 1_700_000_000).tolist() == offsets
    assert (table.targets[:, 0] - 2**24).tolist() == offsets
    np.savez(tmp_path / "arrays.npz", X=1_700_000_000 + np.array(offsets), y=2**24 + np.array(offsets))
    table = from_numpy(tmp_path / "arrays.npz")
    assert (table.features[:, 0] - 1_700_000_000).tolist() == offsets
    assert (table.targets[:, 0] - 2**24).tolist() == offsets


def test_paths_starting_with_a_tilde_are_read_from_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "table.csv").write_text("a,y\n1,2\n")
    np.save(tmp_path / "matrix.npy", np.ones((3, 2)))
    assert from_csv("~/table.csv", "y").targets.tolist() == [[2.0]]
    assert from_numpy("~/matrix.npy").features.shape == (3, 1)


@pytest.mark.parametrize("dtype", [bool, complex, "m8[s]", "M8[s]"])
def test_arrays_of_other_than_integers_or_reals_are_refused(tmp_path, dtype):
    np.savez(tmp_path / "arrays.npz", X=np.ones((4, 2), dtype=dtype), y=np.arange(4.0))
    with pytest.raises(ValueError, match=r"array 'X' holds .*; allowed: integers or reals"):
        from_numpy(tmp_path / "arrays.npz")


def test_csv_is_parsed_into_the_array_as_it_is_read(tmp_path):
    """Peak memory stays near the float64 array's size (no list of every cell's text)."""
    path = tmp_path / "table.csv"
    path.write_text("a,b,c,y\n" + "1.25,-3.5,7,0.125\n" * 20_000)
    tracemalloc.start()
    try:
        table = from_csv(path, "y")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert table.features.shape == (20_000, 3)
    assert peak < 3 * 20_000 * 4 * 8, peak


def test_each_trainer_of_a_data_module_starts_at_its_first_epoch():
    # a loop of fits over one data module: each fit sees the batches a fresh data module serves
    datamodule = RegressionDataModule(synthetic(num_samples=128), batch_size=32)
    weights = []
    for _ in range(2):
        pl.seed_everything(0, verbose=False)
        module = RegressionModule(FeedForward(hidden=5), partial(RMSprop, lr=0.01))
        trainer = pl.Trainer(
            max_steps=5,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule, verbose=False)
        weights.append(torch.cat([param.detach().flatten() for param in module.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_predict_gives_the_models_outputs_for_the_test_split_or_a_loader_of_features():
    datamodule = RegressionDataModule(synthetic(num_samples=128), batch_size=32, eval_batch_size=8)
    module = RegressionModule(FeedForward(hidden=5), partial(RMSprop, lr=0.01))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    features = datamodule.splits["test"][0]
    with torch.no_grad():
        expected = module(features)
    predicted = trainer.predict(module, datamodule=datamodule)
    assert len(predicted) == 2  # batches of eval_batch_size
    torch.testing.assert_close(torch.cat(predicted), expected)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features), batch_size=5)
    torch.testing.assert_close(torch.cat(trainer.predict(module, loader)), expected)


def test_a_loader_that_keeps_its_order_serves_every_rank_as_many_batches():
    # overfitting: the same batches every epoch, and, as in every training epoch, no rank left waiting
    features, targets = torch.randn(65, 2), torch.randn(65, 1)
    kept = partial(InMemoryBatchLoader, features, targets, 32, reshuffle=False, world_size=2)
    loaders = [kept(rank=rank) for rank in (0, 1)]
    assert [len(loader) for loader in loaders] == [2, 2]
    for loader in loaders:
        first, second = ([batch[1] for batch in loader] for _ in range(2))
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("reshuffle", [True, False])  # limit_train_batches, or overfit_batches
def test_a_loader_restored_at_the_end_of_a_limited_epoch_goes_on_in_the_next(reshuffle):
    features = torch.arange(100.0).unsqueeze(1)
    limited = partial(InMemoryBatchLoader, features, features, 10, reshuffle=reshuffle, batch_limit=2)
    whole = limited()
    assert len(list(whole)) == 2  # the epoch the trainer's limit leaves
    restored = limited()
    restored.load_state_dict(whole.state_dict())  # a checkpoint at that epoch's end
    assert all(torch.equal(a[0], b[0]) for a, b in zip(restored, whole, strict=True))


def test_a_scaling_one_side_applies_and_the_other_does_not_is_a_change_of_the_data():
    table = Table(
        torch.randn(200, 2, generator=torch.Generator().manual_seed(0)),
        torch.randn(200, 1),
        ("a", "b"),
        ("y",),
    )
    raw, scaled = (RegressionDataModule(table, standardize_targets=flag) for flag in (False, True))
    assert scaled.changes(raw.state_dict()) == ["targets_mean", "targets_scale"]
    assert raw.changes(scaled.state_dict()) == ["targets_mean", "targets_scale"]


def test_a_source_that_is_neither_a_table_nor_a_function_is_refused_at_once():
    with pytest.raises(ValueError, match=r"data.source must be a Table or a function returning one"):
        RegressionDataModule(source="table.csv")


def test_a_csv_that_is_not_utf8_is_refused_saying_so(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,y\n1,2,3\n\xe9,2,3\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"table.csv is not UTF-8 text .*allowed: a CSV file saved as UTF-8"):
        from_csv(path, "y")


def test_a_column_constant_but_for_rounding_is_neither_scaled_nor_refused():
    features = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    constant = torch.full((200, 1), 0.3, dtype=torch.float64)
    constant[::7] = 0.1 + 0.2  # 0.30000000000000004, as a table written from sums holds it
    table = Table(torch.cat([features, constant], 1), features[:, :1].clone(), ("a", "b", "k"), ("y",))
    assert RegressionDataModule(table).state_dict()["features_scale"][2].item() == 1.0
    assert len(RegressionDataModule(table, standardize_features=False).splits["train"][0]) == 160
