import time
import pytest
from .test_api import post

@pytest.mark.django_db(transaction=True)
def test_measure(api):
    single = batch = 0.0
    n = 0
    for r in range(4):
        t = time.perf_counter()
        for i in range(100):
            assert post(api, "/internal/credit", {"external_id": f"s{r}-{i}", "user_id": f"u{i}", "amount": 1}).status_code == 201
        single += time.perf_counter() - t
        t = time.perf_counter()
        ops = [{"op": "credit", "external_id": f"b{r}-{i}", "user_id": f"u{i}", "amount": 1} for i in range(100)]
        resp = post(api, "/internal/batch", {"operations": ops})
        batch += time.perf_counter() - t
        assert all(x["status"] == 201 for x in resp.json()["results"])
        n += 100
    print(f"\nRATIO single_s={single:.3f} batch_s={batch:.3f} ratio={single/batch:.2f}")
