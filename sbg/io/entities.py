"""Entity labels as stable integer codes, shared by the readers and every stateful step of a pipeline."""

from __future__ import annotations

import numpy as np

__all__ = ["EntityIndex"]


class EntityIndex:
    """Stable integer codes for entity labels, shared by every step of a pipeline."""

    def __init__(self):
        self.codes_of: dict = {}
        self.labels: list = []
        self._cache_key = None
        self._cache = None

    def __len__(self):
        return len(self.labels)

    def codes(self, entities) -> np.ndarray:
        arr = np.asarray(entities, dtype=object)
        key = (id(entities), len(arr))
        if self._cache_key == key and self._cache is not None and self._cache_src is entities:
            return self._cache
        if len(arr) == 0:
            return np.zeros(0, dtype=np.int64)
        first = arr[0]
        if (arr == first).all():
            out = np.full(len(arr), self._code(first), dtype=np.int64)
        else:
            import pandas as pd

            local, uniques = pd.factorize(arr)
            table = np.array([self._code(u) for u in uniques], dtype=np.int64)
            out = table[local]
        self._cache_key, self._cache, self._cache_src = key, out, entities
        return out

    def restore(self, labels):
        """Make ``labels`` the known entities, coded in that order (a checkpoint's restore)."""
        self.labels[:] = list(labels)
        self.codes_of.clear()
        self.codes_of.update({label: code for code, label in enumerate(self.labels)})
        self._cache_key = self._cache = None

    def _code(self, label):
        code = self.codes_of.get(label)
        if code is None:
            code = self.codes_of[label] = len(self.labels)
            self.labels.append(label)
        return code
