"""The policy update's gradient does not depend on how the step is cut: 1 vs 4 micro-batches, and
1 vs 2 DDP workers (gloo, two processes), give the same gradients; so does the loss's scale."""

from __future__ import annotations

import copy
import datetime
import os
import random
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from actors.trainers.rl.batch import micro_batches
from actors.trainers.rl.config import AlgorithmConfig, OptimConfig
from actors.trainers.rl.policy import PolicyTrainer, StepTotals
from actors.trainers.rl.rollout import Sample
from actors.trainers.rl.tasks import Problem
from tests.conftest import make_tiny_model

CPU = torch.device("cpu")


def samples(count: int = 8, seed: int = 0) -> tuple[list[Sample], list[float]]:
    """Completions of uneven lengths (so a per-micro-batch mean would weigh tokens unevenly)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(62) for _ in range(rng.randrange(2, 6))]
        completion = [rng.randrange(62) for _ in range(rng.randrange(1, 12))]
        problem = Problem("toy", i, "", "")
        out.append(Sample(problem, prompt, completion, [0.0] * len(completion), "", "stop", 0, 1))
    return out, [rng.uniform(-1, 1) for _ in range(count)]


def totals(batch: list[Sample]) -> StepTotals:
    return StepTotals(tokens=sum(len(s.token_ids) for s in batch), seqs=len(batch), max_tokens=12)


def gradients(trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}


def trainer_for(model, world: int = 1, wrap=None) -> PolicyTrainer:
    optim, algorithm = OptimConfig(lr=1e-3), AlgorithmConfig()
    return PolicyTrainer(model, optim, algorithm, temperature=1.0, world=world, wrap=wrap)


def test_token_mean_gradient_is_the_same_for_1_and_4_micro_batches():
    batch, scores = samples()
    whole = trainer_for(make_tiny_model(seed=5))
    split = trainer_for(copy.deepcopy(whole.policy))
    whole.accumulate(micro_batches(batch, scores, 8), totals(batch), CPU)
    split.accumulate(micro_batches(batch, scores, 2), totals(batch), CPU)
    expected, got = gradients(whole), gradients(split)
    assert expected and all(torch.allclose(got[n], expected[n], atol=1e-6, rtol=1e-5) for n in expected)


def test_a_per_micro_batch_denominator_would_change_the_gradient():
    """The invariance above is not automatic: dividing by each micro-batch's own token count
    (the common bug) gives another gradient on the same data."""
    batch, scores = samples()
    whole = trainer_for(make_tiny_model(seed=5))
    naive = trainer_for(copy.deepcopy(whole.policy))
    whole.accumulate(micro_batches(batch, scores, 8), totals(batch), CPU)
    for part in micro_batches(batch, scores, 2):
        own = StepTotals(tokens=int(part.mask.sum()), seqs=part.mask.shape[0], max_tokens=12)
        naive.accumulate([part], own, CPU)
    expected, got = gradients(whole), gradients(naive)
    assert not all(torch.allclose(got[n], expected[n], atol=1e-6, rtol=1e-5) for n in expected)


#: a rank that cannot reach the other within this fails the test instead of hanging the run
RENDEZVOUS = datetime.timedelta(seconds=120)


def _worker(rank: int, rendezvous: str, batch, scores, out: str) -> None:
    # a file rendezvous: no port to race for, and gloo's own timeout bounds every wait
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2, timeout=RENDEZVOUS)
    torch.set_num_threads(1)
    wrap = torch.nn.parallel.DistributedDataParallel
    trainer = trainer_for(make_tiny_model(seed=5), world=2, wrap=wrap)
    mine = list(range(len(batch)))[rank::2]
    local = [batch[i] for i in mine], [scores[i] for i in mine]
    trainer.accumulate(micro_batches(*local, 2), totals(batch), CPU)
    if rank == 0:
        torch.save(gradients(trainer), out)  # a test's own scratch file
    dist.barrier()
    # Exit without destructors: when the DDP reducer drops the last reference to the gloo group,
    # ~ProcessGroupGloo joins gloo's worker thread with the GIL held while that thread waits for
    # the GIL to free a finished work item — a deadlock that hung CI (seen with py-spy; it needs
    # the whole suite imported, where the work items hold a Python object).
    os._exit(0)


def test_token_mean_gradient_is_the_same_for_1_and_2_workers(tmp_path):
    batch, scores = samples()
    single = trainer_for(make_tiny_model(seed=5))
    single.accumulate(micro_batches(batch, scores, 8), totals(batch), CPU)
    out, rendezvous = str(tmp_path / "grads.pt"), f"file://{tmp_path / 'rendezvous'}"
    workers = mp.start_processes(
        _worker, args=(rendezvous, batch, scores, out), nprocs=2, start_method="spawn", join=False
    )
    join_within(workers, seconds=3 * RENDEZVOUS.total_seconds())
    reduced = torch.load(out)
    expected = gradients(single)
    names = {n.removeprefix("module.") for n in reduced}
    assert names == set(expected)
    got = {n.removeprefix("module."): g for n, g in reduced.items()}
    assert all(torch.allclose(got[n], expected[n], atol=1e-6, rtol=1e-5) for n in expected)


def join_within(workers: mp.ProcessContext, seconds: float) -> None:
    """Join spawned ranks, or kill them and fail when they are still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not workers.join(timeout=5):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            raise AssertionError(f"the 2 DDP ranks did not finish within {seconds:.0f} s")
