"""The cached per-pixel feature bank (HDF5) and the mixed-batch sampler that feeds the heads."""

from anomseg.bank.extract import extract_bank, image_rows
from anomseg.bank.sampler import MixedBatchSampler
from anomseg.bank.store import OPEN, BankError, FeatureBank

__all__ = ["extract_bank", "FeatureBank", "MixedBatchSampler", "BankError", "OPEN", "image_rows"]
