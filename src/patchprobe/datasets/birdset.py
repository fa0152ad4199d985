"""BirdSet's few-shot protocol: event-based 5 s training windows and the k-shot training subset.

Facts (BirdSet's `XCEventMapping` and `EventDecoding`, and Bird-MAE's few-shot generator):
- A training recording's events are its `detected_events` in the largest non-noise cluster
  (`event_cluster` != -1; ties go to the lowest cluster id). A recording whose only event is a
  noise event keeps that event (BirdSet does); one with no event, or with several events that are
  all noise, counts as one event [0, 5].
- Each event shorter than `extension_time` is extended symmetrically to `extension_time` seconds,
  clamped to the recording, and shifted back inside it at an edge; a longer event is kept as it is.
  The 5 s window lies inside that region. BirdSet's `EventDecoding` defaults to 6 s (Bird-MAE uses that
  default); BirdSet's own experiment configuration sets 8 s. Our default is 6 s, an option of every
  BirdSet dataset. BirdSet draws the window's start at random each epoch; a bank is extracted once,
  so we take the middle of the allowed starts (the centred window).
- k-shot subset: recordings that pass the filter (lenient: <= 20 s and no secondary labels; strict:
  <= 5 s) are mapped to their events; events inside another event of the same recording are dropped;
  one event per recording is its primary, chosen at random; per class, k primaries are drawn, topped
  up from that class's leftover events; with `fill_up`, classes still short are topped up from the
  recordings the filter rejected (primaries first). A sample's class is its recording's `ebird_code`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WINDOW_SECONDS = 5.0
EXTENSION_SECONDS = 6.0  # BirdSet EventDecoding's default extension_time


@dataclass(frozen=True)
class Event:
    """One training sample: an event of `row`, as the 5 s window [start, end) seconds."""

    row: int
    event_start: float
    event_end: float
    start: float
    end: float
    label: str


def recording_events(detected_events, event_cluster) -> list[tuple[float, float]]:
    """The events of the largest non-noise cluster, in time order.

    A lone noise event is kept (as BirdSet's event mapping does); no event, or only noise events,
    give the default event [(0, 5)].
    """
    events = [tuple(map(float, e)) for e in (detected_events or []) if e is not None and len(e) == 2]
    clusters = list(event_cluster or [])
    if len(clusters) != len(events):
        clusters = [0] * len(events)
    if len(events) == 1 and clusters[0] == -1:
        return [events[0]]
    counts: dict[int, int] = {}
    for cluster in clusters:
        if cluster != -1:
            counts[cluster] = counts.get(cluster, 0) + 1
    if not counts:
        return [(0.0, WINDOW_SECONDS)]
    largest = max(sorted(counts), key=lambda c: counts[c])  # ties: the lowest cluster id
    return sorted(e for e, c in zip(events, clusters) if c == largest)


def event_window(event: tuple[float, float], duration: float | None,
                 extension: float = EXTENSION_SECONDS) -> tuple[float, float]:
    """The 5 s window of an event, following BirdSet's `EventDecoding._time_shifting`.

    An event shorter than `extension` is extended symmetrically to `extension` seconds and clamped to
    [0, duration]; if clamping shortened it, it is shifted back inside the recording from the edge it
    hit. The window starts in the middle of the allowed starts [region start, region end - 5] (BirdSet
    draws it at random) and ends at most at the recording's end, so a recording shorter than 5 s gives
    [0, duration].
    """
    start, end = event
    total = float("inf") if duration is None else float(duration)
    if end - start < extension:
        side = (extension - (end - start)) / 2
        low, high = max(0.0, start - side), min(total, end + side)
        if high - low < extension:
            if low == 0:
                high = min(extension, total)
            elif high == total:
                low = max(0.0, total - extension)
    else:
        low, high = start, end
    latest = max(0.0, high - WINDOW_SECONDS)
    begin = (low + latest) / 2
    return round(begin, 3), round(min(begin + WINDOW_SECONDS, total), 3)


def drop_contained(events: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Remove events that lie strictly inside another event of the same recording."""
    return [e for e in events if not any(o[0] < e[0] and o[1] > e[1] for o in events if o != e)]


def passes_filter(condition: str, duration: float | None, secondary: list | None) -> bool:
    """Bird-MAE's recording filters: "lenient" (<= 20 s, no secondary labels), "strict" (<= 5 s), "none"."""
    if condition == "none":
        return True
    if duration is None:
        return False
    if condition == "lenient":
        return duration <= 20 and not secondary
    if condition == "strict":
        return duration <= 5
    raise ValueError(f"unknown filter {condition!r}; use lenient, strict or none")


def _map_recordings(rows: list[int], recordings: dict, rng: random.Random, extension: float) -> tuple[dict, dict]:
    primary: dict[str, list[Event]] = {}
    leftover: dict[str, list[Event]] = {}
    for row in rows:
        info = recordings[row]
        events = drop_contained(recording_events(info["detected_events"], info["event_cluster"]))
        chosen = rng.randrange(len(events))
        for i, event in enumerate(events):
            start, end = event_window(event, info["duration"], extension)
            sample = Event(row, event[0], event[1], start, end, info["label"])
            (primary if i == chosen else leftover).setdefault(info["label"], []).append(sample)
    return primary, leftover


def kshot_subset(recordings: dict[int, dict], k: int, seed: int, condition: str = "lenient", fill_up: bool = True,
                 extension: float = EXTENSION_SECONDS) -> list[Event]:
    """Draw the k-shot training windows.

    Args:
        recordings: row -> {"label": primary class, "duration": seconds or None, "secondary": list,
            "detected_events": [[s, e], ...], "event_cluster": [c, ...]}.
        k: samples per class; seed: the draw (same seed, same subset).
        condition: recording filter ("lenient", "strict" or "none"); fill_up: top up short classes
            from the recordings the filter rejected.
        extension: seconds each event is extended to before its 5 s window is taken (`event_window`).
    Returns:
        the chosen events, sorted by (row, start).
    """
    rng = random.Random(seed)
    rows = sorted(recordings)
    passing = [r for r in rows if passes_filter(condition, recordings[r]["duration"], recordings[r]["secondary"])]
    primary, leftover = _map_recordings(passing, recordings, rng, extension)
    chosen: list[Event] = []
    missing: dict[str, int] = {}
    for label in sorted({recordings[r]["label"] for r in rows}):
        mains, spare = primary.get(label, []), leftover.get(label, [])
        if len(mains) >= k:
            chosen += rng.sample(mains, k)
        elif len(mains) + len(spare) >= k:
            chosen += mains + rng.sample(spare, k - len(mains))
        else:
            chosen += mains + spare
            missing[label] = k - len(mains) - len(spare)
    if fill_up and missing:
        rejected = [r for r in rows if r not in set(passing)]
        extra_primary, extra_leftover = _map_recordings(rejected, recordings, rng, extension)
        for label, count in missing.items():
            mains, spare = extra_primary.get(label, []), extra_leftover.get(label, [])
            if len(mains) >= count:
                chosen += rng.sample(mains, count)
            else:
                chosen += mains + rng.sample(spare, min(count - len(mains), len(spare)))
    return sorted(chosen, key=lambda e: (e.row, e.start, e.event_start))


def all_windows(recordings: dict[int, dict], extension: float = EXTENSION_SECONDS) -> list[Event]:
    """Every event window of every recording (the full training set, no k-shot draw)."""
    out = []
    for row in sorted(recordings):
        info = recordings[row]
        for event in drop_contained(recording_events(info["detected_events"], info["event_cluster"])):
            start, end = event_window(event, info["duration"], extension)
            out.append(Event(row, event[0], event[1], start, end, info["label"]))
    return out
