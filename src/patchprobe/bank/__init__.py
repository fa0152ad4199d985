"""The token-map bank: ragged, memory-mapped, resumable on-disk store of encoder outputs."""

from .extract import extract_bank, shard_for_process
from .loaded import BankIdentity, LoadedBank
from .store import Bank, BankSplit, LoadedSplit, Shard, SplitMeta

__all__ = ["Bank", "BankIdentity", "BankSplit", "LoadedBank", "LoadedSplit", "Shard", "SplitMeta", "extract_bank", "shard_for_process"]
