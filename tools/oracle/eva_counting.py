"""Counts the batches each EVA hook layer's incremental PCA used, for the EVA fixture scripts: patches
PEFT 0.21's SVDHook (to tag its IncrementalPCA with the layer name) and IncrementalPCA.partial_fit."""
from collections import Counter

import peft.tuners.lora.eva as eva
from peft.utils.incremental_pca import IncrementalPCA


def count_pca_updates(strip=""):
    """Returns a Counter that, from now on, counts partial_fit calls per hook layer name (minus `strip`)."""
    updates = Counter()
    init = eva.SVDHook.__init__
    fit = IncrementalPCA.partial_fit

    def tagged_init(self, *a, **k):
        init(self, *a, **k)
        self.svd._eva_name = self.name.replace(strip, "") if strip else self.name

    def counted_fit(self, X, check_input=True):
        if hasattr(self, "_eva_name"):
            updates[self._eva_name] += 1
        return fit(self, X, check_input)

    eva.SVDHook.__init__ = tagged_init
    IncrementalPCA.partial_fit = counted_fit
    return updates
