"""Notifications: signed webhooks (public addresses only for service users), chat formats and W&B,
all fed from a job's event stream."""
