"""Notifications: signed webhooks, chat messages and W&B, all fed from the job's event stream."""
