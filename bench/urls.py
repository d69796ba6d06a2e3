"""The project's URLs plus the ceiling endpoint, placed before the API's catch-all."""

from django.urls import re_path

from config import urls as project_urls

from .ceiling import CeilingView

handler404 = project_urls.handler404
handler500 = project_urls.handler500

urlpatterns = [
    re_path(r"^internal/bench/ceiling/?$", CeilingView.as_view(), name="bench-ceiling"),
    *project_urls.urlpatterns,
]
