from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.api import schema  # noqa: F401  (registers the Api-Key scheme with the OpenAPI generator)
from config.api.views import api_not_found, health, metrics

handler400 = "config.api.views.bad_request"
handler403 = "config.api.views.permission_denied"
handler404 = "config.api.views.not_found"
handler500 = "config.api.views.server_error"

# The admin reads as the product it runs, with the full width of a laptop screen for its tables.
admin.site.site_header = "Rewards"
admin.site.site_title = "Rewards"
admin.site.index_title = "Overview"
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("", TemplateView.as_view(template_name="landing.html"), name="landing"),
    re_path(r"^health/?$", health, name="health"),
    re_path(r"^metrics/?$", metrics, name="metrics"),
    # The user page and the finance reports (before the admin site, whose catch-all would take them).
    path("admin/", include("connect.admin_urls")),
    path("admin/", admin.site.urls),
    re_path(r"^api/schema/?$", SpectacularAPIView.as_view(), name="api-schema"),
    re_path(r"^api/docs/?$", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("connect.urls")),
    path("internal/", include("points.urls")),
    # Anything else under the API answers in the API's error format, never an HTML page.
    re_path(r"^(api|internal)(/.*)?$", api_not_found),
]
