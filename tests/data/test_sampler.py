"""StatefulDistributedSampler: process-count-independent global batches and mid-epoch resume."""

from __future__ import annotations

import pytest

from sslcore.data.sampler import StatefulDistributedSampler


def _batches(sampler: StatefulDistributedSampler):
    indices = list(sampler)
    size = sampler.batch_size
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _samplers(n, world, batch, *, drop_last, shuffle=True, seed=5, epoch=0):
    out = [StatefulDistributedSampler(n, world_size=world, rank=r, batch_size=batch, seed=seed,
                                      shuffle=shuffle, drop_last=drop_last) for r in range(world)]
    for s in out:
        s.set_epoch(epoch)
    return out


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("world,n", [(2, 100), (4, 100), (3, 50)])
def test_union_over_ranks_equals_the_one_process_batch(world, n, drop_last):
    per_rank = 4
    for epoch in (0, 1, 7):
        (single,) = _samplers(n, 1, per_rank * world, drop_last=drop_last, epoch=epoch)
        ranks = _samplers(n, world, per_rank, drop_last=drop_last, epoch=epoch)
        expected = _batches(single)
        per_rank_batches = [_batches(s) for s in ranks]
        assert all(len(b) == len(expected) == single.num_batches() for b in per_rank_batches)
        for step, batch in enumerate(expected):
            union = [i for b in per_rank_batches for i in b[step]]
            assert set(union) == set(batch)
            if len(batch) == per_rank * world:
                assert sorted(union) == sorted(batch)  # full steps: each sample exactly once
        seen = {i for b in expected for i in b}
        if drop_last:
            assert len(seen) == (n // (per_rank * world)) * per_rank * world
        else:
            assert seen == set(range(n))


def test_permutation_is_seeded_per_epoch():
    a, b = _samplers(64, 1, 8, drop_last=True)[0], _samplers(64, 1, 8, drop_last=True)[0]
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(64)) and first != list(range(64))
    a.set_epoch(1)
    assert list(a) != first
    other_seed = _samplers(64, 1, 8, drop_last=True, seed=6)[0]
    assert list(other_seed) != first
    assert list(_samplers(64, 1, 8, drop_last=True, shuffle=False)[0]) == list(range(64))


def test_resume_mid_epoch_with_set_start_iter():
    sampler = _samplers(100, 2, 8, drop_last=False, epoch=3)[1]
    full = _batches(sampler)
    assert len(full) == 7 and len(sampler) == 6 * 8 + 2
    sampler.set_start_iter(4)
    assert _batches(sampler) == full[4:] and len(sampler) == 2 * 8 + 2
    assert _batches(sampler) == full[4:]  # iterating again gives the same resumed epoch
    state = sampler.state_dict()
    restored = _samplers(100, 2, 8, drop_last=False)[1]
    restored.load_state_dict(state)
    assert _batches(restored) == full[4:]
    sampler.set_epoch(4)  # a new epoch starts from its first step
    assert sampler.start_iter == 0 and len(_batches(sampler)) == 7
    with pytest.raises(ValueError, match="start_iter must be in"):
        sampler.set_start_iter(8)


def test_sampler_errors():
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        StatefulDistributedSampler(10, world_size=2, rank=2, batch_size=2, seed=0, drop_last=False)
    with pytest.raises(ValueError, match="DROP_LAST"):
        StatefulDistributedSampler(10, world_size=2, rank=0, batch_size=8, seed=0, drop_last=True)
