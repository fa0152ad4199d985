"""The study storage as the workers of a search see it: every call retried through a database outage, a
heartbeat that outlives one, URLs shown without their password, and the heartbeat ages of running trials.

A worker that loses its database (a PostgreSQL restart, a network cut) keeps training the trial it holds;
each storage call it makes waits, with back-off, for up to `retry_seconds` (`--db-retry-seconds`), and
the work goes on when the database answers again. Past that, one `StorageUnavailableError` line says which
storage, for how long, and that rerunning resumes.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from ..errors import StorageUnavailableError

RETRY_FIRST_PAUSE = 0.5  # seconds; doubled after each failed attempt, up to RETRY_LONGEST_PAUSE
RETRY_LONGEST_PAUSE = 8.0


def redact(url: str) -> str:
    """`url` with any password replaced by `***` (in the user-info part and in a `password=` query)."""
    url = re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", url)
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    if "@" not in rest:
        return url
    credentials, host = rest.rsplit("@", 1)
    if ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def redact_in(text: str, url: str) -> str:
    """`text` (an error message) with the password of `url` masked wherever it appears."""
    password = _password(url)
    return text.replace(url, redact(url)).replace(password, "***") if password else text.replace(url, redact(url))


def _password(url: str) -> str | None:
    match = re.match(r"[^:]+://[^:/@]+:([^@]+)@", url)
    return match.group(1) if match and len(match.group(1)) >= 3 else None


def storage_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database cannot be reached right now, not that a query is wrong."""
    from sqlalchemy import exc as sql

    seen: BaseException | None = exc
    for _ in range(8):  # the chain: StorageInternalError <- sqlalchemy error <- driver error
        if seen is None:
            return False
        if isinstance(seen, (sql.OperationalError, sql.InterfaceError, sql.DisconnectionError, sql.TimeoutError)):
            return True
        if isinstance(seen, sql.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    from sqlalchemy import exc as sql

    cause = exc
    while isinstance(cause, (optuna.exceptions.StorageInternalError,)) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, sql.DBAPIError) and cause.orig is not None:
        cause = cause.orig
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage (the cached RDB storage) whose calls wait out a database outage.

    Args:
        inner: the storage to delegate to (`optuna.storages._CachedStorage(RDBStorage(...))`).
        url: its URL, shown redacted in messages.
        retry_seconds: how long one call keeps retrying before `StorageUnavailableError`.
        log: where the outage and recovery notices go (one line each).
    """

    def __init__(self, inner: BaseStorage, url: str, retry_seconds: float, log: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.url = url
        self.retry_seconds = retry_seconds
        self.log = log or (lambda message: None)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.reachable_since = -float("inf")  # monotonic time the last outage ended

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """`inner.<name>(*args, **kwargs)`, retried with back-off while the database is unreachable."""
        return self.retry(lambda: getattr(self.inner, name)(*args, **kwargs))

    def retry(self, attempt: Callable[[], Any]) -> Any:
        """`attempt()`, called again with back-off while it fails because the database is unreachable, for up to
        `retry_seconds`; then StorageUnavailableError. Any other error is raised at once."""
        pause, started = RETRY_FIRST_PAUSE, None
        while True:
            try:
                result = attempt()
            except Exception as exc:
                if not storage_unavailable(exc):
                    raise
                now = time.monotonic()
                started = started if started is not None else now
                self._went_down(exc, now)
                left = self.retry_seconds - (now - started)
                if left <= 0:
                    raise StorageUnavailableError(
                        f"study storage {redact(self.url)} has not answered for {self.retry_seconds:g} s "
                        f"({redact_in(_first_line(exc), self.url)}); finished trials are kept there: rerun the same command "
                        "when it is back (--db-retry-seconds waits longer)") from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, RETRY_LONGEST_PAUSE)
                continue
            self._came_back()
            return result

    def _went_down(self, exc: BaseException, now: float) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                self.log(f"study storage {redact(self.url)} not answering ({redact_in(_first_line(exc), self.url)}); "
                         f"retrying for up to {self.retry_seconds:g} s (--db-retry-seconds)")

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is not None:
                self.log(f"study storage back after {time.monotonic() - self._down_since:.0f} s; continuing")
                self._down_since = None
                self.reachable_since = time.monotonic()

    def reachable_for(self) -> float:
        """Seconds since the last outage ended (infinite when there was none)."""
        return time.monotonic() - self.reachable_since

    # Every storage method goes through `call`. (BaseStorage's other methods are built on these.)
    def _delegate(name: str):  # noqa: N805 - a class-body helper, removed below
        def method(self, *args, **kwargs):
            return self.call(name, *args, **kwargs)

        method.__name__ = name
        return method

    create_new_study = _delegate("create_new_study")
    delete_study = _delegate("delete_study")
    set_study_user_attr = _delegate("set_study_user_attr")
    set_study_system_attr = _delegate("set_study_system_attr")
    get_study_id_from_name = _delegate("get_study_id_from_name")
    get_study_name_from_id = _delegate("get_study_name_from_id")
    get_study_directions = _delegate("get_study_directions")
    get_study_user_attrs = _delegate("get_study_user_attrs")
    get_study_system_attrs = _delegate("get_study_system_attrs")
    get_all_studies = _delegate("get_all_studies")
    create_new_trial = _delegate("create_new_trial")
    set_trial_param = _delegate("set_trial_param")
    get_trial_id_from_study_id_trial_number = _delegate("get_trial_id_from_study_id_trial_number")
    get_best_trial = _delegate("get_best_trial")
    set_trial_state_values = _delegate("set_trial_state_values")
    set_trial_intermediate_value = _delegate("set_trial_intermediate_value")
    set_trial_user_attr = _delegate("set_trial_user_attr")
    set_trial_system_attr = _delegate("set_trial_system_attr")
    get_trial = _delegate("get_trial")
    get_all_trials = _delegate("get_all_trials")
    record_heartbeat = _delegate("record_heartbeat")
    _get_stale_trial_ids = _delegate("_get_stale_trial_ids")
    del _delegate

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self.inner.get_heartbeat_stale_trial_callback()

    def remove_session(self) -> None:
        self.inner.remove_session()

    def heartbeat_ages(self, study_id: int) -> dict[int, float]:
        """trial_id -> seconds since its last heartbeat (by the database's clock), for the RUNNING trials of a study."""
        backend = getattr(self.inner, "_backend", self.inner)  # the RDBStorage under Optuna's cache
        return self.retry(lambda: _heartbeat_ages(backend, study_id))


def _heartbeat_ages(rdb, study_id: int) -> dict[int, float]:
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    with _create_scoped_session(rdb.scoped_session) as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)  # the clock heartbeats are written with
        rows = (session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                .join(models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING).all())
    return {trial_id: (now - beat).total_seconds() for trial_id, beat in rows}


class Heartbeat:
    """Records a trial's heartbeat every `interval` seconds in a thread, through outages.

    Optuna's own heartbeat thread dies on the first database error, after which other workers take a live
    trial for dead; this one keeps trying every second until the database answers. Use as a context manager.
    """

    def __init__(self, storage: RetryingStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.storage.inner.record_heartbeat(self.trial_id)
                self.storage._came_back()
                pause = self.interval
            except Exception:  # unreachable (the main thread reports it) or a transient error: try again soon
                pause = 1.0
            self._stop.wait(min(pause, self.interval))

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)  # before the trial counts as started (see search._fail_orphans)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
