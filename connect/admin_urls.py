"""Admin pages outside any one model's admin, mounted under ``/admin/`` before the admin site's URLs."""

from django.contrib import admin
from django.urls import path

from . import admin_pages

view = admin.site.admin_view

urlpatterns = [
    path("users/", view(admin_pages.user_search_view), name="admin_user_search"),
    path("users/<str:user_id>/", view(admin_pages.user_page_view), name="admin_user_page"),
    path("points/reports/", view(admin_pages.reports_view), name="admin_points_reports"),
    path("points/reports/csv/", view(admin_pages.reports_csv_view), name="admin_points_reports_csv"),
]
