"""The token-map bank: ragged, memory-mapped, resumable on-disk store of encoder outputs."""

from .extract import extract_bank
from .loaded import BankIdentity, LoadedBank
from .store import Bank, BankSplit, LoadedSplit, SplitMeta

__all__ = ["Bank", "BankIdentity", "BankSplit", "LoadedBank", "LoadedSplit", "SplitMeta", "extract_bank"]
