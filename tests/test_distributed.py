"""Masks under torch.distributed: 2 processes on the gloo backend (CPU), spawned by the test.

Data-parallel ranks must draw different masks even after the same ``torch.manual_seed``; the ranks
of a tensor-parallel group share one inside ``model_parallel_region``; a tracker fork seeded per
tensor-parallel rank gives different masks again.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dropkit import noise, ops, rng

WORLD = 2
N = 4096


def _gather(mask: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(mask) for _ in range(WORLD)]
    dist.all_gather(out, mask)
    return out


def _worker(rank: int, init_file: str, result_file: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ones = torch.ones(N)
        results = {}
        torch.manual_seed(0)  # the same seed on every rank
        results["data_parallel"] = _gather(ops.dropout_elementwise(ones, 0.5, 2.0))
        # counter-based noise (dropkit.noise) follows the same salts as the masks
        results["noise_data_parallel"] = _gather(noise.gaussian_dropout(ones, 0.5))
        with rng.model_parallel_region(dist.group.WORLD):
            results["shared_region"] = _gather(ops.dropout_elementwise(ones, 0.5, 2.0))
            results["shared_mask"] = _gather(ops.keep_mask((N,), 0.5, "cpu").to(torch.float32))
            results["noise_shared_region"] = _gather(noise.gaussian_dropout(ones, 0.5))
        rng.model_parallel_manual_seed(0, dist.group.WORLD)
        with rng.get_rng_tracker().fork():
            results["tracker_fork"] = _gather(ops.dropout_elementwise(ones, 0.5, 2.0))
            results["noise_tracker_fork"] = _gather(noise.uniform((N,)))
        # Two data-parallel groups of one rank each: each rank is rank 0 of its group, so the
        # default salt is the same and the ranks (now one model replica) share masks.
        singletons = [dist.new_group([r]) for r in range(WORLD)]
        rng.set_data_parallel_group(singletons[rank])
        torch.manual_seed(0)
        results["same_dp_rank"] = _gather(ops.dropout_elementwise(ones, 0.5, 2.0))
        rng.set_data_parallel_group(None)
        if rank == 0:
            torch.save(results, result_file)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_ranks_differ_and_tensor_parallel_groups_share(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    result_file = str(tmp_path / "results.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), result_file), nprocs=WORLD, join=True)
    results = torch.load(result_file)
    rank0, rank1 = results["data_parallel"]
    assert not torch.equal(rank0, rank1)
    agreement = int(((rank0 != 0) == (rank1 != 0)).sum())
    assert abs(agreement - N / 2) <= 6 * (N / 4) ** 0.5  # independent masks agree half the time
    for key in ("shared_region", "shared_mask", "same_dp_rank", "noise_shared_region"):
        assert torch.equal(*results[key]), key
    for key in ("tracker_fork", "noise_data_parallel", "noise_tracker_fork"):
        assert not torch.equal(*results[key]), key
    assert not torch.equal(results["shared_region"][0], results["data_parallel"][0])
