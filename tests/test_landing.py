"""What a newcomer opens first: ``/`` points to the admin and the API docs, and the docs page loads
Swagger UI from this project's own static files (no CDN, so it works without internet)."""

import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_the_root_is_a_landing_page_linking_the_admin_and_the_docs(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    for url in (reverse("admin:index"), reverse("api-docs"), reverse("api-schema")):
        assert f'href="{url}"' in html


def test_the_api_docs_need_no_other_host(client):
    response = client.get("/api/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    assert all(asset.startswith("/static/drf_spectacular_sidecar/") for asset in assets), assets
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
