from django.urls import re_path

from . import api

urlpatterns = [
    re_path(r"^credit/?$", api.CreditView.as_view(), name="points-credit"),
    re_path(r"^debit/?$", api.DebitView.as_view(), name="points-debit"),
    re_path(r"^hold/?$", api.HoldView.as_view(), name="points-hold"),
    re_path(r"^capture/?$", api.CaptureView.as_view(), name="points-capture"),
    re_path(r"^release/?$", api.ReleaseView.as_view(), name="points-release"),
    re_path(r"^reverse/?$", api.ReverseView.as_view(), name="points-reverse"),
    re_path(r"^batch/?$", api.BatchView.as_view(), name="points-batch"),
    re_path(r"^accounts/(?P<user_id>[^/]{1,100})/?$", api.AccountView.as_view(), name="points-account"),
    re_path(
        r"^accounts/(?P<user_id>[^/]{1,100})/transactions/?$",
        api.AccountTransactionsView.as_view(),
        name="points-account-transactions",
    ),
    re_path(r"^accounts/(?P<user_id>[^/]{1,100})/lots/?$", api.AccountLotsView.as_view(), name="points-account-lots"),
]
