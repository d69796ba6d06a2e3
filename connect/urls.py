from django.urls import re_path

from . import api

UUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

urlpatterns = [
    re_path(r"^events/?$", api.EventsView.as_view(), name="events"),
    re_path(rf"^events/(?P<event_id>{UUID})/?$", api.EventDetailView.as_view(), name="event-detail"),
    re_path(rf"^events/(?P<event_id>{UUID})/trace/?$", api.EventTraceView.as_view(), name="event-trace"),
    re_path(r"^reward-actions/?$", api.RewardActionListView.as_view(), name="reward-actions"),
    re_path(
        rf"^reward-actions/(?P<action_id>{UUID})/?$",
        api.RewardActionDetailView.as_view(),
        name="reward-action-detail",
    ),
]
