"""The token-map bank: ragged, memory-mapped, resumable on-disk store of encoder outputs."""

from .extract import extract_bank
from .store import Bank, BankSplit, LoadedSplit, SplitMeta

__all__ = ["Bank", "BankSplit", "LoadedSplit", "SplitMeta", "extract_bank"]
