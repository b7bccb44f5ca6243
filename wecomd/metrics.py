"""Prometheus metrics of one wecomd process, served at GET /metrics (docs/api.md).

Every metric lives in the `CollectorRegistry` of one `Metrics` object, which `Services` owns: never
in prometheus_client's global default registry, so two Services in one process (the tests) keep
their own counts. Counters are bumped from the IOLoop by the hooks below; the two gauges that
describe "now" (outbox depth, websocket clients) are read at scrape time.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from wecomd.wecom import crypto

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

# Seconds; dense around WeCom's 5 s budget, after which it drops the answer and retries.
CALLBACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10)
# Seconds; a database writer's transaction and a call's wait for it are milliseconds when all is well.
DB_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# the writer's transactions: grouped calls, a bulky call, a call run alone; then the same of the
# 微信客服 pull process's own writer (reported by it: wecomd.kf.process)
DB_KINDS = ("call", "bulky", "alone", "pull_call", "pull_bulky", "pull_alone")

CALLBACK_OUTCOMES = ("stored", "duplicate", "rejected", "failed", "verified")
FAILURE_REASONS = ("signature", "receive_id", "decrypt", "malformed", "timestamp", "too_large",
                   "unknown_app", "store", "internal")
TOKEN_REASONS = ("cold", "expired", "token_error")
UNKNOWN_APP = "-"  # the app label of requests for an app that is not configured (bounded labels)
NO_ERRCODE = "none"  # the errcode label of send errors without a WeCom answer (network, HTTP)

# Crypto failures by class (subclasses first is not needed: the classes are siblings).
_CRYPTO_REASONS: Mapping[type, str] = {
    crypto.SignatureError: "signature",
    crypto.SignatureComputeError: "signature",
    crypto.ReceiveIdError: "receive_id",
    crypto.DecryptError: "decrypt",
    crypto.Base64DecodeError: "decrypt",
    crypto.InvalidKeyError: "decrypt",
    # Bad padding or length after decryption: in practice a wrong EncodingAESKey (README, -40008).
    crypto.MalformedPlaintextError: "decrypt",
    crypto.EnvelopeError: "malformed",
}
# Callback answers that say why by their status alone.
_STATUS_REASONS: Mapping[int, str] = {404: "unknown_app", 413: "too_large", 503: "store"}


def crypto_reason(exc: crypto.CryptoError) -> str:
    """The callback_failures_total reason of a crypto error."""
    return _CRYPTO_REASONS.get(type(exc), "decrypt")


def failure_reason(status: int, given: Optional[str] = None) -> Optional[str]:
    """Why a callback answered `status`: `given` (crypto, timestamp) first, else by status; None for < 400."""
    if status < 400:
        return None
    if given:
        return given
    if status in _STATUS_REASONS:
        return _STATUS_REASONS[status]
    return "internal" if status >= 500 else "malformed"


class Metrics:
    """The registry and every metric of one process; see docs/api.md for what each one means."""

    def __init__(self, websocket_clients: Callable[[], float] = lambda: 0,
                 db_commits: Callable[[], Tuple[int, int]] = lambda: (0, 0),
                 intake_pending: Callable[[], float] = lambda: 0,
                 kf_pull: Callable[[], Tuple[int, int]] = lambda: (0, 0)) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_WriterCollector(db_commits))
        self.callbacks_total = Counter(
            "wecomd_callbacks", "Callback requests answered, by app, message type and outcome.",
            ("app", "type", "outcome"), registry=r)
        self.callback_seconds = Histogram(
            "wecomd_callback_seconds", "Time from a callback request's arrival to its answer.",
            ("app",), buckets=CALLBACK_BUCKETS, registry=r)
        self.callback_failures_total = Counter(
            "wecomd_callback_failures", "Callbacks answered with an error, by app and reason.",
            ("app", "reason"), registry=r)
        self.duplicates_total = Counter(
            "wecomd_duplicates", "WeCom retries of messages already stored (stored once, answered again).",
            ("app",), registry=r)
        self.store_failures_total = Counter(
            "wecomd_store_failures", "Database writes that failed (any caller: callbacks, outbox, media, rules).",
            registry=r)
        self.outbox_pending = Gauge(
            "wecomd_outbox_pending", "Outbound messages waiting to be sent (pending rows), read at scrape.",
            registry=r)
        self.outbox_sent_total = Counter(
            "wecomd_outbox_sent", "Outbound messages WeCom's message/send accepted.", registry=r)
        self.outbox_send_errors_total = Counter(
            "wecomd_outbox_send_errors", "Failed message/send attempts, by WeCom errcode ('none': no WeCom answer).",
            ("errcode",), registry=r)
        self.token_refreshes_total = Counter(
            "wecomd_token_refreshes", "gettoken calls for an access token, by why the cached one was not used.",
            ("reason",), registry=r)
        self.db_wait_seconds = Histogram(
            "wecomd_db_wait_seconds", "Time a store call waited for the database writer to start it, by kind.",
            ("kind",), buckets=DB_BUCKETS, registry=r)
        self.db_transaction_seconds = Histogram(
            "wecomd_db_transaction_seconds", "Time of each database writer transaction, commit included, by kind.",
            ("kind",), buckets=DB_BUCKETS, registry=r)
        self.websocket_clients = Gauge(
            "wecomd_websocket_clients", "Dashboard websockets connected to the live feed.", registry=r)
        self.websocket_clients.set_function(websocket_clients)
        self.intake_pending = Gauge(
            "wecomd_intake_pending", "Callbacks in the intake journal not applied to the database yet.", registry=r)
        self.intake_pending.set_function(intake_pending)
        # kf_pull(): (1 while the 微信客服 pull process runs, else 0; how many times it was started)
        self.kf_pull_up = Gauge(
            "wecomd_kf_pull_process_up", "1 while the 微信客服 pull process runs, 0 otherwise.", registry=r)
        self.kf_pull_up.set_function(lambda: kf_pull()[0])
        self.kf_pull_starts = Gauge(
            "wecomd_kf_pull_process_starts", "Times the 微信客服 pull process was started (more than 1: restarts).",
            registry=r)
        self.kf_pull_starts.set_function(lambda: kf_pull()[1])
        for reason in TOKEN_REASONS:
            self.token_refreshes_total.labels(reason=reason)  # present at 0 from the start
        for kind in DB_KINDS:
            self.db_wait_seconds.labels(kind=kind)
            self.db_transaction_seconds.labels(kind=kind)

    # --- hooks ---------------------------------------------------------------------------------

    def callback(self, app: str, kind: str, outcome: str, seconds: float, reason: Optional[str] = None) -> None:
        """One answered callback request; `reason` for an error answer (see failure_reason)."""
        self.callbacks_total.labels(app=app, type=kind, outcome=outcome).inc()
        self.callback_seconds.labels(app=app).observe(seconds)
        if outcome == "duplicate":
            self.duplicates_total.labels(app=app).inc()
        if reason is not None:
            self.callback_failures_total.labels(app=app, reason=reason).inc()

    def db_batch(self, kind: str, seconds: float, waits: list) -> None:
        """One transaction of the database writer (DbWriter's on_batch; on the writer's thread:
        prometheus_client's metrics are thread-safe)."""
        self.db_transaction_seconds.labels(kind=kind).observe(seconds)
        wait = self.db_wait_seconds.labels(kind=kind)
        for waited in waits:
            wait.observe(waited)

    def store_failed(self) -> None:
        self.store_failures_total.inc()

    def sent(self) -> None:
        self.outbox_sent_total.inc()

    def send_error(self, errcode: Optional[int]) -> None:
        self.outbox_send_errors_total.labels(errcode=NO_ERRCODE if errcode is None else str(errcode)).inc()

    def token_refresh(self, reason: str) -> None:
        self.token_refreshes_total.labels(reason=reason).inc()

    # --- scrape --------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format (CONTENT_TYPE) of every metric."""
        return generate_latest(self.registry)


class _WriterCollector:
    """The database writer's own counters, read at scrape time: commits and the calls they held
    (their ratio is the group-commit batch size)."""

    def __init__(self, read: Callable[[], Tuple[int, int]]) -> None:
        self.read = read

    def describe(self) -> list:
        return []  # the families are only known by collecting

    def collect(self) -> Iterator[CounterMetricFamily]:
        commits, calls = self.read()
        yield CounterMetricFamily("wecomd_db_commits", "Transactions the database writer committed (group commits).",
                                  value=commits)
        yield CounterMetricFamily("wecomd_db_calls", "Store calls the database writer ran inside those transactions.",
                                  value=calls)
