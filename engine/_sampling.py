"""Data order owned by the Trainer, so an epoch can resume at any batch without loading the skipped ones.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone; the DataLoader's
worker seeds come from a generator reseeded from ``(seed, e)`` at every epoch start. No
hidden global RNG draw decides what data a step sees.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, Sampler
from torch.utils.data.sampler import BatchSampler

__all__ = ["ResumableSampler", "make_resumable", "reseed_workers", "epoch_seed", "with_own_generator"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``epoch`` that differs between epochs and between base seeds."""
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)


class ResumableSampler(Sampler[int]):
    """Indices of one rank's share of the dataset for the current epoch, from ``start`` on.

    ``shuffle`` draws a permutation seeded by ``(seed, epoch)``; with several ranks each
    takes every ``num_replicas``-th index (padded so all ranks get the same count, as
    ``DistributedSampler`` does). ``start`` skips already consumed samples of this epoch
    and applies to one iteration only.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last and size % num_replicas:
            self.per_rank = size // num_replicas
        else:
            self.per_rank = math.ceil(size / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        self.start = start

    def indices(self) -> list[int]:
        """This rank's full index list for the current epoch."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.num_replicas
        if total > len(order):
            order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[:total][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.indices()[start:])

    def __len__(self) -> int:
        return self.per_rank


def make_resumable(loader: Any, seed: int, num_replicas: int = 1, rank: int = 0) -> tuple[Any, str]:
    """A copy of ``loader`` whose order the Trainer owns, and a sentence saying what was done.

    Loaders that cannot be rebuilt (not a DataLoader, an IterableDataset, a custom sampler or
    batch sampler) come back unchanged; resuming mid-epoch then replays the skipped batches.
    """
    if not isinstance(loader, DataLoader):
        return loader, f"{type(loader).__name__} is not a DataLoader: mid-epoch resume replays skipped batches"
    if isinstance(loader.dataset, IterableDataset):
        return loader, "an IterableDataset has no indices: mid-epoch resume replays skipped batches"
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        return loader, (f"custom batch_sampler {type(loader.batch_sampler).__name__} kept: "
                        "mid-epoch resume replays skipped batches")
    if type(loader.sampler) not in (RandomSampler, SequentialSampler):
        return loader, (f"custom sampler {type(loader.sampler).__name__} kept: "
                        "mid-epoch resume replays skipped batches")
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = ResumableSampler(len(loader.dataset), shuffle, seed, num_replicas, rank,  # type: ignore[arg-type]
                               drop_last=loader.drop_last)
    rebuilt = rebuild(loader, sampler=sampler)
    order = "shuffled by (seed, epoch)" if shuffle else "in order"
    shard = f", rank {rank} of {num_replicas}" if num_replicas > 1 else ""
    return rebuilt, f"training sampler replaced by a resumable one ({order}{shard})"


def with_own_generator(loader: Any) -> Any:
    """``loader`` rebuilt with its own generator, so iterating it draws nothing from the global RNG."""
    if not isinstance(loader, DataLoader) or loader.generator is not None \
            or isinstance(loader.dataset, IterableDataset) \
            or (loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler):
        return loader
    return rebuild(loader)


def rebuild(loader: DataLoader, sampler: Sampler[int] | None = None) -> DataLoader:
    """The same DataLoader with our own worker-seed generator (and ``sampler`` if given)."""
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size,
        sampler=sampler if sampler is not None else loader.sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=torch.Generator(),
        persistent_workers=loader.persistent_workers,
    )
    if loader.batch_size is None:
        kwargs["batch_size"] = None
        kwargs.pop("drop_last")
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)


def reseed_workers(loader: Any, seed: int, epoch: int) -> None:
    """Make this epoch's worker seeds depend on ``(seed, epoch)`` only."""
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed(seed, epoch) ^ 0x5DEECE66D)
