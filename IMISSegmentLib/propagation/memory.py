"""The propagation memory (numpy only): what the network reads to segment the next slice.

Three stores, each of (key (Ck, n), shrinkage (n,), value (Cv, n)) columns, one column per feature
position (XMem's design):

* permanent: the slices the user prompted, never evicted;
* working: the most recent propagated slices, at most ``working_max``; when it overflows, all but the
  newest ``working_min`` are consolidated into long-term memory;
* long-term: prototypes. Consolidation keeps the ``prototypes`` most used positions of the evicted slices
  as prototype keys and gives each a value read from the evicted slices (the prototype key as query), so
  one prototype stands for the similar positions around it. Long-term memory holds at most
  ``long_term_max`` columns; the least used go first.

Usage is how much read-out weight a column received, averaged over the reads since it entered. Memory
is therefore bounded by (prompted slices + ``working_max`` + ``long_term_max`` / positions per slice)
slices, whatever the volume's length.
"""
from __future__ import annotations

import numpy as np


def read_memory(query_key: np.ndarray, selection: np.ndarray, keys: np.ndarray, shrinkage: np.ndarray,
                values: np.ndarray, top_k: int):
    """XMem read-out, the numpy twin of :func:`IMISSegmentLib.networks.prop_net.read_memory`.

    query_key / selection (Ck, N); keys (Ck, M); shrinkage (M,); values (Cv, M)
    -> (readout (Cv, N), weight each memory column received (M,))."""
    dim = query_key.shape[0]
    # (N, M) layout: the top-k search then runs along contiguous rows
    similarity = 2.0 * ((query_key * selection).T @ keys)
    similarity -= selection.T @ (keys * keys)
    similarity -= (selection * query_key * query_key).sum(0)[:, None]
    similarity *= shrinkage[None, :] / np.sqrt(dim)
    memory = similarity.shape[1]
    k = min(int(top_k), memory)
    if k < memory:
        top = np.argpartition(similarity, memory - k, axis=1)[:, memory - k:]   # (N, k) indices
        chosen = np.take_along_axis(similarity, top, axis=1)
    else:
        top = np.broadcast_to(np.arange(memory)[None, :], similarity.shape)
        chosen = similarity
    chosen = np.exp(chosen - chosen.max(1, keepdims=True))
    chosen /= chosen.sum(1, keepdims=True)
    readout = np.einsum("cnk,nk->cn", values[:, top], chosen, optimize=True)
    usage = np.bincount(top.ravel(), weights=chosen.ravel(), minlength=memory)
    return readout.astype(np.float32), usage


class _Store:
    def __init__(self) -> None:
        self.keys, self.shrinkage, self.values, self.usage, self.age = [], [], [], [], []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key, shrinkage, value) -> None:
        self.keys.append(key)
        self.shrinkage.append(shrinkage)
        self.values.append(value)
        self.usage.append(np.zeros(key.shape[1]))
        self.age.append(0)

    def columns(self) -> int:
        return sum(k.shape[1] for k in self.keys)


class MemoryManager:
    """Owns the memory of one propagation run; see the module docstring."""

    def __init__(self, top_k: int = 30, working_min: int = 4, working_max: int = 10, long_term_max: int = 2048,
                 prototypes: int = 128) -> None:
        if not 1 <= working_min < working_max:
            raise ValueError(f"memory needs 1 <= working_min < working_max, got {working_min}, {working_max}")
        self.top_k, self.working_min, self.working_max = int(top_k), int(working_min), int(working_max)
        self.long_term_max, self.prototypes = int(long_term_max), int(prototypes)
        self.permanent, self.working = _Store(), _Store()
        self.long_keys = self.long_shrinkage = self.long_values = self.long_usage = None

    @property
    def long_term_columns(self) -> int:
        return 0 if self.long_keys is None else self.long_keys.shape[1]

    @property
    def size(self) -> int:
        """Columns held in all three stores."""
        return self.permanent.columns() + self.working.columns() + self.long_term_columns

    def add_permanent(self, key, shrinkage, value) -> None:
        self.permanent.add(*self._check(key, shrinkage, value))

    def add_working(self, key, shrinkage, value) -> None:
        self.working.add(*self._check(key, shrinkage, value))
        if len(self.working) > self.working_max:
            self._consolidate(len(self.working) - self.working_min)

    def clear_working(self) -> None:
        self.working = _Store()

    @staticmethod
    def _check(key, shrinkage, value):
        key = np.asarray(key, np.float32).reshape(key.shape[0], -1)
        shrinkage = np.asarray(shrinkage, np.float32).reshape(-1)
        value = np.asarray(value, np.float32).reshape(value.shape[0], -1)
        if not key.shape[1] == shrinkage.shape[0] == value.shape[1]:
            raise ValueError(f"memory entry shapes disagree: key {key.shape}, shrinkage {shrinkage.shape}, "
                             f"value {value.shape}")
        return key, shrinkage, value

    def read(self, query_key: np.ndarray, selection: np.ndarray) -> np.ndarray:
        """(Ck, N) query key and selection -> (Cv, N) read-out; usage is recorded."""
        parts = [(self.permanent, i) for i in range(len(self.permanent))] + \
                [(self.working, i) for i in range(len(self.working))]
        if not parts and self.long_keys is None:
            raise ValueError("the memory is empty: add a prompted slice first")
        keys = [store.keys[i] for store, i in parts]
        shrink = [store.shrinkage[i] for store, i in parts]
        values = [store.values[i] for store, i in parts]
        if self.long_keys is not None:
            keys.append(self.long_keys)
            shrink.append(self.long_shrinkage)
            values.append(self.long_values)
        readout, usage = read_memory(query_key, selection, np.concatenate(keys, 1), np.concatenate(shrink),
                                     np.concatenate(values, 1), self.top_k)
        start = 0
        for store, i in parts:
            n = store.keys[i].shape[1]
            store.usage[i] += usage[start:start + n]
            store.age[i] += 1
            start += n
        if self.long_keys is not None:
            self.long_usage = 0.9 * self.long_usage + usage[start:]
        return readout

    def _consolidate(self, count: int) -> None:
        """Turn the ``count`` oldest working slices into long-term prototypes."""
        old = self.working
        keys = np.concatenate(old.keys[:count], 1)
        shrink = np.concatenate(old.shrinkage[:count])
        values = np.concatenate(old.values[:count], 1)
        usage = np.concatenate([u / max(1, a) for u, a in zip(old.usage[:count], old.age[:count])])
        chosen = np.argsort(-usage)[:min(self.prototypes, usage.size)]
        proto_keys = keys[:, chosen]
        proto_values, _ = read_memory(proto_keys, np.ones_like(proto_keys), keys, shrink, values, self.top_k)
        kept = _Store()
        for name in ("keys", "shrinkage", "values", "usage", "age"):
            setattr(kept, name, getattr(old, name)[count:])
        self.working = kept
        if self.long_keys is None:
            self.long_keys, self.long_shrinkage = proto_keys, shrink[chosen]
            self.long_values, self.long_usage = proto_values, usage[chosen]
        else:
            self.long_keys = np.concatenate([self.long_keys, proto_keys], 1)
            self.long_shrinkage = np.concatenate([self.long_shrinkage, shrink[chosen]])
            self.long_values = np.concatenate([self.long_values, proto_values], 1)
            self.long_usage = np.concatenate([self.long_usage, usage[chosen]])
        if self.long_keys.shape[1] > self.long_term_max:
            keep = np.sort(np.argsort(-self.long_usage)[:self.long_term_max])
            self.long_keys, self.long_shrinkage = self.long_keys[:, keep], self.long_shrinkage[keep]
            self.long_values, self.long_usage = self.long_values[:, keep], self.long_usage[keep]
