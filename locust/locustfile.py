"""Load model of the pricing service's real users.

Four kinds of client, as the service meets them in production:

- ``Shopper``: storefront price lookups, ``POST /api/v1/price`` (the original
  service's request: ``product_id``, ``user_location``, ``is_prime_member``) and
  now and then ``GET /api/v1/price/{product_id}``. Products are chosen with a
  Zipf-like skew over the seeded ids ``P-1`` … ``P-N``: a few products get most
  of the traffic, as in a real catalog. About one lookup in a hundred asks for
  a product that does not exist and must get a ``404``.
- ``CatalogService``: a back-office system pricing a page of products at once,
  ``POST /api/v1/prices/batch``.
- ``MarketFeed``: upstream systems publishing market events (competitor price
  changes, demand changes), ``POST /api/v1/publish-market-event`` → ``202``.
- ``Admin``: exactly one operator who triggers a full recalculation when it
  starts and now and then after, ``POST /api/v1/tasks/recalculate-all`` →
  ``202``, follows the task it got, and looks at ``GET /api/v1/queues``.

Every request uses ``catch_response=True``: the status code and the body are
checked, and a wrong one is a failure with a message that says what was wrong
(the original locustfile crashed on its first non-200 instead). Requests are
named by route template, so locust's table lines up with the server's
``http_request_duration_seconds{route=...}`` (see ``metrics_probe.py``).

Settings, from the environment:

- ``PRODUCT_COUNT`` (default 1000): ids ``P-1`` … ``P-N`` to draw from; at most
  the number of seeded products.
- ``ZIPF_EXPONENT`` (default 1.1): the skew; 0 is uniform.
- ``ADMIN_TOKEN``: sent as ``Authorization: Bearer …`` on admin requests when set.
"""

from __future__ import annotations

import itertools
import math
import os
import random

from locust import HttpUser, between, task

# --- settings ------------------------------------------------------------------------


def _env_int(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name, "").strip()
    value = int(raw) if raw else default
    if value < low:
        raise SystemExit(f"{name} must be at least {low}, got {value}")
    return value


PRODUCT_COUNT = _env_int("PRODUCT_COUNT", 1000, 1)
ZIPF_EXPONENT = float(os.environ.get("ZIPF_EXPONENT", "1.1") or "1.1")
ADMIN_TOKEN = os.environ.get("ADMIN_TOKEN", "").strip()

# Route templates, exactly as the api labels them in /metrics.
PRICE = "/api/v1/price"
PRICE_BY_PATH = "/api/v1/price/{product_id}"
BATCH = "/api/v1/prices/batch"
PUBLISH = "/api/v1/publish-market-event"
RECALC_ALL = "/api/v1/tasks/recalculate-all"
TASK = "/api/v1/tasks/{task_id}"
QUEUES = "/api/v1/queues"

LOCATIONS = ["US-NY", "US-CA", "US-TX", "GB-LND", "DE-BE", "FR-IDF", "JP-13", "BR-SP", None]
COMPETITORS = ["acme", "globex", "initech", "umbrella"]
TASK_STATES = {"pending", "scheduled", "running", "retrying", "succeeded", "failed", "skipped", "cancelled"}
PRIME_DISCOUNT = 0.05

# --- product choice ----------------------------------------------------------------------

# Cumulative weights of ranks 1..N under 1/k^s; rank k is product P-k.
_CUM_WEIGHTS = list(itertools.accumulate(1.0 / (k**ZIPF_EXPONENT) for k in range(1, PRODUCT_COUNT + 1)))
_RANKS = range(1, PRODUCT_COUNT + 1)


def popular_ids(n: int) -> list[str]:
    """``n`` product ids drawn with the Zipf-like skew (repeats possible)."""
    return [f"P-{k}" for k in random.choices(_RANKS, cum_weights=_CUM_WEIGHTS, k=n)]


def popular_id() -> str:
    return popular_ids(1)[0]


def unknown_id() -> str:
    """An id no seed writes (seeded ids are P-<n>)."""
    return f"UNKNOWN-{random.randrange(1_000_000)}"


# --- checks ---------------------------------------------------------------------------------


def _json(response):
    """The body as JSON, or None after marking the request failed."""
    try:
        return response.json()
    except ValueError:
        response.failure(f"status {response.status_code} with a body that is not JSON: {response.text[:200]!r}")
        return None


def _expect_status(response, expected: int) -> bool:
    if response.status_code == expected:
        return True
    response.failure(f"expected {expected}, got {response.status_code}: {response.text[:300]!r}")
    return False


def price_problem(detail, product_id: str, prime: bool) -> str | None:
    """Why ``detail`` is not a valid PriceDetail for this request, or None."""
    if not isinstance(detail, dict):
        return f"price is not an object: {detail!r}"
    if detail.get("product_id") != product_id:
        return f"asked for {product_id}, got {detail.get('product_id')!r}"
    base, final, rate = detail.get("base_price"), detail.get("final_price"), detail.get("discount_rate")
    if not all(isinstance(v, (int, float)) for v in (base, final, rate)):
        return f"non-numeric prices: {detail!r}"
    if base <= 0 or final <= 0:
        return f"non-positive price: {detail!r}"
    expected_rate = PRIME_DISCOUNT if prime else 0.0
    if not math.isclose(rate, expected_rate, abs_tol=1e-9):
        return f"discount_rate {rate} for is_prime_member={prime}, expected {expected_rate}"
    if abs(final - base * (1 - rate)) > 0.011:
        return f"final_price {final} is not base_price {base} less {rate:.0%}"
    if detail.get("source") not in ("cache", "database"):
        return f"unknown source {detail.get('source')!r}"
    if not detail.get("currency") or not detail.get("calculated_at"):
        return f"currency or calculated_at missing: {detail!r}"
    return None


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"} if ADMIN_TOKEN else {}


# --- users ------------------------------------------------------------------------------------


class Shopper(HttpUser):
    """A storefront asking for one product's price at a time."""

    weight = 10
    wait_time = between(0.1, 1.0)

    @task(8)
    def price_lookup(self) -> None:
        unknown = random.random() < 0.01
        product_id = unknown_id() if unknown else popular_id()
        prime = random.random() < 0.4
        body = {"product_id": product_id, "is_prime_member": prime}
        location = random.choice(LOCATIONS)
        if location is not None:
            body["user_location"] = location
        with self.client.post(PRICE, json=body, name=PRICE, catch_response=True) as response:
            self._check(response, product_id, prime, unknown)

    @task(2)
    def price_by_path(self) -> None:
        product_id = popular_id()
        prime = random.random() < 0.4
        params = {"is_prime_member": "true" if prime else "false"}
        with self.client.get(
            f"/api/v1/price/{product_id}", params=params, name=PRICE_BY_PATH, catch_response=True
        ) as response:
            self._check(response, product_id, prime, unknown=False)

    @staticmethod
    def _check(response, product_id: str, prime: bool, unknown: bool) -> None:
        if unknown:
            if _expect_status(response, 404):
                body = _json(response)
                if body is not None and body.get("error") != "not_found":
                    response.failure(f"unknown product: expected error not_found, got {body!r}")
                else:
                    response.success()
            return
        if not _expect_status(response, 200):
            return
        detail = _json(response)
        if detail is None:
            return
        problem = price_problem(detail, product_id, prime)
        if problem:
            response.failure(problem)
        else:
            response.success()


class CatalogService(HttpUser):
    """A back-office system pricing a page of products in one request."""

    weight = 2
    wait_time = between(0.5, 2.0)

    @task
    def batch_lookup(self) -> None:
        ids = popular_ids(random.randint(10, 100))
        prime = random.random() < 0.5
        # Duplicates are answered once, in the order of their first appearance.
        expected = list(dict.fromkeys(ids))
        with self.client.post(
            BATCH, json={"product_ids": ids, "is_prime_member": prime}, name=BATCH, catch_response=True
        ) as response:
            if not _expect_status(response, 200):
                return
            body = _json(response)
            if body is None:
                return
            prices, not_found = body.get("prices"), body.get("not_found")
            if not isinstance(prices, list) or not isinstance(not_found, list):
                response.failure(f"expected prices and not_found lists, got {str(body)[:300]}")
                return
            if not_found:
                response.failure(f"seeded products reported not found: {not_found[:10]}")
                return
            got = [p.get("product_id") if isinstance(p, dict) else None for p in prices]
            if got != expected:
                response.failure(f"expected {len(expected)} prices in request order, got {len(got)}")
                return
            for detail in prices:
                problem = price_problem(detail, detail["product_id"], prime)
                if problem:
                    response.failure(problem)
                    return
            response.success()


class MarketFeed(HttpUser):
    """An upstream system publishing competitor-price and demand changes."""

    weight = 1
    wait_time = between(0.5, 2.0)

    @task(3)
    def competitor_price_changed(self) -> None:
        ids = list(dict.fromkeys(popular_ids(random.randint(1, 5))))
        competitor = random.choice(COMPETITORS)
        prices = {pid: round(random.uniform(5.0, 500.0), 2) for pid in ids}
        self._publish(
            {"kind": "competitor_price_changed", "product_ids": ids, "data": {"competitor": competitor, "prices": prices}}
        )

    @task(1)
    def demand_changed(self) -> None:
        ids = list(dict.fromkeys(popular_ids(random.randint(1, 5))))
        demand = {pid: round(random.uniform(0.5, 2.0), 2) for pid in ids}
        self._publish({"kind": "demand_changed", "product_ids": ids, "data": {"demand": demand}})

    def _publish(self, event: dict) -> None:
        with self.client.post(PUBLISH, json=event, name=PUBLISH, catch_response=True) as response:
            if not _expect_status(response, 202):
                return
            body = _json(response)
            if body is None:
                return
            if not isinstance(body, dict) or body.get("status") != "Event published":
                response.failure(f"expected {{'status': 'Event published', ...}}, got {body!r}")
                return
            for field, kind in (("event_id", str), ("channel", str), ("receivers", int)):
                if not isinstance(body.get(field), kind):
                    response.failure(f"{field!r} missing or not a {kind.__name__}: {body!r}")
                    return
            response.success()


class Admin(HttpUser):
    """One operator triggering a full recalculation now and then and following it."""

    fixed_count = 1
    wait_time = between(10.0, 30.0)

    def on_start(self) -> None:
        # The operator's first action, so that even a short run exercises
        # the job path (queue, worker, job metrics).
        self.recalculate_all()

    @task(3)
    def recalculate_all(self) -> None:
        with self.client.post(RECALC_ALL, headers=admin_headers(), name=RECALC_ALL, catch_response=True) as response:
            if response.status_code in (401, 403):
                response.failure(f"{response.status_code}: set ADMIN_TOKEN to the api's token ({response.text[:200]})")
                return
            if not _expect_status(response, 202):
                return
            body = _json(response)
            if body is None:
                return
            if not isinstance(body.get("task_id"), str) or not isinstance(body.get("joined"), bool):
                response.failure(f"expected task_id and joined, got {body!r}")
                return
            status_url = body.get("status_url")
            if status_url != f"/api/v1/tasks/{body['task_id']}":
                response.failure(f"status_url {status_url!r} does not name task {body['task_id']}")
                return
            response.success()
        self._follow(body["task_id"])

    @task(1)
    def queues(self) -> None:
        with self.client.get(QUEUES, name=QUEUES, catch_response=True) as response:
            if not _expect_status(response, 200):
                return
            body = _json(response)
            if body is None:
                return
            default = (body.get("queues") or {}).get("default")
            if not isinstance(default, dict) or not all(k in default for k in ("pending", "running", "dead")):
                response.failure(f"expected queues.default with pending/running/dead, got {str(body)[:300]}")
            else:
                response.success()

    def _follow(self, task_id: str) -> None:
        with self.client.get(f"/api/v1/tasks/{task_id}", name=TASK, catch_response=True) as response:
            if not _expect_status(response, 200):
                return
            body = _json(response)
            if body is None:
                return
            if body.get("task_id") != task_id or body.get("status") not in TASK_STATES:
                response.failure(f"unexpected task status {str(body)[:300]}")
            else:
                response.success()
