"""Tree sums of partial results (SuffStats or anything with an associative ``+``).

A reduction is chunk → combine → aggregate with an explicit fan-in
``split_every``: partial results are added ``split_every`` at a time, level by
level, so the tree has depth ``ceil(log_{split_every} n)`` instead of the depth
``n`` of a running ``sum()``. Both the in-process and the Dask version group
the same consecutive runs of blocks, so their results agree to the last bit
for the same blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import dask

T = TypeVar("T")

DEFAULT_SPLIT_EVERY = 8


def check_split_every(split_every: object) -> int:
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an integer >= 2, got {split_every!r}.")
    return split_every


def sum_group(*parts: T) -> T:
    """Add a run of partial results left to right (one node of the tree)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part  # type: ignore[operator]
    return total


def tree_depth(n_leaves: int, split_every: int) -> int:
    """Number of combine levels above ``n_leaves`` leaves (exact integer arithmetic)."""
    depth = 0
    while n_leaves > 1:
        n_leaves = -(-n_leaves // split_every)
        depth += 1
    return depth


def tree_sum(parts: Iterable[T], split_every: int = DEFAULT_SPLIT_EVERY) -> T:
    """Sum ``parts`` in a tree of fan-in ``split_every``, holding O(depth·fan-in) items.

    Consumes an iterator lazily, so an in-process engine can reduce blocks as
    they are produced without keeping every block's statistics alive.
    """
    check_split_every(split_every)
    levels: list[list[T]] = []
    for part in parts:
        carry = part
        for level in levels:
            level.append(carry)
            if len(level) < split_every:
                break
            carry = sum_group(*level)
            level.clear()
        else:
            levels.append([carry])
    # flush: each level's leftover run becomes one node of the next level up
    carry_item: list[T] = []
    for level in levels:
        level.extend(carry_item)
        carry_item = [sum_group(*level)] if level else []
    if not carry_item:
        raise ValueError("tree_sum of no parts: there were no blocks to reduce.")
    return carry_item[0]


def dask_tree_sum(parts: Sequence[Any], split_every: int, name: str) -> Any:
    """Tree of ``dask.delayed`` additions over delayed partial results.

    Returns one Delayed whose graph has ``tree_depth(len(parts), split_every)``
    combine levels; node keys are ``(name, level, index)``.
    """
    check_split_every(split_every)
    level = list(parts)
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            dask.delayed(sum_group, pure=True)(
                *level[i : i + split_every], dask_key_name=(name, depth, i // split_every)
            )
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def combine_with(combine: Callable[[T, T], T]) -> Callable[..., T]:
    """A ``sum_group`` for a custom binary ``combine``."""

    def group(*parts: T) -> T:
        total = parts[0]
        for part in parts[1:]:
            total = combine(total, part)
        return total

    return group
