"""Dates in the admin as finance reads them: ISO days, 24-hour times (instead of "Dec. 7, 2026, 12:41 a.m.")."""

DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
TIME_FORMAT = "H:i:s"
